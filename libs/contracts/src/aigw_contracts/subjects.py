"""Every NATS subject, queue group and stream name the system uses, in one place.

Subjects are versioned (`aigw.v1.…`) so a breaking change to a message can run beside the old one.

Request path (core NATS, at-most-once, so every stream of events is numbered and ends with an
explicit final or error event):

* the edge publishes a `ChatEnvelope` to `ROUTER_CHAT` with the NATS reply set to
  `reply_subject(edge_id, request_id)`; the edge subscribes to `reply_wildcard(edge_id)`, so a
  "no responders" status (no router running) comes straight back to it;
* the router publishes the routed envelope to `WORKER_CHAT` with the NATS reply set to
  `bounce_subject(router_id, envelope.reply)`: if no worker listens, the server bounces a
  503 status there and the router turns it into an error event on `envelope.reply`;
* the worker publishes stream events to `envelope.reply`;
* the edge broadcasts `CHAT_CANCEL` when a client goes away; whoever holds the request stops: the
  worker running it, the router classifying it, retrieval grounding it (`aigw_runtime.cancels`).
"""

from __future__ import annotations

PREFIX = "aigw.v1"

ROUTER_CHAT = f"{PREFIX}.router.chat"
ROUTER_QUEUE = "aigw-router"

# Request-reply: the models a tenant may use (`GET /v1/models`); the router owns that data.
ROUTER_MODELS = f"{PREFIX}.router.models"

WORKER_CHAT = f"{PREFIX}.worker.chat"
WORKER_QUEUE = "aigw-inference"

RETRIEVAL_CHAT = f"{PREFIX}.retrieval.chat"  # routed envelopes of gateways with knowledge
RETRIEVAL_QUEUE = "aigw-retrieval"
# Request-reply, from the edge's management API: `KnowledgeRequest` in, JSON (or an error) out.
RETRIEVAL_MANAGE = f"{PREFIX}.retrieval.manage"
# Request-reply, from a worker running a `QueryFunction` gateway's tool loop: `ToolSearch` in,
# `ToolSearchResult` (or an error) out.
RETRIEVAL_TOOL = f"{PREFIX}.retrieval.tool"
# Request-reply, from the edge's `POST /v1/embeddings`: `EmbedJob` in, `EmbedResult` (a JSON line
# then the raw float32 vectors) or an error out. Metered by retrieval (`inference.embeddings.in`).
RETRIEVAL_EMBED = f"{PREFIX}.retrieval.embed"
# Request-reply, from the edge's `POST /v1/embeddings`: `EmbedJob` in. The router resolves `model`:
# a gateway or catalog model whose upstream is an embedding model goes on (the same reply) to
# `WORKER_EMBED` as a `RoutedEmbed`; any other name to `RETRIEVAL_EMBED` (the bundled local model).
ROUTER_EMBED = f"{PREFIX}.router.embed"
# Request-reply, from the router: `RoutedEmbed` in, `EmbedResult` and vectors (or an error) out,
# to the edge's inbox. The worker calls the upstream's `/embeddings` and meters it.
WORKER_EMBED = f"{PREFIX}.worker.embed"
# Request-reply, from the edge when it serves a gateway's response-cache hit: `CacheHit` in, its
# priced lines out once the usage stream stored them. Retrieval bills it (a usage producer, with
# the config to price it from) so that the internet-facing edge never publishes usage itself.
RETRIEVAL_CACHE_HIT = f"{PREFIX}.retrieval.cache_hit"

CHAT_CANCEL = f"{PREFIX}.chat.cancel"

REPLY_PREFIX = f"{PREFIX}.reply"
BOUNCE_PREFIX = f"{PREFIX}.bounce"

# Usage events: a JetStream stream, so billing survives restarts of any consumer.
USAGE_STREAM = "AIGW_USAGE"
USAGE_SUBJECT_PREFIX = f"{PREFIX}.usage"
USAGE_DEAD_LETTER = f"{PREFIX}.usage-dead"
METERING_DURABLE = "aigw-metering"
METERING_QUERY = f"{PREFIX}.metering.query"
# "Was this request billed?" (`usage.BilledQuery`): the edge asks before it tells a client whose
# answer was lost on the way that nothing was charged.
METERING_BILLED = f"{PREFIX}.metering.billed"

