"""One upstream attempt's timeouts: which values apply, and the clock that enforces them.

The values come from three levels (`aigw_contracts.Timeouts`): the gateway's `timeouts`, over the
upstream's, over the worker's settings; the request's deadline bounds them all. Each attempt (a
retry, a fallback, a tool loop's next round) gets its own clock.

Who enforces what: the connect timeout and a stream's idle gap are the transport's (one timer per
wait, only when it must wait). Time to first token and the total are one `asyncio.Timeout` per
attempt (`AttemptClock`), moved once, at the first token: no per-chunk cost. Only when the time to
first token is longer than the idle gap (a slow-thinking model) does the transport's read timeout
have to be the longer one, and the clock then also keeps the idle gap, moved at each read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aigw_contracts import RoutedCall, Timeouts
from aigw_contracts.errors import DeadlineExceeded

from .settings import WorkerSettings

_MIN = 0.001  # seconds: a timeout is never zero or negative (httpx reads 0 as "fail at once")


@dataclass(frozen=True, slots=True)
class Limits:
    """Seconds one attempt may take: connect, until the first token, between two reads, in all."""

    connect: float
    ttft: float
    idle: float
    total: float
    stream: bool

    @property
    def read(self) -> float:
        """The transport's read timeout: a stream's idle gap (at least the time to first token, which
        the first reads must be allowed); a whole answer arrives in one piece, so its total."""
        return max(self.ttft, self.idle) if self.stream else self.total

    @property
    def idle_on_clock(self) -> bool:
        """The transport's read timeout is longer than the idle gap: the clock keeps the gap."""
        return self.stream and self.idle < self.read

    def transport(self) -> dict[str, float]:
        """httpx's timeout dict (`Timeout.as_dict()`'s shape) for the transport."""
        return {"connect": self.connect, "read": self.read, "write": self.total, "pool": self.connect}


def limits_for(settings: WorkerSettings, route: RoutedCall | None, stream: bool, remaining: float) -> Limits:
    """The limits of an attempt on `route.upstream` with `remaining` seconds to the deadline."""
    configured = Timeouts()
    if route is not None:
        configured = (route.timeouts or configured).over(route.upstream.timeouts)
    total = max(_MIN, min(configured.total or settings.upstream_timeout, remaining))
    idle = min(configured.idle or settings.upstream_idle_timeout, total)
    ttft = configured.ttft or settings.upstream_ttft_timeout
    if ttft is None:
        ttft = idle if stream else total
        if route is not None and route.fallbacks:
            # Unset, with fallbacks behind: the idle gap, and at most this upstream's share of the
            # time left, so a hung upstream leaves its fallbacks time to answer (a whole answer
            # would otherwise wait its total, past the request's deadline).
            ttft = min(idle, remaining / (len(route.fallbacks) + 1))
    return Limits(
        connect=min(configured.connect or settings.upstream_connect_timeout, total),
        ttft=min(ttft, total),
        idle=idle,
        total=total,
        stream=stream,
    )


class AttemptClock:
    """An attempt's deadline on the event loop: first the time to first token, then the total.

    Use `scope` as `async with clock.scope:` around the attempt, call `first_token()` when the
    upstream's first token (a whole answer's headers) arrived and `read()` after each later read of
    a stream; on `TimeoutError` out of the scope, `error()` says which limit it was.
    """

    __slots__ = ("_end", "_loop", "limits", "scope", "started")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._loop = asyncio.get_running_loop()
        start = self._loop.time()
        self._end = start + limits.total
        self.started = False
        self.scope = asyncio.timeout_at(start + limits.ttft)

    def first_token(self) -> None:
        self.started = True
        self._move()

    def read(self) -> None:
        """A later read of a stream came (call it only when `limits.idle_on_clock`)."""
        self._move()

    def _move(self) -> None:
        when = self._end
        if self.limits.idle_on_clock:
            when = min(when, self._loop.time() + self.limits.idle)
        self.scope.reschedule(when)

    def expired(self) -> bool:
        return self.scope.expired()

    def error(self) -> DeadlineExceeded:
        limits = self.limits
        if not self.started:
            what = "token" if limits.stream else "response"
            return DeadlineExceeded(
                f"The upstream model sent no {what} within {limits.ttft:g} s (time to first token)"
            )
        if self._loop.time() < self._end - 0.001:
            return DeadlineExceeded(
                f"The upstream model stopped sending data for {limits.idle:g} s (idle timeout)"
            )
        return DeadlineExceeded(f"The upstream model did not finish within {limits.total:g} s")
