"""The worker's requests in flight: start, bound, cancel, and end them all on shutdown.

Each request runs as its own asyncio task, so a long stream never holds up the next request. The
NATS callback only parses the envelope and starts the task: it never waits, so a cancel or the next
request is never stuck behind a busy worker. At most `max_inflight` upstream calls run at once;
up to `max_queued` more wait for a slot (their deadline still counts), beyond that a request is
refused at once with a 503, which the SDKs retry (NATS then likely picks another worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Coroutine
from typing import Any

from aigw_contracts import CancelRequest, ChatEnvelope
from aigw_contracts.errors import GatewayError, InternalError, Unavailable, error_reply
from aigw_runtime.bus import Bus as RuntimeBus
from aigw_runtime.heartbeat import Heartbeats
from aigw_runtime.usage_publisher import UsageBus, UsagePublisher

from . import observe
from .board import CircuitBoard
from .bus import Bus
from .call import SHUTDOWN, Call, Events, cancel_error
from .circuits import Circuits
from .embed import answer as answer_embedding
from .settings import WorkerSettings
from .spend import SpendControl
from .upstream import Upstream

log = logging.getLogger("aigw.worker")

_EARLY_CANCELS = 10_000  # cancels remembered for requests not (yet) seen here


class Worker:
    def __init__(self, settings: WorkerSettings, upstream: Upstream | None = None) -> None:
        self.settings = settings
        self.upstream = upstream or Upstream(settings)
        self.bus: Bus | None = None
        self.heartbeats: Heartbeats | None = None
        self.usage: UsagePublisher | None = None
        self.spend: SpendControl | None = None
        self.calls: dict[str, Call] = {}
        self.accepting = False
        self._slots = asyncio.Semaphore(settings.max_inflight)
        self._capacity = settings.max_inflight + settings.max_queued
        # Cancels are broadcast to every worker; one may arrive before its request does (or for a
        # request another worker runs). Remembered briefly, so a request cancelled before it
        # started here is not started at all.
        self._early_cancels: OrderedDict[str, str] = OrderedDict()
        self._side_tasks: set[asyncio.Task[None]] = set()
        # Circuit breakers of the upstream deployments this worker calls (`circuits.py`), their
        # changes published for the management API (`board.py`).
        self.board = CircuitBoard(settings.worker_id)
        self.circuits = Circuits(
            settings.circuit_failures, settings.circuit_cooldown, on_change=self.board.changed
        )
        observe.watch_circuits(self.circuits.snapshot)

    async def start(self, bus: RuntimeBus, usage: UsageBus, spend: SpendControl | None = None) -> None:
        """Start publishing on `bus`, usage through `usage` (the stream exists: `app.py` made sure),
        holding and settling spend through `spend` (mirrored and watching already)."""
        self.bus = bus
        self.spend = spend
        self.heartbeats = Heartbeats(bus, self.settings.heartbeat_interval)
        self.usage = UsagePublisher(
            usage,
            max_in_flight=self.settings.usage_in_flight,
            retry_window=self.settings.usage_retry_window,
            linger=self.settings.usage_linger,
        )
        await self.usage.start()
        await self.board.start(bus.nc.jetstream())
        self.accepting = True

    # ------------------------------------------------------------------ requests
    def submit(self, raw: bytes) -> None:
        """A routed envelope arrived (called from the NATS callback: no waiting here)."""
        try:
            envelope = ChatEnvelope.routed(raw)
        except ValueError:
            log.warning("dropped a malformed envelope")  # no reply subject we can trust
            return
        request_id = envelope.request_id
        if envelope.route is None:
            self._reject(envelope, InternalError("The request reached an inference worker without a route"))
            return
        if request_id in self.calls:
            log.warning("dropped a duplicate envelope", extra={"request_id": request_id})
            return
        reason = self._early_cancels.pop(request_id, None)
        if reason is not None:
            self._reject(envelope, cancel_error(reason))
            return
        if not self.accepting:
            self._reject(envelope, Unavailable("The inference worker is shutting down; retry the request"))
            return
        if len(self.calls) >= self._capacity:
            self._reject(envelope, Unavailable("The inference workers are at capacity; retry the request"))
            return
        call = Call(self, envelope, envelope.route)
        task = asyncio.create_task(call.run(self._slots), name=f"aigw-call-{request_id}")
        call.task = task
        self.calls[request_id] = call
        reply = envelope.reply
        if self.heartbeats is not None:
            self.heartbeats.hold(reply)  # queued or running, the edge hears that we hold it
        task.add_done_callback(lambda _: self._ended(request_id, reply))

    def embed(self, raw: bytes, reply: str) -> None:
        """A routed embedding job arrived (`embed.py`): answered in a task of its own, within the
        worker's upstream call slots, and waited for at shutdown."""
        if self.bus is None or not reply:
            return
        if not self.accepting:
            payload, hdrs = error_reply(
                Unavailable("The inference worker is shutting down; retry the request")
            )
            self._side(self.bus.send_reply(reply, payload, hdrs))
            return
        self._side(self._embed(raw, reply))

    async def _embed(self, raw: bytes, reply: str) -> None:
        assert self.bus is not None
        async with self._slots:
            await answer_embedding(self, self.bus, raw, reply)

    def _side(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _ended(self, request_id: str, reply: str) -> None:
        self.calls.pop(request_id, None)
        if self.heartbeats is not None:
            self.heartbeats.release(reply)

    def cancel(self, raw: bytes) -> None:
        try:
            request = CancelRequest.model_validate_json(raw)
        except ValueError:
            log.warning("dropped a malformed cancel")
            return
        call = self.calls.get(request.request_id)
        if call is not None:
            call.cancel(request.reason)
            return
        self._early_cancels[request.request_id] = request.reason
        if len(self._early_cancels) > _EARLY_CANCELS:
            self._early_cancels.popitem(last=False)

    def _reject(self, envelope: ChatEnvelope, err: GatewayError) -> None:
        events = Events(self, envelope.reply, envelope.route)
        self._side(events.error(err))

    # ------------------------------------------------------------------ shutdown
    async def shutdown(self, grace: float) -> None:
        """Stop taking requests, let running ones finish within `grace`, end the rest with 503,
        then publish the usage events still queued. The caller unsubscribes first."""
        self.accepting = False
        tasks = [call.task for call in self.calls.values() if call.task is not None]
        if tasks:
            log.info("waiting for requests in flight", extra={"in_flight": len(tasks), "grace_s": grace})
            _, pending = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
            if pending:
                log.warning("ending requests still running at shutdown", extra={"count": len(pending)})
                for call in list(self.calls.values()):
                    call.cancel(SHUTDOWN)
                await asyncio.wait(pending, timeout=5.0)
        if self._side_tasks:
            await asyncio.wait(list(self._side_tasks), timeout=2.0)
        if self.usage is not None:
            await self.usage.close(within=10.0)
        if self.spend is not None:
            await self.spend.close(within=5.0)
        if self.heartbeats is not None:
            await self.heartbeats.close()
        await self.board.close()
        await self.upstream.aclose()
