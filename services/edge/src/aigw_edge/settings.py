"""The edge's settings, read once from the environment (`AIGW_` prefix) and passed around as one object."""

from __future__ import annotations

import uuid

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from aigw_contracts.streams import IDEMPOTENCY_WINDOW_S, RESPONSES_RETENTION_S


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIGW_")

    nats_url: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = 8080
    # Part of this edge's reply subjects, so it must be one NATS token. Replicas need distinct ids:
    # a shared id would make every replica receive (and drop) the others' events.
    edge_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12], pattern=r"^[A-Za-z0-9_-]{1,64}$")
    key_pepper: SecretStr = SecretStr("")  # the HMAC key of stored API key hashes
    # Seals tenants' upstream API keys at rest (base64url of 32 bytes; `aigw_runtime.secretbox`).
    secrets_key: SecretStr = SecretStr("")
    # CIDRs own upstream endpoints may resolve to although private (e.g. a simulator on loopback).
    upstream_allowlist: list[str] = Field(default_factory=list)
    # A request's first event (and a non-stream request's answer) must arrive within this; it is
    # also the envelope's deadline, so nothing downstream starts work the client gave up on.
    request_timeout: float = Field(default=300.0, gt=0)
    # The embedding model gateways' semantic response caches (`cache.similarity`) embed with: a
    # name retrieval's embedder answers to (`POST /v1/embeddings`'s local model).
    cache_embed_model: str = "all-MiniLM-L6-v2"
    # A stream silent for longer than this ends with a 504 error chunk. Keep it above the workers'
    # upstream idle timeout, so their more precise error reaches the client first.
    stream_idle_timeout: float = Field(default=120.0, gt=0)
    # A request whose holder (router, retrieval or worker) sends neither events nor its once-a-second
    # heartbeat for this long is ended at once (503, or an error chunk mid-stream): the process
    # holding it died. Keep it a few of the services' AIGW_HEARTBEAT_INTERVAL.
    holder_timeout: float = Field(default=3.5, gt=0)
    # Answer bytes the edge holds for one client that reads slower than the answer comes; past this
    # the stream is cut with an error chunk (code `slow_reader`) and the worker is told to stop.
    stream_buffer_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024)
    # Chat completions this edge serves at once; one more is refused at once with a 503 `overloaded`
    # and `Retry-After: 1` (`admission.py`), instead of making every request slower.
    max_inflight_requests: int = Field(default=1024, ge=1)
    models_timeout: float = Field(default=5.0, gt=0)  # GET /v1/models waits this long for the router
    # Request bodies above this are refused (413) before they are read; the serialized envelope is
    # also checked against the NATS server's max_payload.
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Slow clients (slowloris): a connection must complete its request headers within
    # `header_timeout` of opening (or of its next request starting), else it is closed unanswered;
    # a request body must arrive whole within `body_timeout` of its headers, else 408 and closed.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=30.0, gt=0)
    keep_alive_timeout: int = Field(default=5, ge=1)  # an idle keep-alive connection is closed after this
    # Open connections (idle keep-alive ones included) and requests in flight served at once; past
    # this a request is answered 503 (`overloaded`) and its connection closed.
    max_connections: int = Field(default=2048, ge=1)
    backlog: int = Field(default=2048, ge=1)  # connections the kernel queues before the edge accepts them
    log_level: str = "INFO"
    access_log: bool = True  # one JSON line per request; off for benchmarks
    # One `RequestLogEvent` per API request to the request log stream (metering stores it in
    # ClickHouse: `GET /v1/requests`, the Grafana error and latency panels). Published in batches,
    # never awaited by a request.
    request_log: bool = True
    # Reverse proxies trusted to say the client's address in X-Forwarded-For (comma-separated IPs or
    # CIDRs, or "*"), for per-IP key limits behind a load balancer. Unset: the peer's own address.
    forwarded_allow_ips: str | None = None
    # Deliver reply events through the shortcut in bus.py (off: nats-py's ordinary callback path).
    nats_fast_path: bool = True
    shutdown_grace: float = Field(default=30.0, ge=0)  # in-flight requests may finish within this on SIGTERM
    # Seconds a repeated `idempotency_key` gets the first call's answer (the answers' bucket TTL).
    idempotency_window: float = Field(default=IDEMPOTENCY_WINDOW_S, gt=0)
    # Seconds a stored `/v1/responses` answer can be continued (`previous_response_id`) or fetched.
    responses_retention: float = Field(default=RESPONSES_RETENTION_S, gt=0)
