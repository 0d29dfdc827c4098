"""One chat completion on this worker: envelope in, numbered events out, then its usage event.

Every path ends with exactly one `final` or `error` event (a client must never wait for nothing):
upstream faults, the deadline, a cancel from the edge, a shutdown and unexpected exceptions all
end in an error event. A whole answer's usage is stored by the usage stream before its final event
goes out (`_bill_first`); any other ending's usage follows, off the response path.

This module holds the lifecycle; each part of the answer lives in a module of its own: the
gateway's fallback chain (`fallback.py`), a streamed answer (`relay.py`), a whole answer
(`complete.py`), the knowledge tool's rounds (`toolloop.py`), usage (`accounting.py`) and the
events (`events.py`), all over one `state.CallState`.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any

from opentelemetry.trace import Span

from aigw_contracts import ChatEnvelope, RoutedCall, UsageEvent
from aigw_contracts.errors import DeadlineExceeded, GatewayError, InternalError, Unavailable
from aigw_runtime import telemetry

from . import observe
from .accounting import Status
from .complete import complete_answer
from .context import WorkerContext
from .events import Events, first_headers
from .fallback import answer_with_fallbacks
from .relay import relay_answer
from .state import CallState

__all__ = ["SHUTDOWN", "Call", "ClientCancelled", "Events", "cancel_error", "first_headers"]

log = logging.getLogger("aigw.worker.call")

SHUTDOWN = "shutdown"
USAGE_ACK_WAIT = 5.0  # seconds a final event waits at most for its usage to be stored


class ClientCancelled(GatewayError):
    """The edge cancelled the request (its client went away); 499 as in nginx's 'client closed'."""

    status, type, code = 499, "invalid_request_error", "request_cancelled"


def cancel_error(reason: str) -> GatewayError:
    if reason == SHUTDOWN:
        return Unavailable("The inference worker is shutting down; retry the request")
    if reason in ("deadline_exceeded", "stream_idle"):
        return DeadlineExceeded(f"The request was stopped by the gateway ({reason})")
    return ClientCancelled(f"The request was cancelled ({reason})")


class Call(CallState):
    """A request's run: bounded by the worker's slots and its deadline, cancellable, accounted."""

    def __init__(self, worker: WorkerContext, envelope: ChatEnvelope, route: RoutedCall) -> None:
        super().__init__(worker, envelope, route)
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.accounted = False  # the usage events were handed over (or stored) already
        self.billed: list[UsageEvent] | None = None  # the usage events of this call, once built
        self.hold_id = f"{self.request_id}:{route.purpose}"
        self.held: list[Any] = []  # the spend accounts holding this call's most (`spend.py`)
        self.reserved = False
        self.events.before_final = self._bill_first

    def cancel(self, reason: str) -> None:
        if self.task is None or self.task.done() or self.events.ended:
            return
        self.cancel_reason = reason
        if self.events.busy:
            self.events.cancel_pending = True  # stop right after the event being published
        else:
            self.task.cancel()

    async def run(self, slots: asyncio.Semaphore) -> None:
        if not telemetry.traced(self.envelope.trace):  # no span code at all (`aigw_runtime.telemetry`)
            await self._run(slots)
            self._observe(None)
            return
        route = self.route
        attributes = {
            "aigw.tenant": self.envelope.tenant,
            "aigw.gateway": route.gateway_slug or "",
            "aigw.upstream": route.upstream.id,
            "aigw.purpose": route.purpose,
            "aigw.stream": self.stream,
        }
        with telemetry.request_span("worker", self.envelope.trace, **attributes) as span:
            await self._run(slots)
            self._observe(span)

    def _observe(self, span: Span | None) -> None:
        """The request's tokens and cost as metrics and, with tracing, as its span's attributes."""
        ledger = self.ledger
        usage = ledger.usage
        if not self.accepted or usage is None:
            return
        cost = sum((line.amount for line in ledger.lines), Decimal(0))
        gateway, model = self.route.gateway_slug or "", self.route.upstream.id
        observe.count_usage(gateway, model, usage, cost)
        if span is not None:
            span.set_attributes(
                {
                    "aigw.answered_by": model,
                    "aigw.tokens.input": usage.prompt_tokens,
                    "aigw.tokens.cached_input": usage.cached_tokens,
                    "aigw.tokens.output": usage.completion_tokens,
                    "aigw.cost_usd": float(cost),
                    "aigw.completed": self.completed,
                }
            )

    async def _run(self, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                remaining = self.envelope.remaining()
                if remaining <= 0:
                    raise DeadlineExceeded("The request's deadline passed before a worker could start it")
                try:
                    async with asyncio.timeout(remaining):
                        spend = self.worker.spend
                        if spend is not None:
                            self.held = await spend.reserve(self.envelope, self.route, self.hold_id)
                            self.reserved = True
                        await self._answer(self.envelope.remaining())
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
            spend = self.worker.spend
            if spend is not None and self.reserved:
                spend.settle(self.envelope, self.route, self.hold_id, self.held, self.billed)

    async def _answer(self, remaining: float) -> None:
        """The upstream's answer, or a fallback's (`fallback.py` says when)."""

        async def attempt(left: float) -> None:
            if self.stream:
                await relay_answer(self, left)
            else:
                await complete_answer(self, left)

        await answer_with_fallbacks(self, attempt, remaining)

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

    async def _bill_first(self) -> None:
        """The answer is whole: its usage is stored by the usage stream before the client can get
        its last byte, so a worker killed right after answering has lost no bill. If the stream
        does not ack in time (NATS is down, so the final event could not go out either), the
        publisher keeps retrying in the background and the answer goes on."""
        self.completed = True
        if not self.accepted or self.worker.usage is None:
            return
        self.accounted = True
        try:
            events = self.ledger.usage_events(self.envelope, "completed", self.arrived, self.ttft_ms)
            self.billed = events
        except Exception:
            log.exception("could not account a request's usage", extra={"request_id": self.request_id})
            return
        within = min(USAGE_ACK_WAIT, max(self.envelope.remaining(), 0.5))
        if not await self.worker.usage.durable(events, within, self.envelope.trace.get("traceparent")):
            log.warning(
                "usage not acknowledged before the answer; still being published",
                extra={"request_id": self.request_id},
            )

    def _account(self) -> None:
        """Hand the usage events to the background publisher (no I/O here)."""
        if not self.accepted or self.accounted:
            return  # the upstream never took the request (nothing to bill), or it is billed
        try:
            status: Status = (
                "completed" if self.completed else ("cancelled" if self.cancel_reason else "failed")
            )
            events = self.ledger.usage_events(self.envelope, status, self.arrived, self.ttft_ms)
            self.billed = events
            assert self.worker.usage is not None
            for event in events:
                self.worker.usage.submit(event, self.envelope.trace.get("traceparent"))
        except Exception:
            log.exception("could not account a request's usage", extra={"request_id": self.request_id})
