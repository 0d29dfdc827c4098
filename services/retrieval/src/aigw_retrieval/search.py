"""A direct search of one collection: embed the terms, search each, take the ranked union.

The tenant always comes from the caller's key (the `Scope`), never from the request body.
"""

from __future__ import annotations

import asyncio

from aigw_contracts.knowledge import KnowledgeSearch, KnowledgeSearchResult, Passage
from aigw_runtime import telemetry

from .embed import Embedder
from .stores import KnowledgeStore, Scope, StoredChunk, StoreHit, StoreQuery


class UnsupportedReranker(ValueError):
    """The request asked for a reranker this deployment does not offer (a 400 at the API)."""


_MODES = {"rrf": "hybrid", "none": "vector", "lexical": "lexical"}


def _passage(chunk: StoredChunk, score: float, similarity: float | None = None) -> Passage:
    return Passage(
        id=chunk.id,
        docid=chunk.docid,
        position=chunk.position,
        text=chunk.text,
        score=round(score, 6),
        similarity=None if similarity is None else round(similarity, 6),
        title=chunk.title,
        headings=list(chunk.headings),
        ref=chunk.ref,
        tags=chunk.tags,
        meta=chunk.meta,
    )


class Searcher:
    def __init__(self, store: KnowledgeStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder

    async def search(self, scope: Scope, request: KnowledgeSearch) -> KnowledgeSearchResult:
        mode = _MODES.get(request.reranker)
        if mode is None:
            if request.reranker == "model":
                raise UnsupportedReranker(
                    "reranker 'model' ranks with a gateway's model, so it works only for gateways "
                    "with knowledge; a direct search can use rrf, lexical or none"
                )
            raise UnsupportedReranker(f"reranker '{request.reranker}' is not available")
        terms = request.terms
        if not terms:
            return KnowledgeSearchResult(passages=[])
        tokens = 0
        vectors = None
        if mode != "lexical":
            with telemetry.span("embed", **{"aigw.terms": len(terms)}):
                embedded = await self.embedder.embed(terms)
            vectors, tokens = embedded.vectors, embedded.tokens
        queries = [
            StoreQuery(
                k=request.top,
                mode=mode,  # type: ignore[arg-type]
                vector=None if vectors is None else vectors[i],
                text=term,
                min_similarity=request.min_score,
            )
            for i, term in enumerate(terms)
        ]
        with telemetry.span("store.search", **{"aigw.mode": mode}):
            per_term = await asyncio.gather(*(self.store.search(scope, q) for q in queries))
        best: dict[str, StoreHit] = {}
        for hits in per_term:
            for hit in hits:
                known = best.get(hit.chunk.id)
                if known is None or hit.score > known.score:
                    best[hit.chunk.id] = hit
        ranked = sorted(best.values(), key=lambda h: -h.score)[: request.top]
        passages = [_passage(h.chunk, h.score, h.similarity) for h in ranked]
        if request.include_references:
            await self._attach_references(scope, passages)
        return KnowledgeSearchResult(passages=passages, embedding_tokens=tokens)

    async def _attach_references(self, scope: Scope, passages: list[Passage]) -> None:
        refs = {p.ref for p in passages if p.ref}
        siblings = dict(
            zip(refs, await asyncio.gather(*(self.store.chunks_by_ref(scope, r) for r in refs)), strict=True)
        )
        for passage in passages:
            if passage.ref:
                passage.references = [_passage(c, 0.0) for c in siblings[passage.ref] if c.id != passage.id]
