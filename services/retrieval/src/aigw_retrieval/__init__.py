"""aigw retrieval: knowledge collections — chunking, embeddings, stores, ingestion, search, injection.

The pieces the request path and the management API call:

* `Ingestor(store, embedder).ingest(scope, docs)` / `.ingest_jsonl(scope, lines)` — upsert by docid;
* `Searcher(store, embedder).search(scope, KnowledgeSearch)` — a direct search;
* `inject_passages(messages, passages)` — the prompt with passages fenced as untrusted data;
* `knowledge_usage(...)` — the usage lines to publish for searches and embedded tokens;
* `build_store(settings)` / `build_embedder(settings)` — the configured adapters.
"""

from __future__ import annotations

from .factory import build_embedder, build_store
from .ingest import Ingestor, Progress
from .inject import inject_passages, render_passages
from .metering import knowledge_usage
from .search import Searcher, UnsupportedReranker
from .stores import CollectionExists, CollectionNotFound, EmbeddedStore, KnowledgeStore, Scope

__all__ = [
    "CollectionExists",
    "CollectionNotFound",
    "EmbeddedStore",
    "Ingestor",
    "KnowledgeStore",
    "Progress",
    "Scope",
    "Searcher",
    "UnsupportedReranker",
    "build_embedder",
    "build_store",
    "inject_passages",
    "knowledge_usage",
    "render_passages",
]
