"""The consumer against a real nats-server and chDB: every line once, exactly, whatever JetStream
or a producer delivers twice; malformed events dead-lettered without blocking the stream."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats.js.api
from nats.js.api import ConsumerConfig

from aigw_contracts import streams, subjects, usage
from aigw_devstack.nats import NatsServer
from aigw_metering import sample
from aigw_metering.rows import Batch, parse_fast

from .conftest import (
    all_acked,
    connect,
    consumer_state,
    eventually,
    publish,
    running,
    settings_for,
    totals_of,
)


def _count(service: Any) -> tuple[int, int, Decimal]:
    """(physical rows, distinct lines, billed amount) in the service's store."""
    t = service.store.table
    row = service.store.query(f"SELECT count(), uniqExact(request_id, source, sku) FROM {t}", {}).result_rows[
        0
    ]
    billed = service.store.query(f"SELECT sum(amount) FROM {t} FINAL", {}).result_rows[0][0]
    return row[0], row[1], Decimal(billed)


async def test_each_event_line_becomes_one_identical_row(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    events = [
        sample.event("acme", tokens=(10, 20, 30), metadata={"trace": "t-1"}),
        *sample.events(30, seed=1),
    ]
    async with running(settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)) as service:
        async with connect(fresh_nats.url) as nc:
            lines = await publish(nc.jetstream(), events)
            await eventually(lambda: service.health.inserted_lines == lines, what="all lines stored")
            await all_acked(nc.jetstream(), len(events))
            assert service.health.noncanonical_events == 0  # as published: the fast path
        rows = service.store.query(
            f"SELECT request_id, sku, quantity, unit_price, amount, description, metadata, tenant, model, "
            f"status, stream_seq FROM {service.store.table} ORDER BY stream_seq, line_no",
            {},
        ).result_rows
    expected = [
        (
            e.request_id,
            line.sku,
            line.quantity,
            line.unit_price,
            line.amount,
            line.description,
            e.metadata,
            e.tenant,
            e.model,
            e.status,
        )
        for e in events
        for line in e.lines
    ]
    assert [r[:10] for r in rows] == expected
    assert [r[10] for r in rows][:3] == [1, 1, 1]  # stream sequence of the first event


async def test_malformed_events_are_dead_lettered_with_the_reason_and_never_block(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    good = list(sample.events(10, seed=2))
    bad_amount = json.loads(sample.event("acme", request_id="bad-1").model_dump_json())
    bad_amount["lines"][0]["amount"] = "1"
    async with running(settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)) as service:
        async with connect(fresh_nats.url) as nc:
            js = nc.jetstream()
            await js.publish(subjects.usage_subject("acme"), b"{not json")
            await js.publish(subjects.usage_subject("acme"), json.dumps(bad_amount).encode())
            lines = await publish(js, good)
            await eventually(lambda: service.health.inserted_lines == lines, what="good lines stored")
            await eventually(lambda: service.health.dead_letters == 2, what="dead letters")
            assert service.health.noncanonical_events == 2  # decided by the model, not the fast path
            await all_acked(js, 12, what="every event acked, bad ones too: nothing blocks")

            dead = await js.pull_subscribe(subjects.USAGE_DEAD_LETTER, "t", stream=streams.USAGE_DEAD_STREAM)
            msgs = await dead.fetch(2, timeout=5)
            reasons = {m.headers[usage.DEAD_SEQUENCE]: m.headers[usage.DEAD_REASON] for m in msgs}  # type: ignore[index]
            assert "invalid usage event" in reasons["1"]
            assert "amount 1 != unit_price" in reasons["2"]
            assert msgs[0].data == b"{not json"  # the original bytes, for replay
            assert msgs[0].headers[usage.DEAD_SUBJECT] == subjects.usage_subject("acme")  # type: ignore[index]
        assert _count(service)[:2] == (lines, lines)


async def test_an_event_clickhouse_refuses_as_published_is_stored_re_serialized(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    """A duplicate JSON key passes the fast path (parsers keep the last value) but ClickHouse
    refuses the insert; the batch is re-serialized through the model and stored, none lost."""
    events = list(sample.events(20, seed=9))
    odd = sample.event("acme", request_id="dup-key", tokens=(7, 7, 0))
    raw = odd.model_dump_json().replace('"model":"sim-model"', '"model":"typo","model":"sim-model"')
    async with running(settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)) as service:
        async with connect(fresh_nats.url) as nc:
            js = nc.jetstream()
            lines = await publish(js, events[:10])
            await js.publish(
                subjects.usage_subject("acme"), raw.encode(), headers={"Nats-Msg-Id": odd.msg_id()}
            )
            lines += len(odd.lines) + await publish(js, events[10:])
            await eventually(lambda: service.health.inserted_lines == lines, what="all stored")
            assert service.health.dead_letters == 0 and service.health.reserialized_batches >= 1
        row = service.store.query(
            f"SELECT model, sum(amount) FROM {service.store.table} WHERE request_id = 'dup-key' GROUP BY model",
            {},
        ).result_rows
    assert row == [("sim-model", odd.total())]


