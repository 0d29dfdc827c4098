from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RetrievalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIGW_")

    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    # Part of this replica's bounce subjects, so it must be one NATS token and distinct per replica.
    retrieval_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12], pattern=r"^[A-Za-z0-9_-]{1,64}$")

    # Knowledge store: the embedded one (a directory, one process owns it) or Weaviate.
    knowledge_store: Literal["embedded", "weaviate"] = "embedded"
    knowledge_path: str = ".aigw/knowledge"
    weaviate_host: str = "localhost"
    weaviate_port: int = 8080
    weaviate_grpc_port: int = 50051

    # Embeddings: the bundled MiniLM (offline) or an OpenAI-compatible /v1/embeddings upstream.
    embedder: Literal["local", "openai"] = "local"
    embeddings_base_url: str = "https://api.openai.com/v1"
    embeddings_api_key: str | None = Field(default=None, repr=False)
    embeddings_model: str = "text-embedding-3-small"
    embeddings_dim: int = 1536
    embeddings_batch: int = 64
    # BLAS threads of the local embedder. One: measured on a busy 2-core machine, OpenBLAS's
    # spinning threads made a one-query embedding take ~150 ms against ~16 ms with one thread.
    blas_threads: int = Field(default=1, ge=1)

    # Chunking.
    chunk_chars: int = 1200
    chunk_overlap: int = 150

    # Prices of the knowledge SKUs (USD), exact decimals: `knowledge.search` per search request and
    # `knowledge.embeddings.in` per token the embedding model read (queries and ingested chunks).
    # Defaults: about what hosted vector search and OpenAI's text-embedding-3-small cost.
    price_knowledge_search: Decimal = Decimal("0.0001")
    price_knowledge_embedding_token: Decimal = Decimal("2E-8")
    # `inference.embeddings.in`: per token read for `POST /v1/embeddings` (same default).
    price_embeddings_token: Decimal = Decimal("2E-8")

    # The request path: a query term is cut to its last `max_query_chars` characters (the question
    # usually ends a message; the embedder reads 256 tokens at most anyway).
    max_query_chars: int = Field(default=2000, ge=50)
    # Query embeddings kept in memory (LRU; 384 floats each with the local model): a repeated
    # question skips the ~10 ms embedding. 0 turns the cache off.
    query_cache_size: int = Field(default=4096, ge=0)
    # Seconds a resolver model call (query rewriting, model reranking) may take; past that the
    # request goes on without it: the plain query, the fused order (`resolver.py`).
    resolver_timeout: float = Field(default=3.0, gt=0)
    # Usage events: JetStream publish retries stay inside the usage stream's 120 s duplicate window.
    usage_retry_window: float = Field(default=100.0, gt=0)
    shutdown_grace: float = Field(default=10.0, ge=0)
    # Seconds between "alive" events for requests held here (`aigw_runtime.heartbeat`).
    heartbeat_interval: float = 1.0
    # GET /healthz and /readyz for supervisors (k8s probes, compose healthchecks); unset: not served.
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    # Seconds between checks that the knowledge store can serve (Weaviate's readiness endpoint, the
    # embedded store's files); readiness is false from the first failed check to the next good one.
    store_check_interval: float = Field(default=5.0, gt=0)
