"""What knowledge work costs, as usage lines (prices come from configuration; quantities from here).

* `knowledge.search` — one per search request (however many terms it has);
* `knowledge.embeddings.in` — one per token the embedding model read: query terms at search time,
  chunk texts at ingestion time.
"""

from __future__ import annotations

from decimal import Decimal

from aigw_contracts import skus
from aigw_contracts.api import GeneratedUsage

SEARCH_DESCRIPTION = "Knowledge search"
EMBEDDINGS_DESCRIPTION = "Knowledge embeddings"


def knowledge_usage(
    *,
    searches: int = 0,
    embedding_tokens: int = 0,
    search_price: Decimal = Decimal(0),
    embedding_token_price: Decimal = Decimal(0),
) -> list[GeneratedUsage]:
    """Usage lines for searches and embedded tokens; a quantity of zero yields no line."""
    lines: list[GeneratedUsage] = []
    if searches:
        lines.append(GeneratedUsage.priced(skus.KNOWLEDGE_SEARCH, search_price, searches, SEARCH_DESCRIPTION))
    if embedding_tokens:
        lines.append(
            GeneratedUsage.priced(
                skus.KNOWLEDGE_EMBEDDINGS_IN, embedding_token_price, embedding_tokens, EMBEDDINGS_DESCRIPTION
            )
        )
    return lines
