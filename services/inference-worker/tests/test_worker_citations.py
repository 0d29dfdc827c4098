"""Citations in an answer become OpenAI `url_citation` annotations, only for passages that grounded it."""

from __future__ import annotations

import json

from aigw_contracts.knowledge import Grounding, Passage
from aigw_worker.citations import citation_annotations

from .conftest import Harness, Sim, make_envelope

HANDBOOK = Grounding(id="handbook#1", docid="handbook", score=0.8, title="Passwords")
FAQ = Grounding(id="faq#0", docid="faq", score=0.5, url="https://example.com/faq")


def test_each_cited_grounded_passage_is_annotated_where_it_is_cited() -> None:
    text = "Open Settings [handbook#1]. Refunds take days [faq#0; handbook#1], not [made#9]."
    found = citation_annotations(text, [HANDBOOK, FAQ])
    spans = [(a["url_citation"]["start_index"], a["url_citation"]["end_index"]) for a in found]
    assert [text[s:e] for s, e in spans] == ["[handbook#1]", "[faq#0; handbook#1]", "[faq#0; handbook#1]"]
    assert [a["url_citation"]["url"] for a in found] == [
        "urn:aigw:passage:handbook#1",
        "https://example.com/faq",
        "urn:aigw:passage:handbook#1",
    ]
    assert found[0] == {
        "type": "url_citation",
        "url_citation": {
            "start_index": 14,
            "end_index": 26,
            "title": "Passwords",
            "url": "urn:aigw:passage:handbook#1",
        },
    }
    assert found[1]["url_citation"]["title"] == "faq"  # no title: the document id
    assert citation_annotations("no citations here", [HANDBOOK]) == []
    assert citation_annotations("[handbook#1]", []) == []


def test_a_documents_meta_url_is_kept_only_when_it_is_http() -> None:
    def passage(url: object) -> Passage:
        return Passage(id="d#0", docid="d", position=0, text="t", score=1.0, meta={"url": url})

    assert Grounding.of(passage("https://docs.example.com/d")).url == "https://docs.example.com/d"
    assert Grounding.of(passage("javascript:alert(1)")).url is None
    assert Grounding.of(passage(42)).url is None


async def test_grounded_answers_carry_annotations_stream_and_not(harness: Harness, sim: Sim) -> None:
    for stream in (False, True):
        # echo: the answer is the JSON of the messages, which holds the citation the user wrote
        env = make_envelope(sim.url, "see [handbook#1] and [faq#0] [sim echo]", stream=stream)
        assert env.route is not None
        env.route.grounding = [HANDBOOK]
        events = await harness.run(env)
        if stream:
            chunks = [json.loads(line) for e in events for line in e.body.split(b"\n")]
            deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
            text = "".join(d.get("content") or "" for d in deltas)
            (found,) = [d["annotations"] for d in deltas if "annotations" in d]
        else:
            message = json.loads(events[-1].body)["choices"][0]["message"]
            text, found = message["content"], message["annotations"]
        assert [a["url_citation"]["title"] for a in found] == ["Passwords"]
        span = found[0]["url_citation"]
        assert text[span["start_index"] : span["end_index"]] == "[handbook#1]"
