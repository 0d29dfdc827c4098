"""Heartbeats: "the process holding this request is alive", on the request's reply subject.

Core NATS says nothing when a subscriber dies: an edge waiting for a request whose worker was
killed would only learn it at the request's deadline (minutes) or, mid-stream, at the idle timeout.
So whoever holds a request — the worker from the moment it takes it, the router while it asks the
complexity classifier, retrieval while it grounds — tells the edge every `interval` seconds that it
still does, with one `alive` event (no sequence number, no payload). The edge ends a request whose
holder went quiet for its `AIGW_HOLDER_TIMEOUT` (a few intervals) with a retryable 503, or with an
error chunk if part of a stream was already sent.

One task per process sends them for every request held, so the cost is one small message per
request per interval, and nothing per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from aigw_contracts import headers
from aigw_contracts.events import EventKind

from .bus import Bus

log = logging.getLogger("aigw.heartbeat")

INTERVAL: Final = 1.0  # seconds between heartbeats; the edge's holder timeout is a few of these
ALIVE_HEADERS: Final = {headers.EVENT: EventKind.ALIVE.value}


class Heartbeats:
    def __init__(self, bus: Bus, interval: float = INTERVAL) -> None:
        self.bus = bus
        self.interval = interval
        self._held: dict[str, int] = {}  # reply subject -> holds (a request may be held twice)
        self._task: asyncio.Task[None] | None = None

    def hold(self, reply: str) -> None:
        """Start telling `reply`'s edge that its request is alive here."""
        if reply:
            self._held[reply] = self._held.get(reply, 0) + 1
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._beat(), name="aigw-heartbeats")

    def release(self, reply: str) -> None:
        count = self._held.get(reply, 0) - 1
        if count > 0:
            self._held[reply] = count
        else:
            self._held.pop(reply, None)

    @property
    def held(self) -> int:
        return len(self._held)

    async def _beat(self) -> None:
        nc = self.bus.nc
        while True:
            await asyncio.sleep(self.interval)
            if not nc.is_connected:
                continue
            for reply in list(self._held):
                try:
                    await nc.publish(reply, b"", headers=ALIVE_HEADERS)
                except Exception as err:  # the next beat tries again; the edge tolerates a few misses
                    log.warning("could not send a heartbeat", extra={"error": repr(err)})
                    break

    async def close(self) -> None:
        self._held.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
