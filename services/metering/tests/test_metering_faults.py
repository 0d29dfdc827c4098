"""Faults with real processes: `aigw-metering` as a subprocess against a real nats-server.

The store unavailable (a chDB path that cannot be created, a ClickHouse server that isn't there):
events stay in JetStream unacked, readiness says 503 with the error, reports answer 503; when the
store returns every line arrives once. Killed with SIGKILL mid-stream and restarted: every line
still once, not even a physical copy (count() == uniqExact over the line key).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from aigw_contracts import headers, subjects
from aigw_contracts.usage import UsageQuery
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import free_port
from aigw_metering import sample

from .conftest import all_acked, connect, consumer_state, eventually, publish, stored_lines, totals_of


async def _health(mp: Any) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(mp.health)


async def test_an_unwritable_chdb_path_holds_events_in_jetstream_until_it_is_fixed(
    fresh_nats: NatsServer, tmp_path: Path, metering_procs: Any
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's parent directory should be")
    path = blocker / "usage"
    mp = metering_procs(tmp_path, fresh_nats.url, f"chdb://{path}").start()
    events = list(sample.events(300, seed=11))
    lines, quantity, amount = totals_of(events)
    async with connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        await eventually(lambda: mp.health()[1]["last_error"], within=30, what="a first open attempt")
        status, body = await _health(mp)
        assert status == 503 and body["store_ok"] is False and "Not a directory" in body["last_error"]

        await publish(js, events)
        # The consumer holds a few batches (unacked) and stops pulling; the rest wait in the stream.
        await eventually(lambda: _holding(mp), what="events delivered and held")
        reply = await nc.request(
            subjects.METERING_QUERY, UsageQuery(tenant=None).model_dump_json().encode(), timeout=5
        )
        assert reply.headers == {headers.STATUS: "503"}

        # Held across several ack deadlines (3 s here) without a single redelivery: in-progress
        # acks keep them; and none is acked, so none can be lost.
        observe_until = time.monotonic() + 7
        while time.monotonic() < observe_until:
            info = await js.consumer_info("AIGW_USAGE", subjects.METERING_DURABLE)
            assert info.ack_floor.stream_seq == 0 and info.num_redelivered == 0
            assert info.num_pending + info.num_ack_pending == len(events)
            await asyncio.sleep(0.5)
        assert (await _health(mp))[0] == 503

        blocker.unlink()  # the operator fixes the volume
        await eventually(lambda: _inserted(mp, lines), within=30, what="every line stored")
        assert (await _health(mp))[0] == 200
        await all_acked(js, len(events))
    assert mp.stop() == 0
    stored = await asyncio.to_thread(stored_lines, path)
    assert stored["count"] == stored["unique"] == lines
    assert Decimal(stored["amount"]) == amount and stored["quantity"] == quantity


async def test_an_unreachable_clickhouse_server_loses_nothing_across_a_restart(
    fresh_nats: NatsServer, tmp_path: Path, metering_procs: Any
) -> None:
    dsn = f"http://default:secret-password@127.0.0.1:{free_port()}/aigw"
    down = metering_procs(tmp_path, fresh_nats.url, dsn).start()
    events = list(sample.events(200, seed=12))
    lines, _, amount = totals_of(events)
    async with connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        await publish(js, events)
        await eventually(lambda: _holding(down), what="events held")
        await eventually(lambda: down.health()[1]["consecutive_failures"] >= 2, what="retries")
        status, body = await _health(down)
        assert status == 503 and "Connection refused" in body["last_error"]
        assert "secret-password" not in body["last_error"] and body["store"] == dsn.replace(
            "default:secret-password@", ""
        )
        pending, unacked, acked = await consumer_state(js)
        assert acked == 0 and pending + unacked == len(events) and unacked > 0

        # SIGTERM: the held events are given back to JetStream (nak: redelivered at once to the
        # next consumer rather than after the ack deadline); nothing is acked.
        started = time.monotonic()
        assert down.stop() == 0
        assert time.monotonic() - started < 10
        assert "secret-password" not in down.proc.log_path.read_text()
        pending, unacked, acked = await consumer_state(js)
        assert acked == 0 and pending + unacked == len(events)  # all still in the stream

        path = tmp_path / "usage.chdb"
        up = metering_procs(tmp_path, fresh_nats.url, f"chdb://{path}").start()
        await eventually(lambda: _inserted(up, lines), within=30, what="every line stored")
        await all_acked(js, len(events))
    assert up.stop() == 0
    stored = await asyncio.to_thread(stored_lines, path)
    assert stored["count"] == stored["unique"] == lines and Decimal(stored["amount"]) == amount


async def test_sigkill_mid_stream_and_restart_stores_every_line_once(
    fresh_nats: NatsServer, tmp_path: Path, metering_procs: Any
) -> None:
    path = tmp_path / "usage.chdb"
    # Small batches so a kill lands between inserts and acks more often.
    mp = metering_procs(tmp_path, fresh_nats.url, f"chdb://{path}", AIGW_METERING_BATCH_LINES="500")
    mp.start()
    events = list(sample.events(6000, seed=13))
    lines, quantity, amount = totals_of(events)
    async with connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        publishing = asyncio.create_task(_publish_concurrently(js, events))
        # Each of the first two runs is killed once it stored 2,000 of the 14,011 lines itself (the
        # counter is per process: lines a run skips as already stored don't count). A fixed total
        # such as 6,000 for the second run could be out of reach when the first ran far ahead.
        for threshold in (2_000, 2_000):
            await eventually(
                lambda t=threshold: _inserted_at_least(mp, t), within=60, what=f"{threshold} lines"
            )
            mp.kill()
            mp.start()
        await publishing
        await all_acked(js, len(events), within=60)
        assert mp.stop() == 0
    assert mp.runs == 3
    stored = await asyncio.to_thread(stored_lines, path)
    assert stored["count"] == stored["unique"] == lines  # no line lost, not even a physical copy
    assert stored["final_count"] == lines
    assert Decimal(stored["amount"]) == amount and stored["quantity"] == quantity


async def _publish_concurrently(js: Any, events: list[Any], width: int = 200) -> None:
    for i in range(0, len(events), width):
        await asyncio.gather(*(publish(js, [e]) for e in events[i : i + width]))


def _holding(mp: Any) -> bool:
    return bool(mp.health()[1]["held_events"] > 0)


def _inserted(mp: Any, n: int) -> bool:
    status, body = mp.health()
    return bool(body["inserted_lines"] == n and status == 200)


def _inserted_at_least(mp: Any, n: int) -> bool:
    return bool(mp.health()[1]["inserted_lines"] >= n)


async def test_it_says_ready_whatever_the_log_level(
    fresh_nats: NatsServer, tmp_path: Path, metering_procs: Any
) -> None:
    """Supervisors (make run, the bench) wait for the ready line; a quiet log level must not hide it."""
    mp = metering_procs(tmp_path, fresh_nats.url, f"chdb://{tmp_path / 'u.chdb'}", AIGW_LOG_LEVEL="WARNING")
    mp.start()  # waits for `"msg": "ready"` in its log
    await eventually(lambda: mp.health()[0] == 200, what="healthy")
    assert mp.stop() == 0
