"""The edge's side of NATS: one connection, one reply subscription, one inbox per request.

Raw nats-py rather than a framework, because every streamed token passes through here. Even raw
nats-py costs more per message than the rest of the relay together: it builds a `Msg`, parses
headers with a general parser, queues the message for the subscription's task, which then calls
the callback. So the reply subscription takes a shorter way: `_EdgeClient` hands messages for its
subscription id straight to `_deliver` (header block split, dict lookup, deque append): the edge's
CPU per relayed delta went from ≈16 µs to ≈9.5 µs (bench/edge.py). That hooks
nats-py's `_process_msg`, a private method: if it is missing or the subscription has no id, the
bus falls back to an ordinary callback, which gives the same events, only slower (the tests cover
both). Payloads are never parsed here: they are the client's JSON, relayed as bytes.

That hook runs inside nats-py's read loop, which ends at the first exception it sees: one bad
message would leave the connection up but deaf, every request timing out. So the hook contains
its failures per message (logged, counted in `Bus.dropped`, the message dropped), and readiness
(`Bus.ready`) also checks that nats-py's reader is still running, so a balancer stops sending
traffic to an edge that can no longer hear answers, whatever stopped it.

Timeouts are not timers per request or per token: a sweeper wakes every `TICK` seconds and marks
inboxes whose deadline passed while they were empty. So the per-token path schedules nothing, and
a deadline fires at most `TICK` late. The same sweep ends requests whose holder went quiet: every
service holding a request sends an `alive` heartbeat each second (`aigw_runtime.heartbeat`), so a
killed worker or router is noticed within `holder_timeout` seconds, not at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Callable
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from aigw_contracts import CancelRequest, headers, subjects
from aigw_contracts.errors import Unavailable
from aigw_contracts.events import EventKind
from aigw_contracts.messages import ModelsQuery
from aigw_runtime.bus import Bus as RuntimeBus
from aigw_runtime.bus import request, settle

from .settings import EdgeSettings

log = logging.getLogger("aigw.edge.bus")

TICK: Final = 0.05  # seconds between deadline sweeps: how late a timeout may fire


class Marker:
    """Something that happened to a request other than an event from NATS."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


TIMED_OUT: Final = Marker("timed_out")  # the inbox stayed empty past its deadline
DISCONNECTED: Final = Marker("disconnected")  # the HTTP client went away
SHUTDOWN: Final = Marker("shutdown")  # the edge is closing its NATS connection
HOLDER_LOST: Final = Marker("holder_lost")  # no event nor heartbeat from the request's holder in time
OVERFLOW: Final = Marker("overflow")  # the client reads slower than the answer comes: buffer full
_ALIVE = EventKind.ALIVE.value


class Event:
    """One stream event: its NATS headers and its payload (the client's JSON, untouched)."""

    __slots__ = ("data", "headers")

    def __init__(self, headers: dict[str, str], data: bytes) -> None:
        self.headers = headers
        self.data = data


Item = Event | Marker


def parse_headers(raw: bytes | None) -> dict[str, str]:
    """A NATS header block (`NATS/1.0[ status]\r\nName: value\r\n…`) as a dict; an inline
    status (nats-server's 503 "no responders") becomes `Status`, as nats-py reports it."""
    if not raw:
        return {}
    head, _, rest = raw.partition(b"\r\n")
    out: dict[str, str] = {}
    if len(head) > 9:
        status = head[9:12]
        if status.isdigit():
            out[headers.NATS_STATUS] = status.decode()
    for line in rest.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return out


def _can_hook() -> bool:
    """Whether this nats-py has the private method `_EdgeClient` overrides, with the same arguments."""
    method = vars(NATS).get("_process_msg")
    if method is None:
        return False
    return list(inspect.signature(method).parameters) == [
        "self",
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]


