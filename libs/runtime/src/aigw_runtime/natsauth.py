"""Who may do what on the bus: one NATS user per service, with publish/subscribe allow lists.

An open nats-server lets any client that reaches it read every prompt and answer (`aigw.v1.>`),
write the config bucket (turn a tenant's key into an operator key) and publish usage events. So
every deployment runs NATS with these users (`aigw-dev nats-config` renders the server's
`authorization` block from `PERMISSIONS`; `make run` does the same for its own nats-server), and
each service connects as its own user (`nats://<user>:<password>@host:4222` in `AIGW_NATS_URL`).
Everything a user is not allowed here, the server refuses.

How the lists are built:
* every aigw subject comes from `aigw_contracts.subjects` / `streams` and the config bucket's name
  from `configstore.BUCKET`; this module spells only nats-server's own API (`$JS.API.…`, `$KV.…`),
  found by reading nats-py's JetStream and KV code and checked against a real server
  (`libs/runtime/tests/test_runtime_natsauth.py`, `tests/test_bus_auth_e2e.py`; and every e2e test
  fails on a refusal nats-server logs, so a subject missing here shows up at once);
* each user reads answers on its own inbox prefix (`subjects.inbox_prefix(user)`; `Bus` and the edge
  connect with it), and a service that answers another writes only to that one's inbox, so no user
  reads or forges the answers to another's requests. Explicit inbox rights rather than nats-server's
  `allow_responses`: a response permission is granted for whatever reply subject the asker names
  (`$KV.aigw_config.…` included), which would let any asker make a responder write there;
* only the edge (the management API) and `admin` (`aigw bootstrap`, `make run`'s seeding) write the
  config bucket; the router, retrieval and the edge read it. The idempotency bucket (kept answers)
  is the edge's alone;
* only the worker and retrieval publish usage events: metering stores what the usage stream holds,
  and the stream holds only what those two users published. (A response-cache hit served by the
  edge is billed by retrieval, priced from the gateway's config: the edge never writes a bill.) Metering alone consumes it (its
  durable) and answers usage queries.
* only the edge publishes the request log (`requestlog.RequestLogEvent`); metering stores it (a
  second durable on its own stream) and answers `GET /v1/requests`.

A limit of nats-server (2.15, its issue #8274): creating a push consumer does not check the consumer's
deliver subject against the creator's publish rights, so a config reader can have the server deliver
config entries (which it may read anyway) to a subject it may not publish to, e.g. another service's
inbox, where they are garbage to that service. A stream does not capture such deliveries (tested),
so this cannot put anything into the usage stream.

Why passwords rather than nkeys or JWT accounts: nats-py takes them in the URL, nats-server stores
them as bcrypt hashes, and they need no extra tooling; nkeys would remove the secret from the wire,
which TLS does as well (see the README's "Bus security").
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from aigw_contracts import streams, subjects
from aigw_contracts.ratelimits import QUOTA_BUCKET, RATE_BUCKET
from aigw_contracts.spend import SPEND_BUCKET

from .configstore import BUCKET

EDGE = "edge"
ROUTER = "router"
WORKER = "worker"
RETRIEVAL = "retrieval"
METERING = "metering"
ADMIN = "admin"  # bootstrap and CLI tooling: the config bucket, nothing on the request path

JS_API = "$JS.API"


def _api(*tokens: str) -> str:
    return ".".join((JS_API, *tokens))


def kv_stream(bucket: str) -> str:
    """The JetStream stream behind a KV bucket."""
    return f"KV_{bucket}"


def kv_wildcard(bucket: str) -> str:
    """Every key of a KV bucket: publishing here writes (or deletes) an entry."""
    return f"$KV.{bucket}.>"


@dataclass(frozen=True, slots=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def __add__(self, other: Permissions) -> Permissions:
        return Permissions(
            tuple(dict.fromkeys(self.publish + other.publish)),
            tuple(dict.fromkeys(self.subscribe + other.subscribe)),
        )


def kv_reader(bucket: str) -> Permissions:
    """Watch a bucket: look it up and run an ordered push consumer on it (delivered to the reader's
    inbox, flow-controlled; nats-py never deletes it: it expires once unused)."""
    stream = kv_stream(bucket)
    return Permissions(
        publish=(
            _api("STREAM", "INFO", stream),
            _api("CONSUMER", "CREATE", stream),
            _api("CONSUMER", "CREATE", stream, ">"),
            _api("CONSUMER", "INFO", stream, "*"),
            f"$JS.FC.{stream}.>",
        ),
        subscribe=(),
    )


def kv_writer(bucket: str) -> Permissions:
    """Everything a reader does, plus: create the bucket, put and delete entries, read one entry."""
    stream = kv_stream(bucket)
    return kv_reader(bucket) + Permissions(
        publish=(
            kv_wildcard(bucket),
            _api("STREAM", "CREATE", stream),
            _api("STREAM", "MSG", "GET", stream),
            _api("DIRECT", "GET", stream),
            _api("DIRECT", "GET", stream, ">"),
        ),
        subscribe=(),
    )


def kv_owner(bucket: str) -> Permissions:
    """A writer that also keeps the bucket's settings current (the idempotency bucket's TTL)."""
    return kv_writer(bucket) + Permissions(
        publish=(_api("STREAM", "UPDATE", kv_stream(bucket)),), subscribe=()
    )


def stream_keeper(stream: str) -> Permissions:
    """Look a stream up and create it when it is missing (never update, purge or delete it)."""
    return Permissions(
        publish=(_api("STREAM", "INFO", stream), _api("STREAM", "CREATE", stream)), subscribe=()
    )


def usage_producer() -> Permissions:
    """Publish usage events (the stream's acks come back on the producer's own inbox)."""
    return stream_keeper(streams.USAGE_STREAM) + Permissions(publish=streams.USAGE_SUBJECTS, subscribe=())


def request_log_producer() -> Permissions:
    """Publish request-log events (the edge: it knows how every request ended)."""
    return stream_keeper(streams.REQUESTS_STREAM) + Permissions(
        publish=streams.REQUESTS_SUBJECTS, subscribe=()
    )


def durable_puller(stream: str, durable: str) -> Permissions:
    """Create (or update) one durable consumer, pull from it and acknowledge what it delivers.
    Both create forms: nats-py uses the legacy one for a consumer named by `durable_name` alone."""
    return Permissions(
        publish=(
            _api("CONSUMER", "CREATE", stream, durable),
            _api("CONSUMER", "CREATE", stream, durable, ">"),
            _api("CONSUMER", "DURABLE", "CREATE", stream, durable),
            _api("CONSUMER", "MSG", "NEXT", stream, durable),
            f"$JS.ACK.{stream}.{durable}.>",
        ),
        subscribe=(),
    )


def spend_keeper() -> Permissions:
    """Spend control: read and write the spend accounts (compare-and-set), publish credits and
    alerts to the spend stream (created when missing)."""
    return (
        kv_writer(SPEND_BUCKET)
        + stream_keeper(streams.SPEND_STREAM)
        + Permissions(publish=streams.SPEND_SUBJECTS, subscribe=())
    )


def _own_inbox(user: str) -> Permissions:
    return Permissions(publish=(), subscribe=(subjects.inbox_wildcard(user),))


def _answers(*askers: str) -> Permissions:
    """Write answers into these users' inboxes (request-reply, the worker's events to an asker)."""
    return Permissions(publish=tuple(subjects.inbox_wildcard(user) for user in askers), subscribe=())


def _table() -> dict[str, Permissions]:
    events_to_edges = Permissions(publish=(subjects.REPLY_WILDCARD,), subscribe=())
    return {
        EDGE: _own_inbox(EDGE)
        + kv_writer(BUCKET)
        + kv_owner(streams.IDEMPOTENCY_BUCKET)  # kept answers: the edge's alone
        + spend_keeper()  # balances and budgets (management API)
        + kv_writer(RATE_BUCKET)  # plan rate limits shared by the edges
        + request_log_producer()
        + kv_owner(streams.RESPONSES_BUCKET)  # stored Responses API answers: the edge's alone
        + kv_writer(streams.CACHE_BUCKET)  # gateways' response caches: the edge's alone
        + kv_reader(streams.CIRCUITS_BUCKET)  # the workers' circuit states (`GET /v1/circuits`)
        + kv_writer(QUOTA_BUCKET)  # documents per day, collections per tenant
        + Permissions(
            publish=(
                subjects.ROUTER_CHAT,
                subjects.ROUTER_MODELS,
                subjects.CHAT_CANCEL,
                subjects.RETRIEVAL_MANAGE,
                subjects.ROUTER_EMBED,
                subjects.RETRIEVAL_EMBED,  # semantic response-cache lookups (the local embedder)
                subjects.RETRIEVAL_CACHE_HIT,
                subjects.METERING_QUERY,
                subjects.METERING_BILLED,
                subjects.METERING_REQUESTS,
            ),
            subscribe=(subjects.REPLY_WILDCARD,),
        ),
        ROUTER: _own_inbox(ROUTER)
        + kv_reader(BUCKET)
        + events_to_edges
        + _answers(EDGE)  # the model list
        + Permissions(
            # embeddings: forwarded with the edge's reply subject, answered by a worker or retrieval
            publish=(
                subjects.WORKER_CHAT,
                subjects.RETRIEVAL_CHAT,
                subjects.WORKER_EMBED,
                subjects.RETRIEVAL_EMBED,
            ),
            subscribe=(
                subjects.ROUTER_CHAT,
                subjects.ROUTER_MODELS,
                subjects.ROUTER_EMBED,
                subjects.BOUNCE_WILDCARD,
                subjects.CHAT_CANCEL,  # stops a classification whose client left
            ),
        ),
        WORKER: _own_inbox(WORKER)
        + kv_writer(streams.CIRCUITS_BUCKET)  # its circuit breakers' states, for operators
        + events_to_edges
        + _answers(ROUTER, RETRIEVAL, EDGE)  # model calls a router or retrieval made; embeddings
        + usage_producer()
        + spend_keeper()  # holds and settlements of every request
        + Permissions(
            publish=(subjects.RETRIEVAL_TOOL,),
            subscribe=(subjects.WORKER_CHAT, subjects.WORKER_EMBED, subjects.CHAT_CANCEL),
        ),
        RETRIEVAL: _own_inbox(RETRIEVAL)
        + kv_reader(BUCKET)
        + kv_writer(SPEND_BUCKET)  # direct searches and ingestion count against balances and budgets
        + events_to_edges
        + _answers(EDGE, WORKER)  # management answers, knowledge-tool answers
        + usage_producer()
        + Permissions(
            publish=(subjects.WORKER_CHAT,),
            subscribe=(
                subjects.RETRIEVAL_CHAT,
                subjects.RETRIEVAL_MANAGE,
                subjects.RETRIEVAL_TOOL,
                subjects.RETRIEVAL_EMBED,
                subjects.RETRIEVAL_CACHE_HIT,
                subjects.BOUNCE_WILDCARD,
                subjects.CHAT_CANCEL,  # stops a grounding whose client left
            ),
        ),
        METERING: _own_inbox(METERING)
        + _answers(EDGE)  # usage reports
        + stream_keeper(streams.USAGE_STREAM)
        + stream_keeper(streams.USAGE_DEAD_STREAM)
        + durable_puller(streams.USAGE_STREAM, subjects.METERING_DURABLE)
        + stream_keeper(streams.REQUESTS_STREAM)
        + durable_puller(streams.REQUESTS_STREAM, subjects.REQUESTS_DURABLE)
        + stream_keeper(streams.SPEND_STREAM)  # budgets for the dashboards
        + durable_puller(streams.SPEND_STREAM, subjects.METERING_SPEND_DURABLE)
        + Permissions(
            publish=(*streams.USAGE_DEAD_SUBJECTS,),
            subscribe=(subjects.METERING_QUERY, subjects.METERING_BILLED, subjects.METERING_REQUESTS),
        ),
        ADMIN: _own_inbox(ADMIN) + kv_writer(BUCKET),
    }


PERMISSIONS: dict[str, Permissions] = _table()
USERS: tuple[str, ...] = tuple(PERMISSIONS)

# The user each service process connects as (`aigw-dev`, compose and k8s give each its own URL).
SERVICE_USERS: dict[str, str] = {
    "edge": EDGE,
    "router": ROUTER,
    "inference-worker": WORKER,
    "retrieval": RETRIEVAL,
    "metering": METERING,
}


def user_of(url: str) -> str | None:
    """The user a NATS URL connects as: its user name when it carries a password too (a URL with a
    user part alone is a token, which must never end up in a subject)."""
    parts = urlsplit(url)
    if parts.username and parts.password is not None:
        return parts.username
    return None


def inbox_prefix_of(url: str) -> str:
    """The inbox prefix a connection to `url` must use for its user's permissions to hold."""
    return subjects.inbox_prefix(user_of(url))


def url_for(user: str, password: str, host: str, port: int, scheme: str = "nats") -> str:
    """`nats://user:password@host:port` (passwords made by `aigw-dev` are URL-safe)."""
    return f"{scheme}://{user}:{password}@{host}:{port}"
