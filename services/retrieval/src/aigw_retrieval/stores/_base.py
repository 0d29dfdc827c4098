"""The knowledge store interface: what ingestion and search need, and nothing a backend could leak.

Every call takes a `Scope` (tenant, collection) and every adapter applies it INSIDE the backend's
query — a partition of its own in the embedded store, a Weaviate tenant plus a collection filter in
Weaviate — never as a filter over a global result in Python (OWASP LLM08). There is no call that
crosses scopes, so a caller holding one tenant's key has no way to name another tenant's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt


class CollectionNotFound(LookupError):
    """No such collection for this tenant (a 404 at the API)."""


class CollectionExists(ValueError):
    """The tenant already has a collection of that name (a 409 at the API)."""


@dataclass(frozen=True)
class Scope:
    tenant: str
    collection: str

    def __post_init__(self) -> None:
        if not self.tenant or not self.collection:
            raise ValueError("a scope needs a tenant and a collection")


@dataclass(frozen=True)
class DocumentInfo:
    """A document's identity and metadata; the hashes decide what re-ingesting it must do."""

    docid: str
    content_hash: str  # of the text that was chunked and embedded
    meta_hash: str  # of title, __ref, __tags, __meta
    title: str | None = None
    ref: str | None = None
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    chunks: int = 0


@dataclass(frozen=True)
class ChunkRecord:
    position: int
    text: str
    headings: tuple[str, ...]
    vector: npt.NDArray[np.float32]  # unit length


@dataclass(frozen=True)
class StoredChunk:
    docid: str
    position: int
    text: str
    headings: tuple[str, ...] = ()
    title: str | None = None
    ref: str | None = None
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.docid}#{self.position}"


@dataclass(frozen=True)
class StoreQuery:
    """One term of a search. `mode` picks the legs: both fused by RRF, or one alone."""

    k: int
    mode: Literal["hybrid", "vector", "lexical"] = "hybrid"
    vector: npt.NDArray[np.float32] | None = None
    text: str | None = None
    min_similarity: float = 0.0  # cosine floor for passages (hybrid and vector modes)
    candidates: int = 0  # how deep each leg looks before fusion (0: a default from k)

    @property
    def depth(self) -> int:
        return self.candidates or max(4 * self.k, 40)


@dataclass(frozen=True)
class StoreHit:
    chunk: StoredChunk
    score: float  # 0–1: scaled RRF (hybrid), cosine (vector) or BM25 over the best BM25 (lexical)
    similarity: float | None = None
    lexical: float | None = None


class KnowledgeStore(Protocol):
    """One interface, two adapters: `EmbeddedStore` (on disk, in-process) and `WeaviateStore`."""

    async def create_collection(self, scope: Scope, embedder: str, dim: int) -> None: ...

    async def delete_collection(self, scope: Scope) -> bool: ...

    async def list_collections(self, tenant: str) -> list[str]: ...

    async def document_states(self, scope: Scope, docids: list[str]) -> dict[str, DocumentInfo]:
        """What is stored for these docids (absent ones are missing from the result)."""
        ...

    async def replace_documents(
        self, scope: Scope, items: list[tuple[DocumentInfo, list[ChunkRecord]]]
    ) -> None:
        """Store each document with exactly these chunks; its previous chunks are gone afterwards."""
        ...

    async def update_metadata(self, scope: Scope, docs: list[DocumentInfo]) -> None:
        """Change title/__ref/__tags/__meta of stored documents without touching their vectors."""
        ...

    async def delete_document(self, scope: Scope, docid: str) -> bool: ...

    async def list_documents(self, scope: Scope, offset: int = 0, limit: int = 100) -> list[DocumentInfo]: ...

    async def search(self, scope: Scope, query: StoreQuery) -> list[StoreHit]: ...

    async def chunks_by_ref(self, scope: Scope, ref: str, limit: int = 32) -> list[StoredChunk]: ...

    async def flush(self) -> None:
        """Make everything written so far durable (and fast to reopen)."""
        ...

    async def available(self) -> bool:
        """Whether the store can serve now (readiness: `aigw_retrieval.app`); never raises."""
        ...

    async def close(self) -> None: ...