async def test_a_republish_inside_the_window_is_dropped_and_after_it_is_not_billed_twice(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    events = list(sample.events(40, seed=5))
    lines, _, amount = totals_of(events)
    async with running(settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)) as service:
        async with connect(fresh_nats.url) as nc:
            js = nc.jetstream()
            await publish(js, events)
            await publish(js, events)  # same Nats-Msg-Id: JetStream drops these
            info = await js.stream_info(streams.USAGE_STREAM)
            assert info.state.messages == len(events)
            await eventually(lambda: service.health.inserted_lines == lines, what="first copy stored")
            # After the duplicate window a republish is a new message (new Nats-Msg-Id here).
            await publish(js, events[:10], msg_id=lambda e: e.msg_id() + ":late")
            await eventually(lambda: _acked(js, len(events) + 10), what="late copies acked")
        physical, distinct, billed = _count(service)
    assert distinct == lines
    assert billed == amount  # FINAL: copies never billed
    assert physical >= lines


async def _acked(js: Any, n: int) -> bool:
    return (await consumer_state(js))[2] == n


async def test_redelivery_after_a_crash_between_insert_and_ack_stores_nothing_twice(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    """A metering instance pulled events, stored them and died before acking: JetStream
    redelivers them, and the next instance finds them stored and only acks."""
    events = list(sample.events(60, seed=6))
    lines, _, amount = totals_of(events)
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        # Declare the stream and durable as metering does, then play the instance that died.
        async with running(settings):
            pass
        await publish(js, events)
        dying = await js.pull_subscribe_bind(durable=subjects.METERING_DURABLE, stream=streams.USAGE_STREAM)
        taken = await dying.fetch(40, timeout=5)
        assert len(taken) == 40  # delivered, never acked
        async with running(settings) as service:
            partial = Batch()
            for msg in taken[:25]:
                partial.add(usage.UsageEvent.model_validate_json(msg.data), msg.metadata.sequence.stream)
            await asyncio.to_thread(service.store.insert, partial.block(), partial.token())
            await eventually(lambda: _acked(js, len(events)), within=20, what="all acked after redelivery")
            physical, distinct, billed = _count(service)
            assert service.health.duplicates_skipped == 25  # found stored, only acked
    assert physical == distinct == lines  # not even a physical copy
    assert billed == amount


async def test_a_dedup_token_left_by_a_killed_instance_cannot_swallow_the_redelivery(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    """SIGKILL can land after ClickHouse recorded a batch's insert_deduplication_token but before
    its part was committed (seen: 515 of 14,011 lines acked and never stored, one batch). The next
    instance is redelivered the same events in the same order, forms the same batch, and a token
    derived from the batch alone would have that insert dropped as a duplicate and then acked.
    Here the dead instance's token is in the dedup log while its rows are gone."""
    events = list(sample.events(30, seed=14))
    lines, _, amount = totals_of(events)
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        async with running(settings) as service:  # declares the stream, the durable and the tables
            pass
        await publish(js, events)
        dying = await js.pull_subscribe_bind(durable=subjects.METERING_DURABLE, stream=streams.USAGE_STREAM)
        taken = await dying.fetch(len(events), timeout=5)
        assert len(taken) == len(events)  # delivered, never acked
        ghost = Batch()
        for msg in taken:
            fast = parse_fast(msg.data)
            assert fast is not None
            ghost.add_raw(msg, msg.metadata.sequence.stream, *fast)
        store = service.store
        await asyncio.to_thread(store.open)
        await asyncio.to_thread(store.insert, ghost.block(), ghost.token())
        store.query(f"ALTER TABLE {store.table} DELETE WHERE 1", {}, settings={"mutations_sync": 2})
        assert store.query(f"SELECT count() FROM {store.table}", {}).result_rows[0][0] == 0
        await asyncio.to_thread(store.close)
        async with running(settings) as service:
            await eventually(lambda: _acked(js, len(events)), within=20, what="all acked after redelivery")
            physical, distinct, billed = _count(service)
    assert physical == distinct == lines  # stored, once
    assert billed == amount


async def test_held_events_stay_unacked_while_the_batch_waits_and_are_acked_after(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    """Acks only after the insert: with a long batch delay, published events are held (delivered,
    unacked) until the batch is stored."""
    settings = settings_for(
        fresh_nats.url, f"chdb://{chdb_dir}", database, metering_batch_delay_s=1.5, metering_batch_lines=1000
    )
    events = list(sample.events(20, seed=7))
    async with running(settings) as service, connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        lines = await publish(js, events)
        await eventually(lambda: service.health.held_events == 20, what="events held")
        assert (await consumer_state(js))[2] == 0  # nothing acked before the insert
        assert service.health.inserted_lines == 0
        await eventually(lambda: _acked(js, 20), what="acked after insert")
        assert service.health.inserted_lines == lines


async def test_stream_and_consumer_are_declared_for_billing(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    async with (
        running(settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)),
        connect(fresh_nats.url) as nc,
    ):
        js = nc.jetstream()
        stream = (await js.stream_info(streams.USAGE_STREAM)).config
        assert stream.discard == nats.js.api.DiscardPolicy.NEW
        assert stream.duplicate_window == streams.USAGE_DUPLICATE_WINDOW_S
        assert stream.subjects == [subjects.USAGE_WILDCARD]
        durable: ConsumerConfig = (
            await js.consumer_info(streams.USAGE_STREAM, subjects.METERING_DURABLE)
        ).config
        assert durable.ack_policy == nats.js.api.AckPolicy.EXPLICIT
        assert durable.max_deliver == -1
        dead = (await js.stream_info(streams.USAGE_DEAD_STREAM)).config
        assert dead.subjects == [subjects.USAGE_DEAD_LETTER]
