"""The usage publisher: publishes without waiting on acks, yet every event is acknowledged once by
the stream, retried with its Nats-Msg-Id when an ack is lost or refused, bounded in flight, and
logged in full when it cannot be delivered. Fault cases run against a recording bus; the
no-responders and dedup cases against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import nats
import pytest

from aigw_contracts import GeneratedUsage, UsageEvent, skus, streams, subjects
from aigw_contracts.ids import uuid7
from aigw_devstack.nats import NatsServer
from aigw_runtime.usage_publisher import (
    NATS_EXPECTED_STREAM,
    NATS_MSG_ID,
    JetStreamUsageBus,
    OnAck,
    UsagePublisher,
    parse_ack,
)


def usage_event(tenant: str = "t-usage") -> UsageEvent:
    return UsageEvent(
        request_id=uuid7(),
        source="inference",
        tenant=tenant,
        key_id="k",
        upstream="@sim/m",
        model="m",
        lines=[GeneratedUsage.priced(skus.CHAT_OUT, Decimal("0.000002"), 3, "x")],
        started_at=datetime.now(UTC),
    )


class RecordingBus:
    """Records every publish; the test decides which ones get which ack (or none)."""

    def __init__(self) -> None:
        self.on_ack: OnAck | None = None
        self.sent: list[tuple[int, str, bytes, dict[str, str]]] = []
        self.fail_sends = 0  # the next N sends raise (e.g. disconnected, buffer full)

    async def start_usage_acks(self, on_ack: OnAck) -> None:
        self.on_ack = on_ack

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("not connected")
        self.sent.append((token, subject, payload, dict(headers)))

    def ack(self, index: int, duplicate: bool = False, error: str | None = None) -> None:
        assert self.on_ack is not None
        self.on_ack(self.sent[index][0], duplicate, error)


async def until(check: Callable[[], object], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_lost_ack_is_retried_with_the_same_msg_id_and_settles_once() -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, attempt_timeout=0.05, first_backoff=0.01)
    await pub.start()
    event = usage_event()
    pub.submit(event)
    await until(lambda: len(bus.sent) == 2)  # no ack for the first attempt: sent again
    (t1, subject1, payload1, hdrs1), (t2, subject2, payload2, hdrs2) = bus.sent
    assert t1 != t2 and (subject1, payload1, hdrs1) == (subject2, payload2, hdrs2)
    assert subject1 == subjects.usage_subject(event.tenant)
    assert hdrs1 == {NATS_MSG_ID: event.msg_id(), NATS_EXPECTED_STREAM: streams.USAGE_STREAM}
    assert UsageEvent.model_validate_json(payload1) == event
    bus.ack(0)  # the late ack of the abandoned attempt settles nothing
    assert pub.published == 0 and pub.pending == 1
    bus.ack(1, duplicate=True)  # the server had stored the first one: the retry is a duplicate
    assert (pub.published, pub.duplicates, pub.lost, pub.pending) == (1, 1, 0, 0)
    await pub.close(within=1)
    assert pub.lost == 0


async def test_events_gather_for_the_linger_then_go_out_together() -> None:
    bus = RecordingBus()
    sends: list[float] = []
    record = bus.send_usage

    async def timed(token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        sends.append(time.monotonic())
        await record(token, subject, payload, headers)

    bus.send_usage = timed  # type: ignore[method-assign]
    pub = UsagePublisher(bus, linger=0.2)
    await pub.start()
    started = time.monotonic()
    for _ in range(3):
        pub.submit(usage_event())
        await asyncio.sleep(0.01)  # arriving one by one, as requests end
    await until(lambda: len(bus.sent) == 3)
    assert min(sends) - started >= 0.19  # nothing before the linger
    assert max(sends) - min(sends) < 0.05  # then all of them in one go
    for i in range(3):
        bus.ack(i)
    assert pub.pending == 0
    await pub.close(within=1.0)


async def test_durable_events_go_out_at_once_and_return_when_all_are_stored() -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, linger=5.0)  # a linger must not hold a waiting request
    await pub.start()
    events = [usage_event(), usage_event()]
    waiting = asyncio.create_task(pub.durable(events, within=5.0))
    await until(lambda: len(bus.sent) == 2)  # both published before any ack, no linger
    bus.ack(1)
    await asyncio.sleep(0.01)
    assert not waiting.done()  # one of two stored is not stored
    bus.ack(0, duplicate=True)
    assert await asyncio.wait_for(waiting, 1.0) is True
    assert (pub.published, pub.pending) == (2, 0)
    await pub.close(within=1)


async def test_durable_is_false_when_an_event_is_given_up_or_the_stream_is_slow() -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, attempt_timeout=30.0, retry_window=0.0)
    await pub.start()
    refused = asyncio.create_task(pub.durable([usage_event(), usage_event()], within=5.0))
    await until(lambda: len(bus.sent) == 2)
    bus.ack(0, error="insufficient resources")  # no retry window left: given up (and logged)
    assert await asyncio.wait_for(refused, 1.0) is False
    bus.ack(1)
    slow = time.monotonic()
    assert await pub.durable([usage_event()], within=0.05) is False  # no ack in time
    assert time.monotonic() - slow < 1.0
    assert pub.pending == 1  # still awaiting its ack: the publisher keeps it
    bus.ack(2)
    assert (pub.published, pub.lost, pub.pending) == (2, 1, 0)
    await pub.close(within=1)


async def test_durable_events_past_max_in_flight_wait_for_room() -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, max_in_flight=1, attempt_timeout=30.0)
    await pub.start()
    first = asyncio.create_task(pub.durable([usage_event()], within=5.0))
    second = asyncio.create_task(pub.durable([usage_event()], within=5.0))
    await until(lambda: len(bus.sent) == 1)
    await asyncio.sleep(0.01)
    assert len(bus.sent) == 1 and not second.done()  # queued, not over the bound
    bus.ack(0)
    await until(lambda: len(bus.sent) == 2)
    bus.ack(1)
    assert await asyncio.wait_for(asyncio.gather(first, second), 1.0) == [True, True]
    await pub.close(within=1)


async def test_a_refused_or_failed_publish_is_retried_after_a_backoff() -> None:
    bus = RecordingBus()
    bus.fail_sends = 1
    pub = UsagePublisher(bus, attempt_timeout=5.0, first_backoff=0.01)
    await pub.start()
    pub.submit(usage_event())
    await until(lambda: len(bus.sent) == 1)  # the failed send came back after its backoff
    bus.ack(0, error="maximum messages exceeded")
    await until(lambda: len(bus.sent) == 2)
    bus.ack(1)
    assert (pub.published, pub.lost, pub.pending) == (1, 0, 0)
    await pub.close(within=1)


async def test_at_most_max_in_flight_publishes_await_their_ack() -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, max_in_flight=2, attempt_timeout=30.0)
    await pub.start()
    for _ in range(5):
        pub.submit(usage_event())
    await until(lambda: len(bus.sent) == 2)
    await asyncio.sleep(0)
    assert len(bus.sent) == 2 and pub.pending == 5  # the rest wait in memory
    bus.ack(0)
    await until(lambda: len(bus.sent) == 3)
    for i in (1, 2):
        bus.ack(i)
    await until(lambda: len(bus.sent) == 5)
    for i in (3, 4):
        bus.ack(i)
    assert (pub.published, pub.pending) == (5, 0)
    assert len({headers[NATS_MSG_ID] for _, _, _, headers in bus.sent}) == 5
    await pub.close(within=1)


async def test_an_event_past_its_retry_window_is_logged_in_full(caplog: pytest.LogCaptureFixture) -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, retry_window=0.2, attempt_timeout=0.03, first_backoff=0.02, max_backoff=0.05)
    await pub.start()
    event = usage_event()
    with caplog.at_level(logging.WARNING, logger="aigw.usage"):
        pub.submit(event)
        await until(lambda: pub.lost == 1)
    assert len(bus.sent) >= 2 and pub.pending == 0
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.__dict__["usage_event"]["request_id"] == event.request_id
    assert record.__dict__["usage_event"]["lines"][0]["amount"] == "0.000006"
    await pub.close(within=1)


async def test_close_logs_what_is_still_unconfirmed(caplog: pytest.LogCaptureFixture) -> None:
    bus = RecordingBus()
    pub = UsagePublisher(bus, attempt_timeout=30.0)
    await pub.start()
    event = usage_event()
    pub.submit(event)
    await until(lambda: len(bus.sent) == 1)
    with caplog.at_level(logging.ERROR, logger="aigw.usage"):
        await pub.close(within=0.05)
    assert pub.lost == 1 and pub.pending == 0
    assert [r.__dict__["usage_event"]["request_id"] for r in caplog.records] == [event.request_id]


def test_acks_are_read_as_jetstream_writes_them() -> None:
    assert parse_ack(None, b'{"stream":"AIGW_USAGE","seq":7}') == (False, None)
    assert parse_ack(None, b'{"stream":"AIGW_USAGE","seq":7,"duplicate":true}') == (True, None)
    refused = b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}'
    assert parse_ack(None, refused) == (False, "maximum messages exceeded")
    duplicate, error = parse_ack({"Status": "503"}, b"")
    assert not duplicate and error is not None and "no responders" in error
    assert parse_ack(None, b"not json")[1] is not None


async def test_over_real_nats_an_event_waits_for_its_stream_and_lands_once(fresh_nats: NatsServer) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        bus = JetStreamUsageBus(nc)
        pub = UsagePublisher(bus, attempt_timeout=0.5, first_backoff=0.05, max_backoff=0.2)
        await pub.start()
        event = usage_event(tenant=f"t{uuid7().replace('-', '')}")
        pub.submit(event)
        await until(lambda: pub.retried >= 2)  # no stream yet: "no responders", retried
        assert pub.published == 0 and pub.pending == 1 and pub.lost == 0
        await bus.ensure_usage_stream()
        await until(lambda: pub.published == 1)
        pub.submit(event)  # the same event again: the stream drops it by its Nats-Msg-Id
        await until(lambda: pub.published == 2)
        assert pub.duplicates == 1
        js = nc.jetstream()
        info = await js.stream_info(streams.USAGE_STREAM)
        assert info.state.messages == 1
        stored = await js.get_last_msg(streams.USAGE_STREAM, subjects.usage_subject(event.tenant))
        assert (stored.headers or {})[NATS_MSG_ID] == event.msg_id()
        assert json.loads(stored.data or b"")["request_id"] == event.request_id
        await pub.close(within=2)
        assert pub.lost == 0
    finally:
        await nc.close()
