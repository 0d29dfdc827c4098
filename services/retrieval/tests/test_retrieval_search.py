"""Direct search semantics: rerankers, minScore, several terms, references, metering."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from aigw_contracts import skus
from aigw_contracts.knowledge import KnowledgeDocument, KnowledgeSearch
from aigw_retrieval import EmbeddedStore, Ingestor, Scope, Searcher, UnsupportedReranker, knowledge_usage
from aigw_retrieval.embed import MiniLMEmbedder

SCOPE = Scope("tenant-s", "kb")

DOCS = [
    {
        "docid": "refunds",
        "text": "Refunds are paid back to the original card within five business days.",
        "__ref": "billing",
    },
    {
        "docid": "invoices",
        "text": "Invoices are emailed on the first day of every month.",
        "__ref": "billing",
    },
    {"docid": "wifi", "text": "The office wifi network is called Orion and its password is on the fridge."},
    {"docid": "plants", "text": "Water the ficus in reception every Tuesday."},
]


@pytest.fixture
async def searcher(tmp_path: Path, minilm: MiniLMEmbedder) -> Searcher:
    store = EmbeddedStore(tmp_path / "kb")
    await store.create_collection(SCOPE, minilm.name, minilm.dim)
    await Ingestor(store, minilm).ingest(SCOPE, [KnowledgeDocument.model_validate(d) for d in DOCS])
    return Searcher(store, minilm)


async def test_default_search_fuses_both_rankings_and_bills_query_tokens(searcher: Searcher) -> None:
    request = KnowledgeSearch.model_validate({"query": "when do I get my refund"})
    assert (request.top, request.min_score, request.reranker, request.include_references) == (
        5,
        0.2,
        "rrf",
        False,
    )
    result = await searcher.search(SCOPE, request)
    assert result.passages[0].id == "refunds#0"
    assert all(p.similarity is not None and p.similarity >= 0.2 for p in result.passages)
    assert result.embedding_tokens > 0


async def test_min_score_keeps_only_related_passages(searcher: Searcher) -> None:
    result = await searcher.search(SCOPE, KnowledgeSearch(query="wifi password", minScore=0.4))
    assert [p.docid for p in result.passages] == ["wifi"]


async def test_several_terms_are_a_ranked_union(searcher: Searcher) -> None:
    result = await searcher.search(
        SCOPE, KnowledgeSearch(query=["wifi network name", "watering plants"], top=2)
    )
    assert {p.docid for p in result.passages} == {"wifi", "plants"}


async def test_lexical_and_vector_only_rerankers(searcher: Searcher) -> None:
    lexical = await searcher.search(SCOPE, KnowledgeSearch(query="ficus Tuesday", reranker="lexical"))
    assert [p.docid for p in lexical.passages] == ["plants"] and lexical.embedding_tokens == 0
    vector = await searcher.search(SCOPE, KnowledgeSearch(query="houseplant care", reranker="none"))
    assert vector.passages[0].docid == "plants" and vector.passages[0].score == vector.passages[0].similarity
    with pytest.raises(UnsupportedReranker):
        await searcher.search(SCOPE, KnowledgeSearch(query="x", reranker="model"))


async def test_include_references_returns_siblings_sharing_the_ref(searcher: Searcher) -> None:
    result = await searcher.search(
        SCOPE, KnowledgeSearch(query="refund to card", top=1, includeReferences=True)
    )
    passage = result.passages[0]
    assert passage.id == "refunds#0" and passage.ref == "billing"
    assert [r.id for r in passage.references] == ["invoices#0"]


def test_usage_lines_price_searches_and_embedded_tokens_exactly() -> None:
    lines = knowledge_usage(
        searches=1, embedding_tokens=37, search_price=Decimal("0.0005"), embedding_token_price=Decimal("2e-8")
    )
    assert [(line.sku, line.quantity, line.amount) for line in lines] == [
        (skus.KNOWLEDGE_SEARCH, 1, Decimal("0.0005")),
        (skus.KNOWLEDGE_EMBEDDINGS_IN, 37, Decimal("7.4E-7")),
    ]
    assert knowledge_usage(searches=0, embedding_tokens=0) == []