# Spend control (`aigw_contracts.spend`): the JetStream stream of balance credits (the audit trail)
# and budget alerts (50/80/100 % of a budget), one subject per kind and tenant.
SPEND_STREAM = "AIGW_SPEND"
SPEND_SUBJECT_PREFIX = f"{PREFIX}.spend"
SPEND_WILDCARD = f"{SPEND_SUBJECT_PREFIX}.>"


def spend_credit_subject(tenant: str) -> str:
    return f"{SPEND_SUBJECT_PREFIX}.credit.{tenant}"


def spend_alert_subject(tenant: str) -> str:
    return f"{SPEND_SUBJECT_PREFIX}.alert.{tenant}"


# The request log: one event per HTTP request the edge answered (refusals and failures included),
# a JetStream stream of its own beside the usage stream, stored by metering's second durable.
REQUESTS_STREAM = "AIGW_REQUESTS"
REQUESTS_SUBJECT_PREFIX = f"{PREFIX}.requests"
REQUESTS_WILDCARD = f"{REQUESTS_SUBJECT_PREFIX}.>"
REQUESTS_DURABLE = "aigw-metering-requests"
# `RequestLogQuery` → `RequestLogReport` (`GET /v1/requests`), answered by metering.
METERING_REQUESTS = f"{PREFIX}.metering.requests"
# The subject token of requests refused before any key said whose they were (401s, 413s…).
NO_TENANT = "_"


def requests_subject(tenant: str) -> str:
    """Split by tenant like usage; requests with no tenant yet go under `NO_TENANT`."""
    return f"{REQUESTS_SUBJECT_PREFIX}.{tenant or NO_TENANT}"


def spend_budget_subject(tenant: str) -> str:
    return f"{SPEND_SUBJECT_PREFIX}.budget.{tenant}"


# Metering's durable consumer of the spend stream: budgets into ClickHouse (dashboards).
METERING_SPEND_DURABLE = "aigw-metering-spend"
SPEND_BUDGET_WILDCARD = f"{SPEND_SUBJECT_PREFIX}.budget.>"


def usage_subject(tenant: str) -> str:
    """Usage events are split by tenant so a team can consume one tenant's usage alone."""
    return f"{USAGE_SUBJECT_PREFIX}.{tenant}"


USAGE_WILDCARD = f"{USAGE_SUBJECT_PREFIX}.>"


REPLY_WILDCARD = f"{REPLY_PREFIX}.>"
BOUNCE_WILDCARD = f"{BOUNCE_PREFIX}.>"


def reply_wildcard(edge_id: str) -> str:
    return f"{REPLY_PREFIX}.{edge_id}.*"


def reply_subject(edge_id: str, request_id: str) -> str:
    return f"{REPLY_PREFIX}.{edge_id}.{request_id}"


def request_id_from_reply(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


# Reply inboxes: where nats-py's request-reply answers and JetStream's API answers arrive
# (`<prefix>.<random>`). On an authenticated bus each user has a prefix of its own, so its
# permissions let it read the answers to its own requests and no one else's, and let only the
# services that answer it write there (`aigw_runtime.natsauth`).
INBOX_PREFIX = "_INBOX"


def inbox_prefix(user: str | None) -> str:
    """The inbox prefix of a connection made as `user` (nats-py's default without one)."""
    return f"{INBOX_PREFIX}.{user}" if user else INBOX_PREFIX


def inbox_wildcard(user: str) -> str:
    return f"{inbox_prefix(user)}.>"


def bounce_wildcard(service_id: str) -> str:
    return f"{BOUNCE_PREFIX}.{service_id}.>"


def bounce_subject(service_id: str, reply: str) -> str:
    """A reply subject that carries the real reply subject inside it (no state to keep)."""
    return f"{BOUNCE_PREFIX}.{service_id}.{reply}"


def reply_from_bounce(service_id: str, subject: str) -> str:
    return subject[len(BOUNCE_PREFIX) + len(service_id) + 2 :]


def reply_in_bounce(subject: str) -> str:
    """The edge's reply subject inside a bounce subject of any service ("" if it is none);
    service ids hold no dots."""
    if not subject.startswith(BOUNCE_PREFIX + "."):
        return ""
    return subject[len(BOUNCE_PREFIX) + 1 :].partition(".")[2]