class _EdgeClient(NATS):
    """A nats-py client that delivers one subscription's messages without the generic machinery."""

    def __init__(self) -> None:
        super().__init__()
        self.fast_sid: int | None = None
        self.fast_sink: Callable[[bytes, bytes | None, bytes], None] | None = None
        self.fast_failures = 0  # messages the sink raised on (and that were dropped)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        sink = self.fast_sink
        if sid == self.fast_sid and sink is not None:
            stats = self.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            try:
                sink(subject, headers, data)
            except Exception:
                # Raising here would end nats-py's read loop (see the module doc): drop this one.
                self.fast_failures += 1
                log.exception(
                    "dropped a reply event the edge could not deliver",
                    extra={"subject": subject.decode("utf-8", "replace"), "dropped": self.fast_failures},
                )
            return
        await super()._process_msg(sid, subject, reply, data, headers)

    @property
    def reading(self) -> bool:
        """Whether nats-py's read loop runs (`_reading_task`, private: if a later nats-py renames
        it, this says True and readiness rests on `is_connected` alone, as before)."""
        task = getattr(self, "_reading_task", None)
        return not isinstance(task, asyncio.Task) or not task.done()


class Inbox:
    """A request's events, in arrival order. Single consumer; cheaper than an asyncio.Queue."""

    __slots__ = ("_items", "_waiter", "alive_until", "deadline", "queued")

    def __init__(self, deadline: float, alive_until: float = float("inf")) -> None:
        self._items: deque[Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.queued = 0  # payload bytes waiting for the reader (bounded: `Bus.max_buffered`)
        self.deadline = deadline  # loop time; the sweeper marks TIMED_OUT past it while empty
        # Loop time by which the request's holder must be heard from (an event or a heartbeat);
        # the sweeper marks HOLDER_LOST past it while empty.
        self.alive_until = alive_until

    def put(self, item: Item) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def __bool__(self) -> bool:
        return bool(self._items)

    async def get(self) -> Item:
        if not self._items:
            await self._wait()
        item = self._items.popleft()
        if isinstance(item, Event):
            self.queued -= len(item.data)
        return item

    async def get_all(self) -> list[Item]:
        """Everything queued, waiting for at least one item: lets a stream write a burst at once."""
        if not self._items:
            await self._wait()
        items = list(self._items)
        self._items.clear()
        if self.queued > 0:  # a cut reader (-1) stays cut: nothing more is kept for it
            self.queued = 0
        return items

    async def _wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None


class Bus:
    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.edge_id = settings.edge_id
        self.conn = RuntimeBus(settings.nats_url, f"aigw-edge-{self.edge_id}", client=_EdgeClient)
        self.nc: _EdgeClient | None = None
        self.fast_path = False  # whether replies take `_EdgeClient`'s shortcut (see the module doc)
        self._inboxes: dict[str, Inbox] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.holder_timeout = settings.holder_timeout
        self.max_buffered = settings.stream_buffer_bytes
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop  # set by `start`, before any event can arrive
        # Called after each reconnect (the config watch re-opens itself there), in order.
        self.on_reconnect = self.conn.on_reconnect

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        # The runtime's connection (retries while NATS starts, reconnects forever: an edge outlives
        # NATS restarts and /readyz tells the balancer), with the client class of the fast path.
        self._loop = asyncio.get_running_loop()  # read per relayed event: looked up once here
        await self.conn.connect()
        nc = self.conn.nc
        assert isinstance(nc, _EdgeClient)
        self.nc = nc
        sub = await self.nc.subscribe(subjects.reply_wildcard(self.edge_id), cb=self._dispatch)
        sid = getattr(sub, "_id", None)
        if isinstance(sid, int) and _can_hook() and self.settings.nats_fast_path:
            self.nc.fast_sid, self.nc.fast_sink = sid, self._deliver
            self.fast_path = True
        await settle(self.nc)  # the server knows the subscription before anything is published
        self._sweeper = asyncio.create_task(self._sweep(), name="aigw-edge-deadlines")

    async def close(self) -> None:
        self.conn.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for inbox in self._inboxes.values():
            inbox.put(SHUTDOWN)
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.drain()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def ready(self) -> str | None:
        """None when requests can be served; otherwise why not (for `/readyz`). Connected is not
        enough: a connection whose reader stopped sends requests but never hears the answers."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            return "The gateway is not connected to its message bus"
        if not nc.reading:
            return "The gateway's message bus reader has stopped"
        return None

    @property
    def dropped(self) -> int:
        """Reply events dropped because delivering them failed (each one logged)."""
        return self.nc.fast_failures if self.nc is not None else 0

    @property
    def max_payload(self) -> int:
        assert self.nc is not None
        return self.nc.max_payload

    @property
    def in_flight(self) -> int:
        return len(self._inboxes)

    # ------------------------------------------------------------------ chat requests
    def open(self, request_id: str, deadline: float) -> Inbox:
        inbox = Inbox(deadline, asyncio.get_running_loop().time() + self.holder_timeout)
        self._inboxes[request_id] = inbox
        return inbox

    def drop(self, request_id: str) -> None:
        self._inboxes.pop(request_id, None)

    def _deliver(self, subject: bytes, raw_headers: bytes | None, data: bytes) -> None:
        # Events for a request no longer waiting (timed out, client gone) are late: drop them.
        request_id = subjects.request_id_from_reply(subject.decode())
        inbox = self._inboxes.get(request_id)
        if inbox is not None:
            self._arrived(request_id, inbox, Event(parse_headers(raw_headers), data))

    def _arrived(self, request_id: str, inbox: Inbox, event: Event) -> None:
        """Any word from the holder keeps the request alive; heartbeats stop here."""
        inbox.alive_until = self._loop.time() + self.holder_timeout
        if event.headers.get(headers.EVENT) == _ALIVE or inbox.queued < 0:
            return  # a heartbeat, or the reader was already cut off (see below)
        size = len(event.data)
        if inbox.queued + size > self.max_buffered:
            # The client reads slower than the answer arrives (its socket is full, so the relay
            # waits in `send`): rather than hold the rest in memory, the stream is cut with an error.
            inbox.queued = -1
            inbox.put(OVERFLOW)
            # The relay may be stuck in `send` until the client reads: stop the worker now.
            task = asyncio.get_running_loop().create_task(self.cancel(request_id, "slow_reader"))
            self._side_tasks.add(task)
            task.add_done_callback(self._side_tasks.discard)
            return
        inbox.queued += size
        inbox.put(event)

    async def _dispatch(self, msg: Msg) -> None:
        """The ordinary callback, used when the fast path is unavailable."""
        request_id = subjects.request_id_from_reply(msg.subject)
        inbox = self._inboxes.get(request_id)
        if inbox is not None:
            self._arrived(request_id, inbox, Event(msg.headers or {}, msg.data))

    async def publish_chat(self, envelope: bytes, reply: str, trace: dict[str, str] | None = None) -> None:
        """Publish an envelope to the routers; `trace`: its trace context, as NATS headers too."""
        nc = self.nc
        if nc is None or not nc.is_connected:
            raise Unavailable("The gateway is not connected to its message bus; try again shortly")
        try:
            await nc.publish(subjects.ROUTER_CHAT, envelope, reply=reply, headers=trace)
        except NatsError as err:  # closed, draining, reconnect buffer full…
            raise Unavailable("The gateway could not reach its message bus; try again shortly") from err

    async def cancel(self, request_id: str, reason: str) -> None:
        """Tell whichever worker runs `request_id` to stop: nobody will read its answer."""
        if self.nc is None or not self.nc.is_connected:
            return
        try:
            payload = CancelRequest(request_id=request_id, reason=reason).model_dump_json().encode()
            await self.nc.publish(subjects.CHAT_CANCEL, payload)
        except Exception:
            log.warning("could not publish a cancel", extra={"request_id": request_id}, exc_info=True)

    # ------------------------------------------------------------------ models
    async def models(self, query: ModelsQuery) -> bytes:
        return await self.ask(
            subjects.ROUTER_MODELS, query.model_dump_json().encode(), "router", "list the models"
        )

    async def ask(self, subject: str, payload: bytes, service: str, doing: str) -> bytes:
        """A request-reply to another service, errors mapped once (`aigw_runtime.bus.request`)."""
        nc = self.nc
        if nc is None:
            raise Unavailable("The gateway is not connected to its message bus; try again shortly")
        reply = await request(nc, subject, payload, self.settings.models_timeout, service, doing)
        return reply.data

    # ------------------------------------------------------------------ deadlines
    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            for inbox in self._inboxes.values():
                # An inbox holding events is not idle: its reader is behind (a slow client).
                if inbox:
                    continue
                if inbox.deadline <= now:
                    inbox.deadline = inbox.alive_until = float("inf")
                    inbox.put(TIMED_OUT)
                elif inbox.alive_until <= now:
                    inbox.deadline = inbox.alive_until = float("inf")
                    inbox.put(HOLDER_LOST)
