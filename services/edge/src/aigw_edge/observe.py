"""What the edge tells operators about each chat completion: Prometheus metrics, its spans, and the
`Server-Timing` header the client gets.

Metrics (`GET /metrics` on the edge's HTTP port) are labelled by the gateway's slug and the
upstream's id as the worker reported them on the request's first event (`Aigw-Gateway`,
`Aigw-Upstream`), never by the model name the client typed: label sets stay bounded by the
configuration. A request refused before a worker saw it has empty `gateway` and `model` labels.

`Server-Timing` (milliseconds, per stage):
* `edge`: the edge's own work before the request left for the router (auth, validation, envelope);
* `route`: the router's (complexity classification included);
* `retrieve`: the retrieval service's (embedding, search, rewrites), only for gateways with knowledge;
* `ttft`: the worker's time from its first upstream call to the upstream's first token (a whole
  answer's response headers), retries and fallbacks included;
* `relay`: the worker's time from that first token to its final event (reading and pricing the
  rest of the answer, storing its usage): whole answers only;
* `total`: the edge's time from receiving the request to sending the response's headers.
The stages are measured where they happen (each service its own monotonic clock; no clocks are
compared across machines) and come back on the answer's first event (`Aigw-Timing`). A stream's
headers leave with its first chunk, so for streams `total` is the time to the first chunk and there
is no `relay`. What `total` leaves unexplained is the bus and the queues between the stages.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from aigw_runtime.metrics import Labelled

# Latency buckets from 5 ms to 5 minutes (the request deadline's default).
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

# Looked up through `Labelled` (a dict get per request instead of `labels()`).
REQUESTS = Labelled(
    Counter(
        "aigw_requests",
        "Chat completion requests answered, by HTTP status",
        ["gateway", "model", "status", "stream"],
    )
)
DURATION = Labelled(
    Histogram(
        "aigw_request_duration_seconds",
        "Chat completions: request received to response ended (a stream's last byte)",
        ["gateway", "stream"],
        buckets=_BUCKETS,
    )
)
TTFT = Labelled(
    Histogram(
        "aigw_time_to_first_token_seconds",
        "Streamed chat completions: request received to the first chunk sent",
        ["gateway", "model"],
        buckets=_BUCKETS,
    )
)
INFLIGHT = Gauge("aigw_inflight_requests", "Chat completions in progress at the edge")
# Gateways' response caches (`respcache.py`), by the gateway's slug: `hit` answered from the cache,
# `miss` looked up and run, `bypass` run without a lookup (the client's `Cache-Control: no-cache`
# or `no-store`). Savings: what the cached answer cost when it ran, less what the hit was billed.
CACHE_REQUESTS = Labelled(
    Counter(
        "aigw_cache_requests",
        "Chat completions to cache-enabled gateways, by result (hit, miss, bypass)",
        ["gateway", "result"],
    )
)
CACHE_SAVED = Labelled(
    Counter(
        "aigw_cache_saved_usd",
        "What response-cache hits saved: the cached answers' cost less the hits' price (USD)",
        ["gateway"],
    )
)

SERVER_TIMING = b"server-timing"


def server_timing(edge_ms: float, worker: str | None, total_ms: float) -> bytes:
    """The `Server-Timing` value: the edge's stage, the worker's report (`route`, `retrieve`,
    `ttft`, `relay`, already in the header's syntax), the total."""
    if worker:
        return f"edge;dur={edge_ms:.2f}, {worker}, total;dur={total_ms:.2f}".encode()
    return f"edge;dur={edge_ms:.2f}, total;dur={total_ms:.2f}".encode()
