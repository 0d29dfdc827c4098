"""Header names: on NATS stream events and on HTTP responses."""

from __future__ import annotations

# NATS headers of a stream event (worker -> edge). The payload is the exact JSON the client sees.
EVENT = "Aigw-Event"  # one of EventKind
SEQ = "Aigw-Seq"  # 0, 1, 2 … per request; a gap means a lost event
STATUS = "Aigw-Status"  # HTTP status of an error event
RETRY_AFTER = "Aigw-Retry-After"  # seconds, forwarded from an upstream 429
SHOULD_RETRY = "Aigw-Should-Retry"  # "false" on errors a retry cannot fix (HTTP_SHOULD_RETRY)
# Only on a request's first event: what the gateway did, surfaced to the client as HTTP headers.
GATEWAY = "Aigw-Gateway"  # the gateway's slug (HTTP_GATEWAY)
PARAMS = "Aigw-Params"  # compact JSON of the inference parameters actually sent (HTTP_PARAMS_USED)
FALLBACK = "Aigw-Fallback"  # the fallback upstream that answered, when the gateway's own failed
COMPLEXITY = "Aigw-Routed-Complexity"  # an auto-routing gateway's level (HTTP_ROUTED_COMPLEXITY)
UPSTREAM = "Aigw-Upstream"  # the upstream id answering (the edge's metric label; not surfaced)
# Milliseconds per stage as `Server-Timing` entries (`route;dur=0.4, ttft;dur=120.0`), surfaced
# with the edge's own as HTTP_SERVER_TIMING (see aigw_edge.observe).
TIMING = "Aigw-Timing"

# NATS status header of a "no responders" bounce (set by nats-server, not by us).
NATS_STATUS = "Status"
NO_RESPONDERS = "503"

# HTTP response headers the edge adds (OpenAI clients ignore unknown headers).
HTTP_REQUEST_ID = "x-request-id"
HTTP_GATEWAY = "x-aigw-gateway"
HTTP_PARAMS_USED = "x-aigw-params"
HTTP_FALLBACK = "x-aigw-fallback"
HTTP_ROUTED_COMPLEXITY = "x-model-routed-complexity"  # as the reference product names it
HTTP_SHOULD_RETRY = "x-should-retry"
# "true" on an answer replayed for a repeated `idempotency_key` (nothing ran, nothing was billed).
HTTP_IDEMPOTENT_REPLAY = "x-aigw-idempotent-replay"
HTTP_CACHE = "x-aigw-cache"  # hit or miss, on requests to a gateway with a response cache
