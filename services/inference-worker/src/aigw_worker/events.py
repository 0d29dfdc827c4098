"""One request's events on its reply subject: numbered from 0 with no gaps, ending once.

Every stream of events ends with exactly one `final` or `error` event (core NATS is at-most-once:
the edge must be told that nothing more comes); the first event also carries the headers that say
what the gateway did (parameters sent, gateway slug, routed complexity, the fallback that answered).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aigw_contracts import RoutedCall, headers
from aigw_contracts.errors import GatewayError, PayloadTooLarge, UpstreamError
from aigw_contracts.events import EventKind, error_event, event_headers

from .context import WorkerContext


def first_headers(route: RoutedCall | None) -> dict[str, str]:
    """Headers only a request's first event carries: what the gateway did, for the client to see."""
    if route is None:
        return {}
    extra = {
        headers.PARAMS: json.dumps(route.params_used, separators=(",", ":")),
        headers.UPSTREAM: route.upstream.id,
    }
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

    __slots__ = (
        "_first",
        "before_final",
        "bus",
        "busy",
        "cancel_pending",
        "ended",
        "seq",
        "subject",
        "timing",
    )

    def __init__(self, worker: WorkerContext, subject: str, route: RoutedCall | None) -> None:
        assert worker.bus is not None
        self.bus = worker.bus
        self.subject = subject
        self.seq = 0
        self.ended = False
        self.busy = False
        self.cancel_pending = False
        self._first = first_headers(route)
        # Awaited before the final event goes out (the call stores its usage durably there).
        self.before_final: Callable[[], Awaitable[None]] | None = None
        # The stage timings for the first event (`headers.TIMING`); True: that event is the final.
        self.timing: Callable[[bool], str] | None = None

    def _headers(self, kind: EventKind) -> dict[str, str]:
        hdrs = event_headers(kind, self.seq)
        if self.seq == 0:
            self._first_of(hdrs, kind is EventKind.FINAL)
        self.seq += 1
        return hdrs

    def _first_of(self, hdrs: dict[str, str], final: bool) -> None:
        hdrs.update(self._first)
        if self.timing is not None:
            timing = self.timing(final)
            if timing:
                hdrs[headers.TIMING] = timing

    async def _publish(self, payload: bytes, hdrs: dict[str, str]) -> None:
        self.busy = True
        try:
            await self.bus.publish(self.subject, payload, hdrs)
        finally:
            self.busy = False

    def first_header(self, name: str, value: str) -> None:
        """A header for the request's first event (before it is sent)."""
        self._first[name] = value

    async def delta(self, payload: bytes) -> None:
        await self._send(payload, EventKind.DELTA)
        if self.cancel_pending:
            self.cancel_pending = False
            raise asyncio.CancelledError

    async def final(self, payload: bytes) -> None:
        if self.before_final is not None:
            await self.before_final()
        await self._send(payload, EventKind.FINAL)
        self.ended = True

    async def _send(self, payload: bytes, kind: EventKind) -> None:
        """Publish a delta or the final answer; one the bus cannot carry (too large, no connection)
        ends the request with that error under the same number, so the client learns at once."""
        try:
            await self._publish(payload, self._headers(kind))
        except GatewayError as err:
            self.seq -= 1  # that number never went out
            if isinstance(err, PayloadTooLarge):  # the answer's size, not the client's request
                err = UpstreamError(
                    f"The answer ({len(payload)} bytes) is larger than the gateway's message bus "
                    "carries; ask for a shorter answer (max_tokens) or stream it.",
                    code="response_too_large",
                )
            await self.error(err)
            raise err from None

    async def error(self, err: GatewayError) -> None:
        if self.ended:
            return
        self.ended = True
        hdrs, payload = error_event(err, self.seq)
        if self.seq == 0:
            self._first_of(hdrs, False)
        self.seq += 1
        await self._publish(payload, hdrs)
