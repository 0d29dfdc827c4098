"""Knowledge stores behind one interface. `WeaviateStore` lives in `stores.weaviate` (imported on use,
so the embedded default never pays for the Weaviate client's import)."""

from __future__ import annotations

from ._base import (
    ChunkRecord,
    CollectionExists,
    CollectionNotFound,
    DocumentInfo,
    KnowledgeStore,
    Scope,
    StoredChunk,
    StoreHit,
    StoreQuery,
)
from .embedded import EmbeddedStore

__all__ = [
    "ChunkRecord",
    "CollectionExists",
    "CollectionNotFound",
    "DocumentInfo",
    "EmbeddedStore",
    "KnowledgeStore",
    "Scope",
    "StoreHit",
    "StoreQuery",
    "StoredChunk",
]
