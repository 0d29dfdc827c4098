"""The request log: one `RequestLogEvent` per API request, published to JetStream off the answer's path.

The edge is the one place that knows how every request ended (a 401 never reaches a worker, a
client that left never produces usage), so it publishes the log; metering stores it in ClickHouse.
`RequestLogMiddleware` wraps the whole app (chat completions included), reads the status from
`send`, and takes what routes learned (tenant, key, model, gateway, TTFT) from the access-log dict
in the scope. Events are gathered per tenant for 20 ms and each tenant's batch, one stream message
(`LoggedBatch`), is handed to the runtime's `UsagePublisher` (`submit`: no await, no I/O), which
retries until the stream acks and deduplicates by `Nats-Msg-Id`, exactly as for usage. Nothing here
waits for the bus.

Payloads (request and answer bodies) are kept only for gateways with `log_payloads`, and only
after `redact` removed secrets; while no gateway asks for them, bodies are not even referenced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

from nats.aio.client import Client as NatsClient
from pydantic_core import to_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw_contracts import Gateway, streams, subjects
from aigw_contracts.ids import uuid7
from aigw_contracts.requestlog import REQUEST_LOG_SCHEMA_VERSION
from aigw_runtime.usage_publisher import JetStreamUsageBus, UsagePublisher, requests_stream_config

from .logs import SCOPE_KEY, AccessLog

log = logging.getLogger("aigw.edge.requests")

PAYLOAD_LIMIT = 32 * 1024  # bytes of a body kept in the log; the rest is cut (and says so)
MAX_BATCH_BYTES = 256 * 1024  # a tenant's batch goes out early past about this size
_API_PREFIXES = ("/v1/", "/api/v1/")  # health probes, docs and /metrics are not requests to log
REDACTED = "[REDACTED]"

# Keys whose values are secrets wherever they appear in a JSON body (compared lower-cased, with
# "-" as "_"). Exact names, not substrings: `max_tokens` and `prompt_tokens` are not secrets.
_SECRET_KEYS = frozenset(
    (
        "authorization",
        "proxy_authorization",
        "api_key",
        "apikey",
        "x_api_key",
        "api_token",
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "secret",
        "client_secret",
        "password",
        "passwd",
        "private_key",
        "cookie",
        "set_cookie",
    )
)
# Secrets inside any text: bearer credentials, aigw keys, provider keys (OpenAI/Anthropic `sk-…`,
# Google `AIza…`, AWS access key ids, GitHub and Slack tokens), and `key=value` spellings.
_SECRET_TEXT = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}"
    r"|aigw_[A-Za-z0-9_-]{16,}"
    r"|sk-[A-Za-z0-9_-]{16,}"
    r"|AIza[0-9A-Za-z_-]{30,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"
    r"|(?i:(?:api[_-]?key|secret|password|passwd|access[_-]?token)\s*[:=]\s*)[^\s,;&\"']+"
)


def redact_text(text: str) -> str:
    return _SECRET_TEXT.sub(REDACTED, text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {
            k: REDACTED if k.lower().replace("-", "_") in _SECRET_KEYS else _redact_value(v)
            for k, v in value.items()
        }
    return value


def redact(body: bytes) -> str:
    """A body as text without secrets: JSON is walked (secret-named fields blanked, secret-looking
    strings replaced), anything else (SSE frames, text) has secret-looking text replaced. Cut to
    `PAYLOAD_LIMIT` bytes after redaction, so a cut never leaves half a secret behind."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        out = redact_text(text)
    else:
        out = json.dumps(_redact_value(data), ensure_ascii=False, separators=(",", ":"))
    if len(out) > PAYLOAD_LIMIT:
        out = out[:PAYLOAD_LIMIT] + "…[truncated]"
    return out


def _error_code(body: bytes) -> str:
    """`error.code` (else `error.type`) of an OpenAI-shaped error body, "" if it is none."""
    try:
        err = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(err, dict):
        return ""
    return str(err.get("code") or err.get("type") or "")


