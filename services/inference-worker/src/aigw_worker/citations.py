"""Citations of grounded passages as OpenAI `annotations` on the answer.

Grounded prompts ask the model to cite passages by id in square brackets (`[handbook#2]`, or several:
`[handbook#2, faq#0]`). Each such citation of a passage that really grounded the answer becomes a
`url_citation` annotation, the shape OpenAI's SDKs already parse: `start_index`/`end_index` delimit
the bracketed citation in the message content (Python string indices, as OpenAI counts them),
`title` is the passage's title or document id, and `url` is the document's own `__meta.url` when it
has an http(s) one, else `urn:aigw:passage:<id>`. Ids the model invents are not annotated.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aigw_contracts.knowledge import Grounding

_CITATION = re.compile(r"\[([^\[\]\n]{1,400})\]")
_SEPARATORS = re.compile(r"\s*[,;]\s*")


def citation_annotations(text: str, grounding: Sequence[Grounding]) -> list[dict[str, Any]]:
    """One `url_citation` per cited grounded passage, in the order of the text."""
    if not grounding or "[" not in text:
        return []
    known = {g.id: g for g in grounding}
    out: list[dict[str, Any]] = []
    for match in _CITATION.finditer(text):
        for cited in _SEPARATORS.split(match.group(1).strip()):
            passage = known.get(cited)
            if passage is None:
                continue
            out.append(
                {
                    "type": "url_citation",
                    "url_citation": {
                        "start_index": match.start(),
                        "end_index": match.end(),
                        "title": passage.title or passage.docid,
                        "url": passage.url or f"urn:aigw:passage:{passage.id}",
                    },
                }
            )
    return out
