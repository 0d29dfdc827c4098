"""The knowledge store contract, run against every adapter (Weaviate skipped where Docker is missing)."""

from __future__ import annotations

import uuid

import pytest

from aigw_retrieval.embed import MiniLMEmbedder
from aigw_retrieval.stores import (
    ChunkRecord,
    CollectionExists,
    CollectionNotFound,
    DocumentInfo,
    KnowledgeStore,
    Scope,
    StoreQuery,
)

DOCS = {
    "refunds": "Refunds are paid back to the original card within five business days.",
    "shipping": "We ship parcels worldwide with tracking; delivery takes one to two weeks.",
    "passwords": "To reset your password, open Settings, choose Security and click Reset password.",
    "pets": "Dogs and cats are welcome in the lobby but not in the restaurant.",
}


def _scope(tenant: str | None = None, collection: str = "faq") -> Scope:
    return Scope(tenant or f"t{uuid.uuid4().hex[:12]}", collection)


def _info(docid: str, text: str, **kw: object) -> DocumentInfo:
    return DocumentInfo(docid=docid, content_hash=f"h-{hash(text)}", meta_hash="m", **kw)  # type: ignore[arg-type]


async def _put(
    store: KnowledgeStore, scope: Scope, embedder: MiniLMEmbedder, docs: dict[str, str], **kw: object
) -> None:
    vectors = (await embedder.embed(list(docs.values()))).vectors
    items = [
        (_info(docid, text, **kw), [ChunkRecord(0, text, (), vectors[i])])
        for i, (docid, text) in enumerate(docs.items())
    ]
    await store.replace_documents(scope, items)


async def _query(embedder: MiniLMEmbedder, text: str, k: int = 3, **kw: object) -> StoreQuery:
    vector = (await embedder.embed([text])).vectors[0]
    return StoreQuery(k=k, vector=vector, text=text, **kw)  # type: ignore[arg-type]


async def test_a_store_that_serves_says_it_is_available(store: KnowledgeStore) -> None:
    assert await store.available() is True


async def test_collections_are_created_listed_and_deleted_per_tenant(
    store: KnowledgeStore, minilm: MiniLMEmbedder
) -> None:
    scope = _scope()
    await store.create_collection(scope, minilm.name, minilm.dim)
    with pytest.raises(CollectionExists):
        await store.create_collection(scope, minilm.name, minilm.dim)
    assert await store.list_collections(scope.tenant) == ["faq"]
    assert await store.list_collections(_scope().tenant) == []
    assert await store.delete_collection(scope) is True
    with pytest.raises(CollectionNotFound):
        await store.search(scope, await _query(minilm, "refund"))


async def test_hybrid_search_ranks_the_relevant_chunk_first(
    store: KnowledgeStore, minilm: MiniLMEmbedder
) -> None:
    scope = _scope()
    await store.create_collection(scope, minilm.name, minilm.dim)
    await _put(store, scope, minilm, DOCS)
    for question, expected in (
        ("how long until I get my money back", "refunds"),
        ("I forgot my password", "passwords"),
        ("can I bring my dog", "pets"),
    ):
        hits = await store.search(scope, await _query(minilm, question))
        assert hits[0].chunk.docid == expected, (question, [h.chunk.docid for h in hits])
        assert 0 < hits[0].score <= 1.0
        assert hits[0].similarity is not None and hits[0].similarity > 0.2


async def test_each_mode_searches_its_own_leg(store: KnowledgeStore, minilm: MiniLMEmbedder) -> None:
    scope = _scope()
    await store.create_collection(scope, minilm.name, minilm.dim)
    await _put(store, scope, minilm, DOCS)
    lexical = await store.search(scope, StoreQuery(k=3, mode="lexical", text="tracking parcels"))
    assert [h.chunk.docid for h in lexical] == ["shipping"]  # only one chunk has those words
    assert lexical[0].score == pytest.approx(1.0) and lexical[0].lexical is not None
    vector = await store.search(scope, await _query(minilm, "money returned to my card", mode="vector"))
    assert vector[0].chunk.docid == "refunds"
    assert vector[0].score == pytest.approx(vector[0].similarity)