class LoggedBatch:
    """The request log events of one tenant from one linger window, as one stream message (a JSON
    array): what the publisher sends, acks and retries as a unit.

    One message per request cost the edge about half again its own CPU per request (a publish with
    headers, an ack callback, its bookkeeping), and nats-server a stored message each
    (`python -m bench.cpu --no-request-log` against the default); one per tenant per 20 ms makes
    that a fixed cost per window. Events are dicts (not pydantic models: building one cost more than
    the rest of `record`), serialized once by the sender task; a test checks that what this writes
    is exactly what the contract reads. `msg_id` is unique per edge process and batch, so a
    republished batch is dropped by the stream, and metering collapses any copy by request id.
    """

    __slots__ = ("events", "request_id", "tenant")
    stream_name: ClassVar[str] = streams.REQUESTS_STREAM

    def __init__(self, tenant: str, events: list[dict[str, Any]], batch_id: str) -> None:
        self.tenant = tenant
        self.events = events
        self.request_id = batch_id  # what the publisher's log lines name

    def msg_id(self) -> str:
        return self.request_id

    def subject(self) -> str:
        return subjects.requests_subject(self.tenant)

    def model_dump_json(self) -> str:
        return to_json(self.events).decode()

    def model_dump(self, *, mode: str = "python") -> dict[str, Any]:
        events = json.loads(self.model_dump_json()) if mode == "json" else list(self.events)
        return {"batch": self.request_id, "events": events}


