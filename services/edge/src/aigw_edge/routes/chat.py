"""`POST /v1/chat/completions`: authenticate, validate, publish one envelope, relay the events.

A raw ASGI app rather than a FastAPI endpoint: this is the gateway's hot path, and the per-token
loop only frames the bytes the worker serialized and writes them, coalescing whatever queued up
since the last write into one `send`. The event protocol is `aigw_contracts.events`: the kind,
sequence number and status are NATS headers; payloads are never parsed here.

A stream's response headers wait for its first event, so an error that happens before any token
(unknown gateway, no worker, upstream 429…) is a plain HTTP error with its real status, which is
what makes the SDKs raise the right exception and retry what is retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from functools import lru_cache

from fastapi import APIRouter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from aigw_contracts import (
    ApiKey,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Gateway,
    Tenant,
    headers,
    subjects,
)
from aigw_contracts.config import TenantLimits
from aigw_contracts.errors import (
    DeadlineExceeded,
    GatewayError,
    InternalError,
    PayloadTooLarge,
    Unavailable,
    UpstreamError,
)
from aigw_contracts.events import EventKind
from aigw_contracts.ids import uuid7
from aigw_contracts.usage import BilledAnswer, BilledQuery
from aigw_runtime import telemetry

from .. import sse
from ..admission import Admission
from ..auth import KeyStore, duplicate_authorization
from ..bus import DISCONNECTED, HOLDER_LOST, OVERFLOW, SHUTDOWN, TIMED_OUT, Bus, Event, Inbox, Marker
from ..deadline import CLIENT_TIMEOUT, SDK_READ_TIMEOUT, request_timeout
from ..deps import AnyKey
from ..errors import JSON_TYPE, Headers, invalid_request, retry_after_headers, send_body, send_error
from ..idempotency import Claim, Idempotency, Replay
from ..logs import CLIENT_CLOSED, SCOPE_KEY
from ..observe import DURATION, INFLIGHT, REQUESTS, SERVER_TIMING, TTFT, server_timing
from ..openapi import errors as openapi_errors
from ..openapi import sse_of
from ..ratelimit import PlanRateLimited, RateLimiter, SharedLimits, Taken, requested_tokens
from ..settings import EdgeSettings
from ..trace import span_trace_json, trace_json

log = logging.getLogger("aigw.edge.chat")

PATHS = ("/v1/chat/completions", "/api/v1/chat/completions")

_DELTA, _FINAL, _ERROR = EventKind.DELTA.value, EventKind.FINAL.value, EventKind.ERROR.value
_EVENT, _SEQ = headers.EVENT, headers.SEQ
_REQUEST_ID = headers.HTTP_REQUEST_ID.encode()
# What the gateway did, from a request's first event to the client's HTTP response headers.
_SURFACED = (
    (headers.GATEWAY, headers.HTTP_GATEWAY.encode()),
    (headers.PARAMS, headers.HTTP_PARAMS_USED.encode()),
    (headers.FALLBACK, headers.HTTP_FALLBACK.encode()),
    (headers.COMPLEXITY, headers.HTTP_ROUTED_COMPLEXITY.encode()),
)
_SHOULD_RETRY = headers.HTTP_SHOULD_RETRY.encode()
_GATEWAY, _FALLBACK, _UPSTREAM, _TIMING = headers.GATEWAY, headers.FALLBACK, headers.UPSTREAM, headers.TIMING


def _holder_lost() -> Unavailable:
    # Nothing was billed for a request whose holder died before its final event (the worker meters
    # at the end), so a retry is safe: 503 is what the SDKs retry on their own.
    return Unavailable(
        "The gateway process handling this request stopped responding; retry the request",
        retry_after=1,
        code="holder_lost",
    )


class _ClientGone(Exception):
    """The client disconnected while we were still reading its request."""


class _Call:
    """What one request learned on its way, for the access log and for error responses."""

    __slots__ = (
        "arrived",
        "fallback",
        "first_at",
        "gateway",
        "headers",
        "ip_bucket",
        "key",
        "model",
        "outcome",
        "published",
        "request_id",
        "span",
        "started",
        "status",
        "stream",
        "taken",
        "timeout",
        "timing",
        "ttft_ms",
        "upstream",
    )

    def __init__(self) -> None:
        self.arrived = time.perf_counter()
        self.gateway: str | None = None  # the slug of the gateway that answered
        self.fallback: str | None = None  # the fallback upstream that answered, if one did
        self.ttft_ms: float | None = None  # streams: until the first event was relayed
        self.published = 0.0  # when the envelope left for the router (perf_counter)
        self.first_at = 0.0  # when the response headers went out
        self.upstream = ""  # metric labels, from the first event (bounded: the configuration's)
        self.timing: str | None = None  # the worker's stages, in Server-Timing syntax
        self.span: Span | None = None  # the request's span, when tracing is on
        self.request_id: str | None = None
        self.key: ApiKey | None = None
        self.model: str | None = None
        self.stream = False
        self.timeout = 0.0  # seconds the request may take (`deadline.request_timeout`)
        self.status = 500
        self.outcome = "error"
        self.started = False  # response headers sent: from here on, errors go into the stream
        self.headers: Headers = []
        # What the request drew from the rate limits, given back unless it ends answered (200).
        self.taken: Taken | None = None
        self.ip_bucket: tuple[str, str] | None = None


@lru_cache(maxsize=4096)
def _key_fields(tenant: str, key_id: str, key_kind: str) -> bytes:
    """The envelope's key fields, serialized once per key."""
    return json.dumps({"tenant": tenant, "key_id": key_id, "key_kind": key_kind})[1:-1].encode()


