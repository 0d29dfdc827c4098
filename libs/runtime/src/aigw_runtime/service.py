"""A NATS service: a table of subject → handler, plus start-up, readiness, signals and drain.

Router, inference worker, retrieval and metering are each built as one `Service`; production runs
it with `serve`, tests run the very same object in-process against a real nats-server (`start` /
`stop`), so no production module knows whether it is under test.

The life of a service:
1. `start`: connect (retrying while NATS comes up), run the `on_start` hooks (load configuration,
   declare streams, warm models: nothing is subscribed yet, so no message meets a half-started
   service), subscribe every route in table order, flush (the server knows the subscriptions before
   the service says it is ready);
2. serve: each message goes to its route's handler; a handler that raises is logged and that message
   alone is lost, never the subscription. `spawn` routes run each message as a task of its own, for
   handlers that wait on I/O (an embedding, an upstream);
3. `stop` (SIGTERM/SIGINT under `serve`): unsubscribe the routes that take new work (queue groups:
   NATS then hands it to the other replicas), let running work finish within the grace period, run
   the `on_stop` hooks, drain the connection (pending publishes flushed), stop the health server.

Metrics (`GET /metrics` on the same port) are Prometheus' (`metrics.py`).
Readiness (`GET /readyz` on the health port) is true once started, while connected to NATS and
while every check a service adds holds (its store is up, its config watch is current).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aigw_contracts import errors

from . import metrics
from .bus import Bus, settle
from .health import HealthServer
from .logs import log_ready
from .telemetry import setup as setup_tracing
from .telemetry import tracing

log = logging.getLogger("aigw.service")

Handler = Callable[[Msg], Coroutine[Any, Any, None]]
Replier = Callable[[bytes], Coroutine[Any, Any, tuple[bytes, dict[str, str] | None]]]
Hook = Callable[[], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Route:
    """One subscription of a service.

    `queue`: the queue group (one replica gets each message); empty: every replica gets every one.
    `spawn`: run each message as its own task instead of inline in the subscription's reader.
    `takes_work`: unsubscribed first on shutdown, so new work goes elsewhere; routes that must keep
    flowing until the end (cancels for requests still running here) say False.
    """

    subject: str
    handler: Handler
    queue: str = ""
    spawn: bool = False
    takes_work: bool = True


def replying(replier: Replier, bus: Bus, what: str) -> Handler:
    """A handler answering request-reply messages: `replier(data)` → (payload, headers); a raised
    `GatewayError` or a bug becomes an error reply (`Aigw-Status`), which `bus.request` reads back."""

    async def handle(msg: Msg) -> None:
        try:
            payload, hdrs = await replier(msg.data)
        except errors.GatewayError as err:
            payload, hdrs = errors.error_reply(err)
        except Exception:
            log.exception("request failed", extra={"subject": msg.subject, "what": what})
            payload, hdrs = errors.error_reply(
                errors.InternalError(f"The {what} failed; it has been logged.")
            )
        if msg.reply:
            await bus.send_reply(msg.reply, payload, hdrs)

    return handle


class Service:
    def __init__(
        self,
        name: str,
        instance: str,
        nats_url: str,
        *,
        health_host: str = "127.0.0.1",
        health_port: int | None = None,
        shutdown_grace: float = 10.0,
    ) -> None:
        self.name = name
        self.instance = instance
        self.bus = Bus(nats_url, f"aigw-{name}-{instance}")
        self.routes: list[Route] = []
        self.on_start: list[Hook] = []  # after connecting, before subscribing
        self.on_stop: list[Hook] = []  # after new work stopped and running work finished (or grace)
        self.checks: dict[str, Callable[[], bool]] = {}  # readiness, besides "started and connected"
        self.ready_fields: dict[str, Any] = {}  # what the ready log line says
        self.details: Callable[[], dict[str, Any]] | None = None  # the service's own health fields
        self.shutdown_grace = shutdown_grace
        self.started = False
        self.tasks: set[asyncio.Task[Any]] = set()
        self._subs: list[tuple[Route, Subscription]] = []
        self._health = (
            HealthServer(health_host, health_port, self.ready, self.snapshot)
            if health_port is not None
            else None
        )
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ table
    def route(
        self,
        subject: str,
        handler: Handler,
        *,
        queue: str = "",
        spawn: bool = False,
        takes_work: bool = True,
    ) -> None:
        self.routes.append(Route(subject, handler, queue, spawn, takes_work))

    def reply_route(self, subject: str, replier: Replier, what: str, *, queue: str = "") -> None:
        """A request-reply subject; each request runs as its own task."""
        self.route(subject, replying(replier, self.bus, what), queue=queue, spawn=True)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run `coro` as a task the service waits for on shutdown; its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a task failed", exc_info=task.exception(), extra={"task": task.get_name()})

    # ------------------------------------------------------------------ health
    @property
    def health_port(self) -> int | None:
        return self._health.port if self._health is not None else None

    def ready(self) -> bool:
        if not (self.started and self.bus.connected) or self._stopping.is_set():
            return False
        return all(check() for check in self.checks.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "service": self.name,
            "instance": self.instance,
            "started": self.started,
            "nats_connected": self.bus.connected,
            "checks": {name: check() for name, check in self.checks.items()},
            "tasks": len(self.tasks),
            **(self.details() if self.details is not None else {}),
        }

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        metrics.watch_connection(lambda: self.bus.connected)
        if self._health is not None:
            await self._health.start()
        await self.bus.connect()
        for hook in self.on_start:
            await hook()
        nc = self.bus.nc
        for route in self.routes:
            sub = await nc.subscribe(route.subject, queue=route.queue, cb=self._callback(route))
            self._subs.append((route, sub))
        await settle(nc)
        self.started = True

    def _callback(self, route: Route) -> Handler:
        handler = route.handler
        if route.spawn:

            async def spawn(msg: Msg) -> None:
                self.spawn(handler(msg), name=f"aigw-{self.name}-{route.subject}")

            return spawn

        async def inline(msg: Msg) -> None:
            try:
                await handler(msg)
            except Exception:
                log.exception("a message handler failed", extra={"subject": msg.subject})

        return inline

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking work, let running work finish within `grace` seconds, then close."""
        grace = self.shutdown_grace if grace is None else grace
        self._stopping.set()
        for route, sub in self._subs:
            if route.takes_work:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if self.tasks:
            _, pending = await asyncio.wait(list(self.tasks), timeout=grace or None)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for hook in self.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("a shutdown step failed")
        await self.bus.close()
        if self._health is not None:
            await self._health.stop()
        self.started = False

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Start, say ready, serve until SIGTERM/SIGINT (or `request_stop`), then stop gracefully.
        Traces are set up here, once per process, when the `OTEL_*` variables ask (`telemetry`)."""
        setup_tracing(self.name, self.instance)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            await self.start()
            log_ready(**{f"{self.name}_id": self.instance, **self.ready_fields}, health_port=self.health_port)
            await self._stopping.wait()
        finally:
            await self.stop()
            tracing.shutdown()  # the last spans, exported before the process exits


def serve(service: Service) -> None:
    """Run `service` until a signal stops it (uvloop when installed: measurably cheaper per message)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(service.run())
    else:
        uvloop.run(service.run())