async def test_min_similarity_drops_unrelated_passages(store: KnowledgeStore, minilm: MiniLMEmbedder) -> None:
    scope = _scope()
    await store.create_collection(scope, minilm.name, minilm.dim)
    await _put(store, scope, minilm, DOCS)
    loose = await store.search(
        scope, await _query(minilm, "quantum chromodynamics lecture", k=4, min_similarity=-1.0)
    )
    strict = await store.search(
        scope, await _query(minilm, "quantum chromodynamics lecture", k=4, min_similarity=0.5)
    )
    assert len(loose) == 4
    assert strict == []


async def test_replacing_a_document_removes_its_old_chunks(
    store: KnowledgeStore, minilm: MiniLMEmbedder
) -> None:
    scope = _scope()
    await store.create_collection(scope, minilm.name, minilm.dim)
    await _put(store, scope, minilm, DOCS)
    new = "Refunds are no longer offered; store credit is issued instead."
    await _put(store, scope, minilm, {"refunds": new})
    hits = await store.search(scope, await _query(minilm, "refund to my card", k=10, min_similarity=-1.0))
    refund_texts = [h.chunk.text for h in hits if h.chunk.docid == "refunds"]
    assert refund_texts == [new]
    states = await store.document_states(scope, ["refunds", "missing"])
    assert set(states) == {"refunds"} and states["refunds"].chunks == 1


async def test_metadata_updates_show_in_hits_and_deleted_documents_vanish(
    store: KnowledgeStore, minilm: MiniLMEmbedder
) -> None:
    scope = _scope()
    await store.create_collection(scope, minilm.name, minilm.dim)
    await _put(store, scope, minilm, DOCS)
    state = (await store.document_states(scope, ["pets"]))["pets"]
    await store.update_metadata(
        scope,
        [
            DocumentInfo(
                "pets", state.content_hash, "m2", title="Pets", ref="policy", tags=["lobby"], meta={"v": 2}
            )
        ],
    )
    hit = (await store.search(scope, await _query(minilm, "dogs in the lobby", k=1)))[0]
    assert (hit.chunk.docid, hit.chunk.title, hit.chunk.ref, hit.chunk.tags, hit.chunk.meta) == (
        "pets", "Pets", "policy", ["lobby"], {"v": 2},
    )  # fmt: skip
    assert [c.docid for c in await store.chunks_by_ref(scope, "policy")] == ["pets"]
    assert await store.delete_document(scope, "pets") is True
    hits = await store.search(scope, await _query(minilm, "dogs in the lobby", k=4, min_similarity=-1.0))
    assert "pets" not in {h.chunk.docid for h in hits}
    assert {d.docid for d in await store.list_documents(scope)} == {"refunds", "shipping", "passwords"}


async def test_a_tenant_never_retrieves_another_tenants_passages(
    store: KnowledgeStore, minilm: MiniLMEmbedder
) -> None:
    """Same collection name, same words: whatever the query, each tenant sees only its own chunks."""
    alice, bob = _scope(), _scope()
    other_collection = Scope(alice.tenant, "private")
    for scope in (alice, bob, other_collection):
        await store.create_collection(scope, minilm.name, minilm.dim)
    await _put(store, alice, minilm, {f"a-{k}": v for k, v in DOCS.items()})
    await _put(store, bob, minilm, {f"b-{k}": v + " Bob's secret code is 4242." for k, v in DOCS.items()})
    await _put(
        store, other_collection, minilm, {"p-secret": "Alice's payroll spreadsheet password is hunter2."}
    )
    queries = [
        *DOCS.values(),
        "Bob's secret code 4242",
        "payroll password hunter2",
        "secret",
        "*",
        "' OR 1=1 --",
    ]
    for text in queries:
        for mode in ("hybrid", "vector", "lexical"):
            hits = await store.search(alice, await _query(minilm, text, k=20, min_similarity=-1.0, mode=mode))
            assert all(h.chunk.docid.startswith("a-") for h in hits), (text, mode)
            hits = await store.search(bob, await _query(minilm, text, k=20, min_similarity=-1.0, mode=mode))
            assert all(h.chunk.docid.startswith("b-") for h in hits), (text, mode)
    assert await store.document_states(alice, ["b-refunds", "p-secret"]) == {}
    assert await store.chunks_by_ref(bob, "") == []