def envelope_json(
    request_id: str, key: ApiKey, reply: str, received_at: float, deadline: float, trace: bytes, body: bytes
) -> bytes:
    """A `ChatEnvelope` as JSON, with the client's validated body spliced in as `request`.

    The body already passed `ChatCompletionRequest` validation, and the router validates the
    envelope with the same model, so re-serializing the request (all of a long prompt) would only
    cost time. Every other field is ours: ids, subjects and floats that need no escaping.
    """
    return b"".join(
        (
            b'{"v":1,"request_id":"',
            request_id.encode(),
            b'",',
            _key_fields(key.tenant, key.id, key.kind),
            b',"reply":"',
            reply.encode(),
            b'","deadline":',
            repr(deadline).encode(),
            b',"received_at":',
            repr(received_at).encode(),
            b',"trace":',
            trace,
            b',"request":',
            body,
            b"}",
        )
    )


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _watch_disconnect(receive: Receive, inbox: Inbox) -> None:
    """After the body is read, `receive` returns only when the client goes away (or we answered)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            inbox.put(DISCONNECTED)
            return


def _status(hdrs: dict[str, str]) -> int:
    try:
        status = int(hdrs.get(headers.STATUS, "502"))
    except ValueError:
        return 502
    return status if 400 <= status < 600 else 502


class ChatEndpoint:
    """The endpoint, as a raw ASGI app. It reports what it learned (request id, tenant, model, how
    the request ended) to the access log middleware through the scope, when that middleware runs."""

    def __init__(
        self, settings: EdgeSettings, bus: Bus, keys: KeyStore, tenants: dict[str, Tenant] | None = None
    ) -> None:
        self.bus = bus
        self.keys = keys
        self.tenants: dict[str, Tenant] = tenants if tenants is not None else {}  # kept current by the app
        self.gateways: dict[str, Gateway] = {}  # the config's, kept current by the app (`app.py`)
        self.shared: SharedLimits | None = None  # set once connected (`app.py`)
        self.edge_id = settings.edge_id
        self.request_timeout = settings.request_timeout
        self.idle_timeout = settings.stream_idle_timeout
        self.limiter = RateLimiter()
        self.idempotency = Idempotency(bus, settings)
        self.admission = Admission(settings.max_inflight_requests)
        INFLIGHT.set_function(lambda: self.admission.in_flight)
        # Decided once: without tracing configured, no span code runs per request (`telemetry`).
        self.tracing = telemetry.tracing.on

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = _Call()
        try:
            with self.admission.admit():  # past the edge's limit: a 503 at once (`admission.py`)
                await self._handle(scope, receive, send, call)
        except GatewayError as err:
            call.status, call.outcome = err.status, err.code or "error"
            if isinstance(err, PlanRateLimited):
                call.headers.extend(err.headers)
            if not call.started:
                self._timed(call)
                await send_error(send, err, call.headers)
        except _ClientGone:
            call.status, call.outcome = CLIENT_CLOSED, "client_disconnected"
        except Exception:
            log.exception("chat completion failed", extra={"request_id": call.request_id})
            call.status, call.outcome = 500, "internal_error"
            if not call.started:
                internal = InternalError("The gateway had an internal error; it has been logged.")
                self._timed(call)
                await send_error(send, internal, call.headers)
        finally:
            self._measured(call)
            if call.status != 200:  # refused or failed: what it drew from the rate limits goes back
                if call.taken is not None and self.shared is not None:
                    self.shared.give_back(call.taken)
                if call.ip_bucket is not None and call.key is not None:
                    self.limiter.give_back(call.key, call.ip_bucket)
            fields = scope.get(SCOPE_KEY)
            if fields is not None:
                key = call.key
                fields.update(
                    # The status the client got, or 499 when it left before any answer.
                    status=call.status,
                    request_id=call.request_id,
                    tenant=key.tenant if key else None,
                    key_id=key.id if key else None,
                    model=call.model,
                    stream=call.stream,
                    outcome=call.outcome,
                    gateway=call.gateway,
                    fallback=call.fallback,
                    ttft_ms=call.ttft_ms,
                )

    def _timed(self, call: _Call) -> None:
        """Add `Server-Timing` to the response headers about to be sent (`observe.py`)."""
        now = time.perf_counter()
        call.first_at = now
        total = (now - call.arrived) * 1000
        edge = (call.published - call.arrived) * 1000 if call.published else total
        call.headers.append((SERVER_TIMING, server_timing(edge, call.timing, total)))

    def _measured(self, call: _Call) -> None:
        """The request's metrics, and the end of its span."""
        ended = time.perf_counter()
        stream = "true" if call.stream else "false"
        gateway = call.gateway or ""
        REQUESTS(gateway, call.upstream, str(call.status), stream).inc()
        DURATION(gateway, stream).observe(ended - call.arrived)
        if call.stream and call.status == 200 and call.first_at:
            TTFT(gateway, call.upstream).observe(call.first_at - call.arrived)
        span = call.span
        if span is not None:
            key = call.key
            span.set_attributes(
                {
                    "http.response.status_code": call.status,
                    "aigw.outcome": call.outcome,
                    "aigw.gateway": gateway,
                    "aigw.upstream": call.upstream,
                    "aigw.tenant": key.tenant if key else "",
                    "aigw.stream": call.stream,
                }
            )
            if call.status >= 500:
                span.set_status(Status(StatusCode.ERROR, call.outcome))
            end_ns = time.time_ns()
            if call.first_at and span.is_recording():  # the relay: response headers to its end
                start_ns = end_ns - int((ended - call.first_at) * 1e9)
                context = set_span_in_context(span)
                telemetry.tracing.tracer.start_span("relay", context, start_time=start_ns).end(end_ns)
            span.end(end_ns)

    def _span(self, call: _Call, traceparent: bytes | None, tracestate: bytes | None) -> Span:
        """The request's span: a child of the client's `traceparent` when it sent a valid one."""
        carrier = {}
        if traceparent is not None:
            carrier["traceparent"] = traceparent.decode("latin-1").strip()
            if tracestate is not None:
                carrier["tracestate"] = tracestate.decode("latin-1")
        span = telemetry.tracing.tracer.start_span(
            "chat.completions",
            context=telemetry.extract(carrier),
            kind=SpanKind.SERVER,
            start_time=time.time_ns() - int((time.perf_counter() - call.arrived) * 1e9),
            attributes={"aigw.request_id": call.request_id or ""},
        )
        call.span = span
        return span

    def _grounded(self, tenant: str, model: str) -> bool:
        """Whether `model` names one of the tenant's gateways with knowledge (by id, slug or name)."""
        gateway = self.gateways.get(model)
        if gateway is None:
            gateway = next(
                (g for g in self.gateways.values() if g.tenant == tenant and model in (g.slug, g.name)), None
            )
        return gateway is not None and gateway.tenant == tenant and gateway.knowledge is not None

    async def _admit_search(self, call: _Call, tenant: str, limits: TenantLimits) -> Taken:
        assert self.shared is not None
        try:
            searched = await self.shared.admit_search(tenant, limits)
        except BaseException:
            if call.taken is not None:  # refused: what the request drew already goes back too
                self.shared.give_back(call.taken)
                call.taken = None
            raise
        if call.taken is None:
            call.taken = searched
        else:
            call.taken.draws.extend(searched.draws)
        return searched

    async def _handle(self, scope: Scope, receive: Receive, send: Send, call: _Call) -> None:
        # Every answer, refusals included, carries the id the access log line has.
        request_id = call.request_id = uuid7()
        call.headers.append((_REQUEST_ID, request_id.encode()))
        authorization = traceparent = tracestate = client_timeout = sdk_timeout = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    raise duplicate_authorization()
                authorization = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
            elif name == CLIENT_TIMEOUT:
                client_timeout = value
            elif name == SDK_READ_TIMEOUT:
                sdk_timeout = value
        span = self._span(call, traceparent, tracestate) if self.tracing else None
        if span is not None and span.is_recording():  # sampled: the edge decides for the request
            with telemetry.tracing.tracer.start_as_current_span("auth", context=set_span_in_context(span)):
                key = call.key = self.keys.authenticate(authorization)
        else:
            key = call.key = self.keys.authenticate(authorization)
        if key.limits.requests_per_minute_per_ip:
            call.ip_bucket = self.limiter.admit(key, scope.get("client"))
        body = await _read_body(receive)
        try:
            request = ChatCompletionRequest.model_validate_json(body)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        tenant = self.tenants.get(key.tenant)
        tenant_limits = tenant.limits if tenant is not None else None
        if self.shared is not None and SharedLimits.applies(key, tenant_limits):
            call.taken = await self.shared.admit(key, tenant_limits, requested_tokens(body, request))
            call.headers.extend(call.taken.headers)
        if (
            self.shared is not None
            and tenant_limits is not None
            and tenant_limits.searches_per_minute
            and self._grounded(key.tenant, request.model)
        ):  # a gateway with knowledge searches before it answers: one search of the plan
            searched = await self._admit_search(call, key.tenant, tenant_limits)
            call.headers.extend(searched.headers)
        call.model = request.model
        stream = call.stream = bool(request.stream)
        timeout = call.timeout = request_timeout(self.request_timeout, stream, client_timeout, sdk_timeout)
        if call.span is not None:
            call.span.set_attribute("aigw.model.requested", request.model)

        reply = subjects.reply_subject(self.edge_id, request_id)
        now = time.time()
        trace = (
            span_trace_json(call.span)
            if call.span is not None
            else trace_json(traceparent, tracestate, request_id)
        )
        envelope = envelope_json(request_id, key, reply, now, now + timeout, trace, body)
        if self.bus.connected and len(envelope) > self.bus.max_payload:
            raise PayloadTooLarge(
                f"The request is larger than the message bus allows ({self.bus.max_payload} bytes)."
            )

        claim: Claim | None = None
        if request.idempotency_key is not None:
            held = await self.idempotency.begin(key, request.idempotency_key, body)
            if isinstance(held, Replay):
                call.status, call.outcome, call.started = held.status, "idempotent_replay", True
                await held.send(send, call.headers)
                return
            claim = held
            send = claim.recorder(send, lambda: call.outcome == "final")

        loop = asyncio.get_running_loop()
        bus = self.bus
        inbox = bus.open(request_id, loop.time() + timeout)
        watcher: asyncio.Task[None] | None = None
        try:
            call.published = time.perf_counter()
            await bus.publish_chat(
                envelope, reply, telemetry.nats_headers(json.loads(trace)) if call.span is not None else None
            )
            watcher = loop.create_task(_watch_disconnect(receive, inbox))
            first = await inbox.get()
            if stream:
                await self._relay_stream(first, inbox, send, call)
            else:
                await self._answer(first, inbox, send, call)
        except asyncio.CancelledError:
            # The server is stopping and its grace period is over: free the worker too.
            await bus.cancel(request_id, "edge_shutdown")
            raise
        finally:
            bus.drop(request_id)
            if watcher is not None:
                watcher.cancel()
            if claim is not None:
                await claim.release()  # no completed answer was kept: a retry may run again

    # ------------------------------------------------------------------ before the response starts
    async def _first(self, item: Event | Marker, call: _Call) -> tuple[dict[str, str], str]:
        """Headers and kind of a request's first event; raises what the client should get instead."""
        assert call.request_id is not None
        if isinstance(item, Marker):
            await self._ended(item, call)
        assert isinstance(item, Event)
        hdrs = item.headers
        kind = hdrs.get(_EVENT)
        if kind is None:
            if hdrs.get(headers.NATS_STATUS) == headers.NO_RESPONDERS:
                raise Unavailable(
                    "No router available to take this request; try again shortly", retry_after=1
                )
            await self.bus.cancel(call.request_id, "malformed_event")
            raise UpstreamError("The gateway received a malformed event for this request")
        if hdrs.get(headers.SEQ) != "0":
            await self.bus.cancel(call.request_id, "lost_events")
            raise UpstreamError("Part of the answer was lost inside the gateway; please retry")
        for event_header, http_header in _SURFACED:
            value = hdrs.get(event_header)
            if value:
                call.headers.append((http_header, value.encode()))
        call.gateway = hdrs.get(_GATEWAY)
        call.fallback = hdrs.get(_FALLBACK)
        call.upstream = hdrs.get(_UPSTREAM, "")
        call.timing = hdrs.get(_TIMING)
        return hdrs, kind

    async def _ended(self, marker: Marker, call: _Call) -> None:
        """Raise (or, for a client that left, return) for a request ended by something other than an event."""
        assert call.request_id is not None
        if marker is DISCONNECTED:
            await self.bus.cancel(call.request_id, "client_disconnected")
            raise _ClientGone
        if marker is TIMED_OUT:
            await self.bus.cancel(call.request_id, "deadline_exceeded")
            raise await self._unless_billed(
                call,
                DeadlineExceeded(f"The request did not complete within its timeout of {call.timeout:.3g} s"),
            )
        if marker is SHUTDOWN:
            raise Unavailable("The gateway is shutting down; retry the request")
        if marker is HOLDER_LOST:
            await self.bus.cancel(call.request_id, "holder_lost")
            raise await self._unless_billed(call, _holder_lost())
        if marker is OVERFLOW:  # a whole answer larger than the buffer: the bus could not carry it
            await self.bus.cancel(call.request_id, "slow_reader")
            raise UpstreamError("The answer was larger than the gateway buffers for one request")
        raise InternalError(f"unexpected marker {marker!r}")

    async def _send_error_event(self, msg: Event, hdrs: dict[str, str], send: Send, call: _Call) -> None:
        status = _status(hdrs)
        extra = list(call.headers)
        retry_after = hdrs.get(headers.RETRY_AFTER)
        if retry_after:
            with contextlib.suppress(ValueError):
                extra.extend(retry_after_headers(status, float(retry_after)))
        should_retry = hdrs.get(headers.SHOULD_RETRY)
        if should_retry:
            extra.append((_SHOULD_RETRY, should_retry.encode()))
        call.status, call.outcome, call.started = status, "error", True
        self._timed(call)
        extra.append(call.headers[-1])
        await send_body(send, status, msg.data, extra, JSON_TYPE)

    # ------------------------------------------------------------------ non-stream
    async def _answer(self, first: Event | Marker, inbox: Inbox, send: Send, call: _Call) -> None:
        hdrs, kind = await self._first(first, call)
        assert isinstance(first, Event)
        msg, expected = first, 0
        while True:
            if kind == _FINAL:
                call.status, call.outcome, call.started = 200, "final", True
                self._timed(call)
                await send_body(send, 200, msg.data, call.headers, JSON_TYPE)
                return
            if kind == _ERROR:
                await self._send_error_event(msg, hdrs, send, call)
                return
            if kind != _DELTA:
                assert call.request_id is not None
                await self.bus.cancel(call.request_id, "malformed_event")
                raise UpstreamError("The gateway received a malformed event for this request")
            # A delta in a non-stream answer: workers send none, but skipping one is harmless.
            expected += 1
            item = await inbox.get()
            if isinstance(item, Marker):
                await self._ended(item, call)
            assert isinstance(item, Event)
            msg, hdrs = item, item.headers
            kind = hdrs.get(headers.EVENT, "")
            if hdrs.get(headers.SEQ) != str(expected):
                assert call.request_id is not None
                await self.bus.cancel(call.request_id, "lost_events")
                raise UpstreamError("Part of the answer was lost inside the gateway; please retry")

    # ------------------------------------------------------------------ stream
    async def _relay_stream(self, first: Event | Marker, inbox: Inbox, send: Send, call: _Call) -> None:
        hdrs, kind = await self._first(first, call)
        assert isinstance(first, Event) and call.request_id is not None
        if kind == _ERROR:
            await self._send_error_event(first, hdrs, send, call)
            return
        call.status, call.outcome, call.started = 200, "streaming", True
        self._timed(call)
        call.ttft_ms = round((call.first_at - call.arrived) * 1000, 3)
        await send({"type": "http.response.start", "status": 200, "headers": sse.HEADERS + call.headers})

        loop = asyncio.get_running_loop()
        idle = self.idle_timeout
        expected = 0
        items: list[Event | Marker] = [first]
        while True:
            out: list[bytes] = []
            for item in items:
                if isinstance(item, Marker):
                    err = self._marker_error(item)
                    if err is not None and item in (HOLDER_LOST, TIMED_OUT):
                        err = await self._unless_billed(call, err)
                    await self._end_stream(send, out, err, call, item)
                    return
                hdrs = item.headers
                if hdrs.get(_SEQ) != str(expected):
                    err = UpstreamError("Part of the answer was lost inside the gateway; please retry")
                    await self._end_stream(send, out, err, call, None, cancel="lost_events")
                    return
                expected += 1
                event = hdrs.get(_EVENT)
                if event == _DELTA:
                    out.append(sse.frame(item.data))
                elif event == _FINAL:
                    out.append(sse.final(item.data))
                    call.outcome = "final"
                    await send({"type": "http.response.body", "body": b"".join(out)})
                    return
                elif event == _ERROR:
                    out.append(sse.error(item.data))
                    call.outcome = f"error_{_status(hdrs)}"
                    await send({"type": "http.response.body", "body": b"".join(out)})
                    return
                else:
                    err = UpstreamError("The gateway received a malformed event for this request")
                    await self._end_stream(send, out, err, call, None, cancel="malformed_event")
                    return
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
            inbox.deadline = loop.time() + idle
            items = await inbox.get_all()

    async def _unless_billed(self, call: _Call, err: GatewayError) -> GatewayError:
        """`err`, unless the request was billed although its answer never arrived here.

        The worker stores a whole answer's usage before it sends the final event, so a request can
        be billed and its answer lost on the way (the worker died in between, the bus broke). The
        client is then told exactly that, and told not to retry (a retry is billed again); what the
        client hears and what is billed agree. Metering knows (`BilledQuery`); if it cannot say,
        the error says the request may have been billed.
        """
        key, request_id = call.key, call.request_id
        assert key is not None and request_id is not None
        query = BilledQuery(tenant=key.tenant, request_id=request_id).model_dump_json().encode()
        try:
            answer = await self.bus.ask(
                subjects.METERING_BILLED, query, "metering service", "say whether this request was billed"
            )
            billed = BilledAnswer.model_validate_json(answer).billed
        except Exception:
            err.message += f" (it may have been billed: see GET /v1/usage?request={request_id})"
            return err
        if not billed:
            return err
        return UpstreamError(  # its code says x-should-retry: false
            "The answer was generated and billed, but it could not be delivered "
            f"({err.message}); its lines are listed by GET /v1/usage?request={request_id}. "
            "A retry would be billed again.",
            code="answer_undelivered",
        )

    def _marker_error(self, marker: Marker) -> GatewayError | None:
        if marker is TIMED_OUT:
            return DeadlineExceeded(
                f"The stream was idle for more than the gateway's limit of {self.idle_timeout:g} s"
            )
        if marker is SHUTDOWN:
            return Unavailable("The gateway is shutting down; the stream was cut short")
        if marker is HOLDER_LOST:
            return _holder_lost()
        if marker is OVERFLOW:
            return UpstreamError(
                "The client read the stream too slowly: the gateway stopped it rather than buffer more",
                code="slow_reader",
            )
        return None  # DISCONNECTED: nobody to tell

    async def _end_stream(
        self,
        send: Send,
        out: list[bytes],
        err: GatewayError | None,
        call: _Call,
        marker: Marker | None,
        cancel: str | None = None,
    ) -> None:
        """End a started stream early: tell the worker to stop, and the client why (if it's there)."""
        assert call.request_id is not None
        if marker is DISCONNECTED:
            call.status, call.outcome = CLIENT_CLOSED, "client_disconnected"
            await self.bus.cancel(call.request_id, "client_disconnected")
            return
        if marker is TIMED_OUT:
            cancel = "stream_idle"
        elif marker is HOLDER_LOST:
            cancel = "holder_lost"
        elif marker is OVERFLOW:
            cancel = "slow_reader"
        if cancel:
            await self.bus.cancel(call.request_id, cancel)
        if err is not None:
            out.append(sse.error(err.to_json()))
            call.outcome = f"error_{err.status}"
        await send({"type": "http.response.body", "body": b"".join(out)})


# ---------------------------------------------------------------------------------------- OpenAPI
# Documented, never routed: `EdgeApp` hands every POST to these paths to `ChatEndpoint` before
# FastAPI sees it, and `EdgeAPI.openapi` adds this router's operation to `/openapi.json`.
documented = APIRouter(tags=["chat"])


@documented.post(
    PATHS[0],
    summary="Create a chat completion",
    response_model=ChatCompletion,
    response_description="The completion as JSON or, with `stream: true`, server-sent events: one "
    "`data: <chunk>` per chunk; the last chunk carries `usage` and `generation_context`, then "
    "`data: [DONE]`",
    responses={
        200: {"content": {"text/event-stream": sse_of(ChatCompletionChunk)}},
        **openapi_errors(400, 401, 404, 413, 429, 502, 503, 504),
    },
)
async def create_chat_completion(body: ChatCompletionRequest, key: AnyKey) -> ChatCompletion:
    """OpenAI's chat completions. `model` is a gateway (id, slug or name) or a catalog model tag;
    the answer adds `generation_context.generated_usage`, one priced line per SKU. Also served at
    `/api/v1/chat/completions`."""
    raise InternalError("This operation is served by the chat endpoint, not by FastAPI.")