class RequestLog:
    """Builds the events, gathers them per tenant for `linger` seconds (or `MAX_BATCH_BYTES`), and
    hands each tenant's batch to the publisher; holds which gateways want their payloads kept."""

    def __init__(self, edge_id: str, enabled: bool = True, linger: float = 0.02) -> None:
        self.edge_id = edge_id
        self.enabled = enabled
        self.linger = linger
        self.payload_gateways: frozenset[str] = frozenset()  # slugs of gateways with log_payloads
        self.gateway_ids: dict[str, str] = {}  # slug → id (events name the slug; usage, the id)
        self.publisher: UsagePublisher | None = None
        self._batches: dict[str, list[dict[str, Any]]] = {}  # tenant → events not handed over yet
        self._bytes = 0  # about how large they are
        self._flush_at: asyncio.TimerHandle | None = None
        self._prefix = f"requests:{edge_id}:{uuid7()}:"  # unique to this process: batch ids
        self._batch_no = 0

    def gateways_changed(self, gateways: Iterable[Gateway]) -> None:
        gateways = list(gateways)
        self.payload_gateways = frozenset(g.slug for g in gateways if g.log_payloads)
        self.gateway_ids = {g.slug: g.id for g in gateways}

    async def start(self, nc: NatsClient) -> None:
        if not self.enabled:
            return
        bus = JetStreamUsageBus(nc)
        try:
            await bus.ensure_stream(requests_stream_config())
        except Exception as err:  # metering creates it too; publishes retry until it exists
            log.warning("could not create the request log stream", extra={"error": repr(err)})
        # No linger of its own: batches are gathered here.
        self.publisher = UsagePublisher(bus, what="request log batch", linger=0)
        await self.publisher.start()

    async def close(self, within: float = 5.0) -> None:
        self.flush()
        if self.publisher is not None:
            await self.publisher.close(within)
            self.publisher = None

    def flush(self) -> None:
        """Hand every tenant's gathered events to the publisher (no I/O)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        batches, self._batches, self._bytes = self._batches, {}, 0
        publisher = self.publisher
        if publisher is None:
            return
        for tenant, events in batches.items():
            self._batch_no += 1
            publisher.submit(LoggedBatch(tenant, events, f"{self._prefix}{self._batch_no}"))

    def record(
        self,
        method: str,
        path: str,
        status: int,
        started_wall: float,
        started: float,
        fields: dict[str, Any],
        request_body: list[bytes] | None,
        response_body: list[bytes] | None,
        error_body: bytes,
    ) -> None:
        if self.publisher is None:
            return
        latency_ms = (time.perf_counter() - started) * 1000
        error_code = ""
        if status >= 400:
            error_code = _error_code(error_body) or str(fields.get("outcome") or "")
        else:
            outcome = str(fields.get("outcome") or "")
            if outcome.startswith("error") or outcome == "client_disconnected":
                error_code = outcome  # a stream that ended in an error chunk, or a client that left
        gateway = fields.get("gateway") or ""
        keep = gateway in self.payload_gateways
        event = {
            "schema_version": REQUEST_LOG_SCHEMA_VERSION,
            "request_id": fields.get("request_id") or uuid7(),
            "tenant": fields.get("tenant") or "",
            "key_id": fields.get("key_id") or "",
            "edge_id": self.edge_id,
            "method": method,
            "path": path,
            "status": status,
            "error_code": error_code,
            "model": fields.get("model") or "",
            "gateway": gateway,
            "gateway_id": self.gateway_ids.get(gateway, "") if gateway else "",
            "fallback": fields.get("fallback") or "",
            "stream": bool(fields.get("stream")),
            "started_at": datetime.fromtimestamp(started_wall, UTC),
            "latency_ms": round(latency_ms, 3),
            "ttft_ms": fields.get("ttft_ms"),
            "request_payload": redact(b"".join(request_body)) if keep and request_body else None,
            "response_payload": redact(b"".join(response_body)) if keep and response_body else None,
        }
        self._add(event)

    def _add(self, event: dict[str, Any]) -> None:
        self._batches.setdefault(event["tenant"], []).append(event)
        self._bytes += 512 + len(event["request_payload"] or "") + len(event["response_payload"] or "")
        if self._bytes >= MAX_BATCH_BYTES:
            self.flush()  # well under a NATS message (1 MiB by default)
        elif self._flush_at is None:
            self._flush_at = asyncio.get_running_loop().call_later(self.linger, self.flush)


class RequestLogMiddleware:
    """The access log line and the request log event of every request, from one place.

    Outermost in the stack, so refusals of the middlewares inside it (413, 408, 401 before the
    body) have their status here too. Routes add what they learned to `scope[SCOPE_KEY]`.
    """

    def __init__(self, app: ASGIApp, access: AccessLog, requests: RequestLog) -> None:
        self.app = app
        self.access = access
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        logged = self.requests.enabled and path.startswith(_API_PREFIXES)
        if not logged and not self.access.enabled:
            await self.app(scope, receive, send)
            return
        started, started_wall = time.perf_counter(), time.time()
        status = 500  # what the client gets if the app raises before answering
        fields: dict[str, Any] = {}
        scope[SCOPE_KEY] = fields
        error_body = b""
        # Bodies are referenced only while some gateway keeps payloads (they are cut later anyway).
        capture = logged and bool(self.requests.payload_gateways)
        request_body: list[bytes] | None = [] if capture else None
        response_body: list[bytes] | None = [] if capture else None
        sizes = [0, 0]

        async def send_status(message: Message) -> None:
            nonlocal status, error_body
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
            elif kind == "http.response.body":
                if status >= 400 and not error_body:
                    error_body = message.get("body", b"")[:4096]
                if response_body is not None and sizes[1] < PAYLOAD_LIMIT:
                    chunk = message.get("body", b"")
                    response_body.append(chunk)
                    sizes[1] += len(chunk)
            await send(message)

        app_receive = receive
        if request_body is not None:

            async def app_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request" and sizes[0] < PAYLOAD_LIMIT:
                    chunk = message.get("body", b"")
                    request_body.append(chunk)
                    sizes[0] += len(chunk)
                return message

        try:
            await self.app(scope, app_receive, send_status)
        finally:
            status = fields.pop("status", status)
            if logged:
                try:
                    self.requests.record(
                        scope["method"],
                        path,
                        status,
                        started_wall,
                        started,
                        fields,
                        request_body,
                        response_body,
                        error_body,
                    )
                except Exception:  # the log must never break an answer
                    log.exception("could not record a request in the request log")
            if self.access.enabled:
                self.access.write(scope["method"], path, status, started, **fields)
