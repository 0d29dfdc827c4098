"""Usage events, published to JetStream off the response path, acks tracked without waiting on them.

Shared by every producer of usage (the inference workers, the retrieval service): the delivery
guarantees of billing data are one mechanism, not one per service. `JetStreamUsageBus` is the
production `UsageBus`; a service's tests may plug in another.

A request hands its `UsageEvent` over with `submit` (no await, no I/O) after its last stream event,
so billing never delays an answer. One sender task serializes each event once and publishes it
with `Nats-Msg-Id = event.msg_id()` and a reply subject carrying a token; the stream's ack (or
error) comes back on one subscription (`UsageBus.start_usage_acks`) and settles the event by its
token. A publish that fails, is refused by the stream, or gets no ack within `attempt_timeout` is
published again after an exponential backoff, for up to `retry_window` seconds; an event that still
cannot be published is logged in full at ERROR (the last place it can be recovered from).

Why not wait for each ack (as `js.publish` does): that is a request-reply round trip per event,
which costs a fresh random inbox token (an `os.urandom` syscall), a future, a timer, and a task
parked until the ack comes back, per event; and it caps the rate at (publisher tasks / round
trip). Here the acks still arrive one per event, but nothing waits on them: an ack is a dict lookup
in a subscription callback, and timeouts are found by one sweeper for all events (events in flight
are kept in send order, which is also deadline order, so it only looks at the oldest).

Why this keeps the guarantees:
* at least once: an event leaves this publisher only on the stream's positive ack (stored or
  duplicate), or after `retry_window` as logged-lost, as before;
* no double counting: every attempt carries the same `Nats-Msg-Id`, and `retry_window` (100 s)
  stays inside the stream's duplicate window (120 s), so when an ack was lost rather than the
  publish, the retry is dropped by the server (and metering deduplicates again on its keys);
* bounded: at most `max_in_flight` publishes await their ack; beyond that the sender waits, and
  events queue in memory (as they did before), so a stream that stops acking is not flooded;
* order between events is not kept, and never was needed: each event stands alone.

(nats-py's own `publish_async` was not used: it draws a random token per publish, wraps the
semaphore wait in `wait_for` (a task per publish), and never times out an ack that does not come.)

Events are sent in batches: once one is submitted, the sender waits `linger` seconds (20 ms by
default) and then publishes everything queued by then in one go. nats-py writes those publishes in
one socket write, nats-server stores them from one read and answers the acks together, so at a
modest request rate each event costs a fraction of the syscalls and process wake-ups it would alone
(on a core shared with the request path, that was about a seventh of a request's latency). Billing
data reaches the stream 20 ms later; nothing waits for it.

The same publisher carries the edge's request log (`aigw_contracts.requestlog.RequestLogEvent`):
any event that names its subject, stream and `Nats-Msg-Id` (`StreamEvent`) travels this way.

On shutdown `close` waits for everything queued and in flight to settle, within a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, Header, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from aigw_contracts import streams

log = logging.getLogger("aigw.usage")

NATS_MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"  # W3C trace context, as OpenTelemetry's propagators name it
NATS_EXPECTED_STREAM = "Nats-Expected-Stream"


class StreamEvent(Protocol):
    """An event published to a JetStream stream with deduplication: a usage event, a request log."""

    stream_name: ClassVar[str]
    request_id: str

    def msg_id(self) -> str: ...

    def subject(self) -> str: ...

    def model_dump_json(self) -> str: ...

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


# (token, duplicate, error): the stream's answer to the publish sent under `token`.
OnAck = Callable[[int, bool, str | None], None]


class UsageBus(Protocol):
    async def start_usage_acks(self, on_ack: OnAck) -> None:
        """Start delivering the usage stream's acks to `on_ack` (once, before the first send)."""

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish to the usage stream; its ack arrives later through `on_ack` under `token`."""


class _Waiter:
    """A `durable` caller's events: resolved True once the stream stored them all, False as soon
    as one is given up. One future and one counter per call, whatever the number of events."""

    __slots__ = ("future", "left")

    def __init__(self, future: asyncio.Future[bool], left: int) -> None:
        self.future = future
        self.left = left

    def settle(self, stored: bool) -> None:
        if self.future.done():
            return
        self.left -= 1
        if not stored:
            self.future.set_result(False)
        elif self.left <= 0:
            self.future.set_result(True)


class _Pending:
    """One event until the stream acknowledged it (serialized once, for all its attempts)."""

    __slots__ = (
        "attempts",
        "backoff",
        "deadline",
        "event",
        "give_up",
        "headers",
        "payload",
        "subject",
        "waiter",
    )

    def __init__(
        self,
        event: StreamEvent,
        retry_window: float,
        first_backoff: float,
        waiter: _Waiter | None = None,
        traceparent: str | None = None,
    ) -> None:
        self.event = event
        self.waiter = waiter  # told True when the stream stored it, False when it is given up
        self.subject = event.subject()
        self.payload = event.model_dump_json().encode()
        self.headers = {NATS_MSG_ID: event.msg_id(), NATS_EXPECTED_STREAM: event.stream_name}
        if traceparent:  # the request's span: metering links its insert to it
            self.headers[TRACEPARENT] = traceparent
        self.give_up = time.monotonic() + retry_window
        self.backoff = first_backoff
        self.attempts = 0
        self.deadline = 0.0  # of the attempt in flight


class UsagePublisher:
    def __init__(
        self,
        bus: UsageBus,
        max_in_flight: int = 1024,
        retry_window: float = 100.0,
        attempt_timeout: float = 2.0,
        first_backoff: float = 0.05,
        max_backoff: float = 5.0,
        linger: float = 0.02,
        what: str = "usage event",
    ) -> None:
        self._bus = bus
        self._what = what  # in log lines: what was lost
        self._linger = linger
        self._max_in_flight = max_in_flight
        self._retry_window = retry_window
        self._attempt_timeout = attempt_timeout
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff
        # Handed over, not serialized yet, each with the `traceparent` of its request's span.
        self._submitted: deque[tuple[StreamEvent, str | None]] = deque()
        self._retries: deque[_Pending] = deque()  # due to be sent again
        self._in_flight: dict[int, _Pending] = {}  # token -> awaiting its ack; send (= deadline) order
        self._backing_off: dict[_Pending, asyncio.TimerHandle] = {}
        self._token = 0
        self._wake = asyncio.Event()  # something to send
        self._waited: deque[_Pending] = deque()  # `durable` events over `max_in_flight`
        self._room = asyncio.Event()  # an ack made room under max_in_flight
        self._settled = asyncio.Event()  # nothing left anywhere
        self._settled.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        self.duplicates = 0
        self.retried = 0  # attempts that failed and were scheduled again
        self.lost = 0

    async def start(self) -> None:
        if self._tasks:
            return
        await self._bus.start_usage_acks(self._on_ack)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="aigw-usage-send"),
            asyncio.create_task(self._sweep_loop(), name="aigw-usage-sweep"),
        ]

    def submit(self, event: StreamEvent, traceparent: str | None = None) -> None:
        """Publish `event` soon; `traceparent`: its request's span, in the message's headers."""
        self._submitted.append((event, traceparent))
        self._settled.clear()
        self._wake.set()

    async def durable(
        self, events: Sequence[StreamEvent], within: float, traceparent: str | None = None
    ) -> bool:
        """Publish `events` now and wait until the usage stream stored them all (True), or until
        `within` seconds passed or one was given up (False; the publisher keeps trying the rest).

        For callers that must not answer before their bill is safe: the worker awaits this before
        a request's final event, so a worker killed after answering has lost no usage.

        The events are published right here, not by the sender task, and without a linger: a
        waiting request must not wait for a batch to gather, nor for a task switch. They still
        share writes: nats-py writes everything published before its flusher task runs in one
        socket write, so the events of every request that finished in the same turn of the event
        loop go out together, and their acks come back together (measured on `make bench`: the
        earlier hand-over to the sender task, with a 2 ms group commit, held every answer for a
        task switch, a timer and up to 2 ms more). Past `max_in_flight` they queue for the sender
        like any other event.
        """
        if not events:
            return True
        loop = asyncio.get_running_loop()
        waiter = _Waiter(loop.create_future(), len(events))
        self._settled.clear()
        for event in events:
            try:
                item = _Pending(event, self._retry_window, self._first_backoff, waiter, traceparent)
            except Exception:
                self._lose(event, f"{self._what} lost: it could not be serialized", exc_info=True)
                waiter.settle(False)
                continue
            if len(self._in_flight) >= self._max_in_flight or self._waited:
                self._waited.append(item)
                self._wake.set()
            else:
                await self._send(item)
        if waiter.future.done():
            return waiter.future.result()
        timer = loop.call_later(within, _expire, waiter.future)
        try:
            return await waiter.future
        finally:
            timer.cancel()

    @property
    def pending(self) -> int:
        """Events not settled yet: queued, awaiting an ack, or waiting to be retried."""
        return (
            len(self._submitted)
            + len(self._waited)
            + len(self._retries)
            + len(self._in_flight)
            + len(self._backing_off)
        )

    # ------------------------------------------------------------------ sending
    async def _send_loop(self) -> None:
        submitted, retries, in_flight = self._submitted, self._retries, self._in_flight
        waited = self._waited
        while True:
            await self._wake.wait()
            if self._linger > 0 and not waited:
                # Let a batch gather (see the module docstring).
                await asyncio.sleep(self._linger)
            self._wake.clear()
            while submitted or retries or waited:
                if len(in_flight) >= self._max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                    continue
                if retries:
                    item = retries.popleft()
                elif waited:
                    item = waited.popleft()
                else:
                    event, parent = submitted.popleft()
                    try:
                        item = _Pending(event, self._retry_window, self._first_backoff, None, parent)
                    except Exception:
                        self._lose(event, f"{self._what} lost: it could not be serialized", exc_info=True)
                        continue
                await self._send(item)

    async def _send(self, item: _Pending) -> None:
        self._token += 1
        token = self._token
        item.attempts += 1
        item.deadline = time.monotonic() + self._attempt_timeout
        self._in_flight[token] = item  # before the publish: its ack may come back first
        try:
            await self._bus.send_usage(token, item.subject, item.payload, item.headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._in_flight.pop(token, None) is not None:
                self._failed(item, repr(exc))

    def _on_ack(self, token: int, duplicate: bool, error: str | None) -> None:
        item = self._in_flight.pop(token, None)
        if item is None:
            return  # an attempt already given up on (timed out): its retry settles the event
        if error is not None:
            self._failed(item, error)
        else:
            self.published += 1
            if duplicate:
                self.duplicates += 1
            if item.waiter is not None:
                item.waiter.settle(True)
        self._room.set()
        self._check_settled()

    def _failed(self, item: _Pending, error: str) -> None:
        if time.monotonic() + item.backoff > item.give_up:
            self.lost += 1
            if item.waiter is not None:
                item.waiter.settle(False)
            log.error(
                f"{self._what} lost: the stream did not accept it",
                extra={"attempts": item.attempts, "error": error, "usage_event": _dump(item.event)},
            )
            self._check_settled()
            return
        if item.attempts == 1:
            log.warning(
                f"{self._what} publish failed; retrying",
                extra={"request_id": item.event.request_id, "error": error},
            )
        self.retried += 1
        loop = asyncio.get_running_loop()
        self._backing_off[item] = loop.call_later(item.backoff, self._retry, item)
        item.backoff = min(item.backoff * 2, self._max_backoff)

    def _retry(self, item: _Pending) -> None:
        self._backing_off.pop(item, None)
        self._retries.append(item)
        self._wake.set()

    async def _sweep_loop(self) -> None:
        """Attempts with no ack by their deadline fail (and are retried); oldest first, so it stops
        at the first one still in time."""
        in_flight = self._in_flight
        tick = max(0.01, min(0.25, self._attempt_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            if not in_flight:
                continue
            now = time.monotonic()
            expired: list[_Pending] = []
            while in_flight:
                token = next(iter(in_flight))
                item = in_flight[token]
                if item.deadline > now:
                    break
                del in_flight[token]
                expired.append(item)
            for item in expired:
                self._failed(item, f"no ack from the usage stream within {self._attempt_timeout:g}s")
            if expired:
                self._room.set()

    def _check_settled(self) -> None:
        if not self.pending:
            self._settled.set()

    def _lose(self, event: StreamEvent, message: str, exc_info: bool = False) -> None:
        self.lost += 1
        log.error(message, extra={"usage_event": _dump(event)}, exc_info=exc_info)

    # ------------------------------------------------------------------ shutdown
    async def close(self, within: float) -> None:
        """Publish what is queued (within `within` seconds), then stop; whatever is left is logged
        as lost (those still awaiting an ack may have been stored: a replay is deduplicated)."""
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), within)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        for handle in self._backing_off.values():
            handle.cancel()
        left = [
            *(event for event, _ in self._submitted),
            *(item.event for item in self._waited),
            *(item.event for item in self._retries),
            *(item.event for item in self._backing_off),
        ]
        unconfirmed = [item.event for item in self._in_flight.values()]
        self._submitted.clear()
        self._waited.clear()
        self._retries.clear()
        self._backing_off.clear()
        self._in_flight.clear()
        for event in left:
            self._lose(event, f"{self._what} lost at shutdown")
        for event in unconfirmed:
            self._lose(event, f"{self._what} unconfirmed at shutdown (published, no ack yet)")
        self._settled.set()


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


def _dump(event: StreamEvent) -> object:
    return event.model_dump(mode="json")


# ---------------------------------------------------------------- the JetStream side

_STATUS = Header.STATUS  # how nats-py hands over a status line
_DESCRIPTION = Header.DESCRIPTION
_NO_RESPONDERS = "503"


class JetStreamUsageBus:
    """`UsageBus` on a raw nats-py connection: one subscription for every ack, `<inbox>.<token>`,
    where the token is a counter (no random bytes per publish, unlike nats-py's request inboxes)."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self._ack_prefix = ""
        self._on_ack: OnAck | None = None

    async def start_usage_acks(self, on_ack: OnAck) -> None:
        self._on_ack = on_ack
        self._ack_prefix = self.nc.new_inbox() + "."
        await self.nc.subscribe(self._ack_prefix + "*", cb=self._ack)

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, payload, reply=self._ack_prefix + str(token), headers=headers)

    async def _ack(self, msg: Msg) -> None:
        on_ack = self._on_ack
        try:
            token = int(msg.subject[len(self._ack_prefix) :])
        except ValueError:
            return
        assert on_ack is not None
        on_ack(token, *parse_ack(msg.headers, msg.data))

    async def ensure_usage_stream(self) -> None:
        """Create the usage stream if it is missing (never changes an existing one)."""
        await self.ensure_stream(usage_stream_config())

    async def ensure_stream(self, config: StreamConfig) -> None:
        """Create a stream if it is missing (never changes an existing one)."""
        assert config.name is not None
        with contextlib.suppress(NotFoundError):
            await self.js.stream_info(config.name)
            return
        try:
            await self.js.add_stream(config)
            log.info("created a stream", extra={"stream": config.name})
        except BadRequestError as exc:
            # Metering (or another producer) created it between our look and our create.
            if exc.err_code != 10058:  # JSStreamNameExistErr
                raise


