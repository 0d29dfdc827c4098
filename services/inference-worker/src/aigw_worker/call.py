"""One chat completion on this worker: envelope in, numbered events out, then its usage event.

Every path ends with exactly one `final` or `error` event (a client must never wait for nothing):
upstream faults, the deadline, a cancel from the edge, a shutdown and unexpected exceptions all
end in an error event. The usage event follows, off the response path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from aigw_contracts import (
    ChatEnvelope,
    GeneratedUsage,
    GenerationContext,
    RoutedCall,
    Usage,
    UsageEvent,
    headers,
)
from aigw_contracts.api import AssistantMessage, ChatCompletion, Choice
from aigw_contracts.errors import (
    DeadlineExceeded,
    GatewayError,
    InternalError,
    Unavailable,
    UpstreamError,
)
from aigw_contracts.events import EventKind, error_event, event_headers
from aigw_contracts.knowledge import KNOWLEDGE_UPSTREAM, Grounding

from .assemble import StreamAssembler
from .chunks import ChunkWriter
from .citations import citation_annotations
from .jsonio import loads
from .knowledge_tool import KnowledgeLoop, split_calls
from .pricing import (
    SOURCES,
    add_usage,
    estimated_usage,
    merge_lines,
    normalized_usage,
    price_lines,
    prompt_chars,
)
from .sse import SSEParser
from .upstream import body_chunks, transport_error

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger("aigw.worker.call")

SHUTDOWN = "shutdown"

# Statuses of upstream faults a gateway's fallback chain answers (see `Call._answer`).
_FALLBACK_ON = frozenset({429, 500, 502, 503, 504})


class ClientCancelled(GatewayError):
    """The edge cancelled the request (its client went away); 499 as in nginx's 'client closed'."""

    status, type, code = 499, "invalid_request_error", "request_cancelled"


def cancel_error(reason: str) -> GatewayError:
    if reason == SHUTDOWN:
        return Unavailable("The inference worker is shutting down; retry the request")
    if reason in ("deadline_exceeded", "stream_idle"):
        return DeadlineExceeded(f"The request was stopped by the gateway ({reason})")
    return ClientCancelled(f"The request was cancelled ({reason})")


def first_headers(route: RoutedCall | None) -> dict[str, str]:
    """Headers only a request's first event carries: what the gateway did, for the client to see."""
    if route is None:
        return {}
    extra = {headers.PARAMS: json.dumps(route.params_used, separators=(",", ":"))}
    if route.gateway_slug:
        extra[headers.GATEWAY] = route.gateway_slug
    if route.routed_complexity:
        extra[headers.COMPLEXITY] = route.routed_complexity
    return extra


class Events:
    """One request's events on its reply subject, numbered from 0 with no gaps.

    A publish is never interrupted: a cancel that arrives while one is in progress (nats-py may
    suspend in `publish` to flush) is deferred until it completes, because an event cut off after
    taking its sequence number would show up at the edge as a lost event instead of the real error.
    """

    __slots__ = ("_first", "bus", "busy", "cancel_pending", "ended", "seq", "subject")

    def __init__(self, worker: Worker, subject: str, route: RoutedCall | None) -> None:
        assert worker.bus is not None
        self.bus = worker.bus
        self.subject = subject
        self.seq = 0
        self.ended = False
        self.busy = False
        self.cancel_pending = False
        self._first = first_headers(route)

    def _headers(self, kind: EventKind) -> dict[str, str]:
        hdrs = event_headers(kind, self.seq)
        if self.seq == 0:
            hdrs.update(self._first)
        self.seq += 1
        return hdrs

    async def _publish(self, payload: bytes, hdrs: dict[str, str]) -> None:
        self.busy = True
        try:
            await self.bus.event(self.subject, payload, hdrs)
        finally:
            self.busy = False

    def first_header(self, name: str, value: str) -> None:
        """A header for the request's first event (before it is sent)."""
        self._first[name] = value

    async def delta(self, payload: bytes) -> None:
        await self._publish(payload, self._headers(EventKind.DELTA))
        if self.cancel_pending:
            self.cancel_pending = False
            raise asyncio.CancelledError

    async def final(self, payload: bytes) -> None:
        self.ended = True
        await self._publish(payload, self._headers(EventKind.FINAL))

    async def error(self, err: GatewayError) -> None:
        if self.ended:
            return
        self.ended = True
        hdrs, payload = error_event(err, self.seq)
        if self.seq == 0:
            hdrs.update(self._first)
        self.seq += 1
        await self._publish(payload, hdrs)


