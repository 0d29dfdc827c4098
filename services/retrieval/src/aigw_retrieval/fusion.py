"""Reciprocal rank fusion: one ranking from the vector and lexical rankings of the same query.

RRF (Cormack et al., 2009) adds 1/(k + rank) over the rankings a passage appears in; k = 60 is the
usual constant (and Weaviate's). It needs no score calibration between cosine and BM25, which is why
it is the default reranker. Scores are scaled so a passage ranked first by both legs scores 1.0.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

RRF_K = 60

K = TypeVar("K", bound=Hashable)


@dataclass
class Fused(Generic[K]):
    key: K
    score: float
    similarity: float | None = None  # cosine, when the vector leg saw the passage
    lexical: float | None = None  # BM25, when the lexical leg matched it


def rrf(
    vector: Sequence[tuple[K, float]], lexical: Sequence[tuple[K, float]], k: int = RRF_K
) -> list[Fused[K]]:
    """Fuse two best-first rankings of (key, score); the result is best first."""
    fused: dict[K, Fused[K]] = {}
    for rank, (key, similarity) in enumerate(vector, start=1):
        fused[key] = Fused(key, 1.0 / (k + rank), similarity=similarity)
    for rank, (key, bm25) in enumerate(lexical, start=1):
        hit = fused.get(key)
        if hit is None:
            fused[key] = Fused(key, 1.0 / (k + rank), lexical=bm25)
        else:
            hit.score += 1.0 / (k + rank)
            hit.lexical = bm25
    best = 2.0 / (k + 1)
    out = sorted(fused.values(), key=lambda h: -h.score)
    for hit in out:
        hit.score = hit.score / best
    return out