def usage_stream_config() -> StreamConfig:
    return StreamConfig(
        name=streams.USAGE_STREAM,
        subjects=list(streams.USAGE_SUBJECTS),
        storage=StorageType(streams.USAGE_STORAGE),
        discard=DiscardPolicy(streams.USAGE_DISCARD),
        duplicate_window=streams.USAGE_DUPLICATE_WINDOW_S,
        max_age=streams.USAGE_MAX_AGE_S,
    )


def requests_stream_config(num_replicas: int = 1) -> StreamConfig:
    """The request log's stream: created by the edges and metering alike, so defined once."""
    return StreamConfig(
        name=streams.REQUESTS_STREAM,
        subjects=list(streams.REQUESTS_SUBJECTS),
        storage=StorageType(streams.USAGE_STORAGE),
        discard=DiscardPolicy(streams.USAGE_DISCARD),
        duplicate_window=streams.USAGE_DUPLICATE_WINDOW_S,
        max_age=streams.REQUESTS_MAX_AGE_S,
        num_replicas=num_replicas,
    )


def parse_ack(headers: dict[str, str] | None, data: bytes) -> tuple[bool, str | None]:
    """(duplicate, error) from JetStream's answer to a publish: a PubAck, an API error, or a
    "no responders" status when no stream listens on the subject."""
    if headers:
        status = headers.get(_STATUS)
        if status == _NO_RESPONDERS:
            return False, "no responders: no stream stores this subject"
        if status:
            return False, f"status {status} {headers.get(_DESCRIPTION, '')}".strip()
    try:
        body = json.loads(data)
    except ValueError:
        return False, "the usage stream's ack is not JSON"
    if not isinstance(body, dict):
        return False, "the usage stream's ack is not a JSON object"
    error = body.get("error")
    if error:
        return False, str(error.get("description") if isinstance(error, dict) else error)
    if not body.get("stream"):
        return False, "the usage stream's ack names no stream"
    return bool(body.get("duplicate")), None