class Call:
    def __init__(self, worker: Worker, envelope: ChatEnvelope, route: RoutedCall) -> None:
        self.worker = worker
        self.envelope = envelope
        self.route = route
        self.request_id = envelope.request_id
        self.stream = bool(envelope.request.stream)
        self.events = Events(worker, envelope.reply, route)
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.arrived = time.monotonic()
        self.created = int(time.time())
        self.accepted = False  # the upstream answered 2xx: it has read (and bills) the prompt
        self.completed = False
        self.usage: Usage | None = None
        self.lines: list[GeneratedUsage] = []
        self.estimated = False
        self.completion_chars = 0
        self.ttft_ms: float | None = None
        # A `QueryFunction` gateway's tool loop; the usage of its rounds before the current one.
        self.loop: KnowledgeLoop | None = None
        if route.knowledge_tool is not None and worker.bus is not None:
            self.loop = KnowledgeLoop(route.knowledge_tool, envelope, worker.bus, route.prefill)
        self.earlier: Usage | None = None
        self.earlier_estimated = False

    def cancel(self, reason: str) -> None:
        if self.task is None or self.task.done() or self.events.ended:
            return
        self.cancel_reason = reason
        if self.events.busy:
            self.events.cancel_pending = True  # stop right after the event being published
        else:
            self.task.cancel()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                remaining = self.envelope.remaining()
                if remaining <= 0:
                    raise DeadlineExceeded("The request's deadline passed before a worker could start it")
                try:
                    async with asyncio.timeout(remaining):
                        await self._answer(remaining)
                except TimeoutError:
                    raise DeadlineExceeded(
                        "The upstream model did not finish within the request's deadline"
                    ) from None
        except GatewayError as err:
            await self._end(err)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._end(cancel_error(self.cancel_reason or SHUTDOWN))
        except Exception:
            log.exception("chat completion failed", extra={"request_id": self.request_id})
            await self._end(InternalError("The inference worker had an internal error; it has been logged"))
        finally:
            self._account()

    async def _answer(self, remaining: float) -> None:
        """The upstream's answer; a fallback's (the gateway's chain, in order) when it fails before
        answering: only while nothing has reached the client and no upstream has accepted the
        request (so no answer is ever mixed or billed twice), and only for faults another upstream
        may not have (429, 5xx, unreachable, no answer in time), never for a rejected request."""
        while True:
            try:
                if self.stream:
                    await self._stream(remaining)
                else:
                    await self._complete(remaining)
                return
            except GatewayError as err:
                remaining = self.envelope.remaining()
                fallbacks = self.route.fallbacks
                if not fallbacks or self.accepted or self.events.seq or err.status not in _FALLBACK_ON:
                    raise
                if remaining <= 0:
                    raise
                target = fallbacks.pop(0)
                log.info(
                    "upstream failed before answering; trying the next in the gateway's chain",
                    extra={
                        "request_id": self.request_id,
                        "upstream": self.route.upstream.id,
                        "status": err.status,
                        "code": err.code,
                        "fallback": target.id,
                    },
                )
                self.route.upstream = target
                self.route.response_model = target.id
                self.events.first_header(headers.FALLBACK, target.id)

    async def _end(self, err: GatewayError) -> None:
        if err.status >= 500 and err.status != 503:
            log.warning(
                "request failed",
                extra={
                    "request_id": self.request_id,
                    "status": err.status,
                    "code": err.code,
                    "error": err.message,
                },
            )
        try:
            await self.events.error(err)
        except Exception:
            log.exception("could not publish an error event", extra={"request_id": self.request_id})

    def _body(self, stream: bool) -> bytes:
        body: dict[str, Any] = dict(self.route.body)
        body["model"] = self.route.upstream.model
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}  # always: usage is what we bill
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    def _round_usage(self, usage: Usage | None) -> Usage:
        """This upstream call's usage, estimated (and marked so) when the upstream sent none."""
        if usage is None:
            self.earlier_estimated = True
            return estimated_usage(prompt_chars(self.route.body), self.completion_chars)
        return usage

    def _next_round(self, usage: Usage | None) -> None:
        """A tool-loop round ended: its usage joins the request's, its text count starts over."""
        self.earlier = add_usage(self.earlier, self._round_usage(usage))
        self.completion_chars = 0

    def _grounding(self) -> list[Grounding]:
        """The passages that grounded the answer: injected ones, then those the tool loop found."""
        if self.loop is None:
            return self.route.grounding
        return [*self.route.grounding, *self.loop.grounding]

    def _priced(self, usage: Usage | None) -> tuple[Usage, GenerationContext]:
        usage = add_usage(self.earlier, self._round_usage(usage))
        estimated = self.earlier_estimated
        self.usage, self.estimated = usage, estimated
        target = self.route.upstream
        self.lines = price_lines(usage, target.prices, target.id, estimated, self.route.purpose)
        # Lines priced upstream of the worker (knowledge search, embeddings) come first: the response
        # lists every line of the request; each producer publishes only its own usage event.
        loop = self.loop
        tool_lines = merge_lines(loop.lines) if loop is not None else []
        context = GenerationContext(
            generated_usage=[*self.route.prior_usage, *tool_lines, *self.lines],
            runned_functions=loop.functions if loop is not None else [],
        )
        grounding = self._grounding()
        if grounding:
            context.grounding = [g.model_dump(exclude_none=True) for g in grounding]  # type: ignore[attr-defined]
        return usage, context

    # ------------------------------------------------------------------ stream
    async def _stream(self, remaining: float) -> None:
        writer = ChunkWriter(
            f"chatcmpl-{self.request_id}",
            self.created,
            self.route.response_model,
            self.envelope.request.include_usage,
        )
        loop = self.loop
        hide = loop.tool.name if loop is not None else None
        n = _choices_asked(self.route.body)
        first = StreamAssembler(writer, self.route.prefill, hide, keep=bool(self.route.grounding), n=n)
        assembler = await self._stream_round(writer, first, remaining)
        spoken = list(assembler.said)  # the answer's text, when citations may need it
        while loop is not None:
            calls = loop.calls_to_run(assembler.hidden_calls())
            if not calls or assembler.shown_tools:
                break
            self._next_round(normalized_usage(assembler.usage))
            await loop.run(self.route.body, "".join(assembler.said), calls)
            after = StreamAssembler(writer, self.route.prefill, hide, after=assembler)
            assembler = await self._stream_round(writer, after, self.envelope.remaining())
            spoken += assembler.said
        finishes = assembler.finish_reasons()
        if finishes.get(0) == "tool_calls" and not assembler.shown_tools:
            # only knowledge calls the loop could not run: nothing for the client to call
            finishes[0] = "stop"
        usage, context = self._priced(normalized_usage(assembler.usage))
        grounding = self._grounding()  # no grounding (most requests): no answer text is joined
        cited: dict[int, list[dict[str, Any]]] | None = None
        if grounding:
            texts = {**assembler.said_by(), 0: "".join(spoken)}
            prefill = self.route.prefill or ""
            cited = {i: citation_annotations(prefill + text, grounding) for i, text in texts.items()}
        await self.events.final(writer.final(finishes, usage, context, cited))
        self.completed = True

    async def _stream_round(
        self, writer: ChunkWriter, assembler: StreamAssembler, remaining: float
    ) -> StreamAssembler:
        """One streamed upstream call, its deltas relayed to the client as they come."""
        upstream = self.worker.upstream
        request = await upstream.build(self.route.upstream, self._body(True), remaining, stream=True)
        response = await upstream.open(request)
        self.accepted = True
        parser = SSEParser()
        events = self.events
        try:
            try:
                async for raw in body_chunks(response):
                    payloads = assembler.feed(parser.feed(raw))
                    for payload in payloads:
                        if self.ttft_ms is None:
                            self.ttft_ms = (time.monotonic() - self.arrived) * 1000
                        await events.delta(payload)
                    self.completion_chars = assembler.completion_chars
            except httpx.HTTPError as exc:
                raise transport_error(exc) from None
            for payload in assembler.feed(parser.close()) + assembler.close():
                await events.delta(payload)
            self.completion_chars = assembler.completion_chars
            if not assembler.done and assembler.finish_reason is None:
                raise UpstreamError("The upstream model ended the stream before finishing its answer")
        finally:
            self.completion_chars = assembler.completion_chars
            await response.aclose()
        return assembler

    # ------------------------------------------------------------------ non-stream
    async def _complete(self, remaining: float) -> None:
        data = await self._fetch(remaining)
        loop = self.loop
        while loop is not None:
            message = _first_message(data)
            calls = loop.calls_to_run(message.get("tool_calls") or [])
            if not calls:
                _drop_calls(data, loop.tool.name)
                break
            self._next_round(normalized_usage(data.get("usage")))
            content = message.get("content")
            await loop.run(self.route.body, content if isinstance(content, str) else None, calls)
            data = await self._fetch(self.envelope.remaining())
        completion = self._completion(data)
        self.ttft_ms = (time.monotonic() - self.arrived) * 1000
        await self.events.final(completion.model_dump_json().encode())
        self.completed = True

    async def _fetch(self, remaining: float) -> Any:
        """One whole upstream answer, parsed."""
        upstream = self.worker.upstream
        request = await upstream.build(self.route.upstream, self._body(False), remaining, stream=False)
        content = await upstream.fetch(request)
        self.accepted = True
        try:
            return loads(content)
        except ValueError:
            raise UpstreamError("The upstream model sent an answer that is not JSON") from None

    def _completion(self, data: Any) -> ChatCompletion:
        raw_choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(raw_choices, list) or not raw_choices:
            raise UpstreamError("The upstream model sent an answer without choices")
        prefill = self.route.prefill or ""
        grounding = self._grounding()
        choices: list[Choice] = []
        try:
            for position, raw in enumerate(raw_choices):
                message = dict(raw.get("message") or {})
                message["role"] = "assistant"
                content = message.get("content")
                if isinstance(content, str):
                    self.completion_chars += len(content)
                if prefill and (content is None or isinstance(content, str)):
                    message["content"] = prefill + (content or "")
                refusal = message.get("refusal")
                if isinstance(refusal, str):
                    self.completion_chars += len(refusal)
                for name in ("annotations", "tool_calls"):  # null upstream: the seed's [] instead
                    if message.get(name) is None:
                        message.pop(name, None)
                if grounding and isinstance(message.get("content"), str):
                    cited = citation_annotations(message["content"], grounding)
                    if cited:
                        message["annotations"] = [*(message.get("annotations") or []), *cited]
                for call in message.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        self.completion_chars += len(str(function.get("arguments") or ""))
                choices.append(
                    Choice(
                        index=raw.get("index", position),
                        message=AssistantMessage.model_validate(message),
                        logprobs=raw.get("logprobs"),
                        finish_reason=raw.get("finish_reason") or "stop",
                    )
                )
        except (AttributeError, TypeError, ValueError):
            raise UpstreamError("The upstream model sent an answer in an unexpected shape") from None
        usage, context = self._priced(normalized_usage(data.get("usage")))
        return ChatCompletion(
            id=f"chatcmpl-{self.request_id}",
            created=self.created,
            model=self.route.response_model,
            choices=choices,
            usage=usage,
            service_tier=data.get("service_tier") or "default",
            system_fingerprint=data.get("system_fingerprint"),
            generation_context=context,
        )

    # ------------------------------------------------------------------ usage event
    def _account(self) -> None:
        """Hand the usage event to the background publisher (no I/O here)."""
        if not self.accepted:
            return  # the upstream never took the request: there is nothing to bill
        try:
            if self.usage is None:
                self._priced(None)  # a stream that broke: bill what was produced, estimated
            target = self.route.upstream
            status = "completed" if self.completed else ("cancelled" if self.cancel_reason else "failed")
            event = UsageEvent(
                request_id=self.request_id,
                source=SOURCES[self.route.purpose],
                tenant=self.envelope.tenant,
                key_id=self.envelope.key_id,
                gateway_id=self.route.gateway_id,
                upstream=target.id,
                upstream_kind=target.kind,
                model=target.model,
                lines=self.lines,
                metadata=self.envelope.request.metadata or {},
                status=status,
                started_at=datetime.fromtimestamp(self.envelope.received_at, UTC),
                latency_ms=round((time.monotonic() - self.arrived) * 1000, 3),
                ttft_ms=round(self.ttft_ms, 3) if self.ttft_ms is not None else None,
            )
            assert self.worker.usage is not None
            self.worker.usage.submit(event)
            if self.loop is not None and self.loop.lines:
                self.worker.usage.submit(
                    event.model_copy(
                        update={
                            "source": "retrieval",
                            "upstream": KNOWLEDGE_UPSTREAM,
                            "upstream_kind": "catalog",
                            "model": self.loop.tool.name,
                            "lines": merge_lines(self.loop.lines),
                            "ttft_ms": None,
                        }
                    )
                )
        except Exception:
            log.exception("could not account a request's usage", extra={"request_id": self.request_id})


def _choices_asked(body: dict[str, Any]) -> int:
    """How many choices the upstream was asked for (`n`, 1 when unset)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1


def _first_message(data: Any) -> dict[str, Any]:
    """The first choice's message of a whole answer ({} if it has none: `_completion` says why)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message if isinstance(message, dict) else {}


def _drop_calls(data: Any, name: str) -> None:
    """Remove the knowledge function's calls the loop did not run from an answer to the client."""
    for choice in data.get("choices") or () if isinstance(data, dict) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("tool_calls"), list):
            continue
        ours, theirs = split_calls(message["tool_calls"], name)
        if not ours:
            continue
        message["tool_calls"] = theirs or None
        if not theirs and choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "stop"
