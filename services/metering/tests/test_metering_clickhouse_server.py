"""The same consumer, schema and reports against a real ClickHouse server (HTTP, port 8123) in a
container: runs where Docker exists, and is reported as skipped, with the reason, where it doesn't
(or where the `testcontainers` package is not installed).

The image is pinned to a 25.8 LTS: clickhouse-connect >= 1.7 supports only servers >= 25.8.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw_contracts import subjects
from aigw_contracts.usage import UsageQuery, UsageReport
from aigw_devstack.nats import NatsServer
from aigw_metering import sample
from aigw_metering.rows import Batch
from aigw_metering.store import Store, parse_dsn

from .conftest import connect, consumer_state, eventually, publish, running, settings_for, totals_of

IMAGE = "clickhouse/clickhouse-server:25.8"
USER, PASSWORD = "aigw", "aigw-test-password"


def _docker_or_skip() -> None:
    pytest.importorskip("testcontainers.core.container", reason="the testcontainers package is not installed")
    try:
        import docker

        docker.from_env().ping()
    except Exception as err:
        pytest.skip(f"no Docker engine reachable ({type(err).__name__}): ClickHouse server tests need one")


@pytest.fixture(scope="module")
def clickhouse() -> Iterator[Any]:
    _docker_or_skip()
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(IMAGE)
        .with_env("CLICKHOUSE_USER", USER)
        .with_env("CLICKHOUSE_PASSWORD", PASSWORD)
        .with_env("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT", "1")
        .with_exposed_ports(8123)
    )
    container.start()
    try:
        base = f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8123)}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ping", timeout=2).text.strip() == "Ok.":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("ClickHouse container not ready after 120s")
            time.sleep(0.2)
        container.dsn = f"{base.replace('http://', f'http://{USER}:{PASSWORD}@')}/"
        yield container
    finally:
        container.stop()


def test_store_on_a_server_migrates_dedups_and_reports_exactly(clickhouse: Any, database: str) -> None:
    store = Store(parse_dsn(clickhouse.dsn + database, "unused"))
    store.open()
    try:
        assert store.database == database
        events = list(sample.events(300, seed=31))
        batch = Batch()
        for i, e in enumerate(events):
            batch.add(e, seq=i + 1)
        store.insert(batch.block(), batch.token())
        store.insert(batch.block(), batch.token())  # retried with the same token: dropped
        count = store.query(f"SELECT count() FROM {store.table}", {}).result_rows[0][0]
        assert count == batch.lines
        again = Batch()
        for i, e in enumerate(events[:100]):
            again.add(e, seq=5000 + i)
        store.insert(again.block(), again.token())  # a copy as another batch: billed once (FINAL)
        from aigw_metering import queries

        report = queries.run(store, UsageQuery(tenant=None, group_by=["tenant"]))
        assert report.totals.amount == sum((e.total() for e in events), Decimal(0))
        assert report.totals.requests == len(events)
    finally:
        store.close()


async def test_consumer_survives_a_paused_server_and_stores_every_line_once(
    clickhouse: Any, fresh_nats: NatsServer, database: str, tmp_path: Path
) -> None:
    settings = settings_for(fresh_nats.url, clickhouse.dsn + database, metering_insert_timeout_s=2.0)
    events = list(sample.events(500, seed=32))
    lines, _, amount = totals_of(events)
    async with running(settings) as service, connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        await publish(js, events[:250])
        await eventually(
            lambda: service.health.inserted_lines == totals_of(events[:250])[0], what="first half"
        )
        clickhouse.get_wrapped_container().pause()  # the server hangs: inserts time out
        try:
            await publish(js, events[250:])
            await eventually(lambda: not service.health.store_ok, within=30, what="unhealthy")
            assert (await consumer_state(js))[2] == 250  # nothing acked during the outage
        finally:
            clickhouse.get_wrapped_container().unpause()
        await eventually(lambda: service.health.inserted_lines >= lines, within=60, what="every line")
        await eventually(lambda: _acked(js, len(events)), within=30, what="all acked")
        reply = await nc.request(
            subjects.METERING_QUERY, UsageQuery(tenant=None).model_dump_json().encode(), timeout=10
        )
        report = UsageReport.model_validate_json(reply.data)
        assert report.totals.amount == amount and report.totals.requests == len(events)
        physical = await asyncio.to_thread(
            lambda: service.store.query(
                f"SELECT count(), uniqExact(request_id, source, sku) FROM {service.store.table}", {}
            ).result_rows[0]
        )
        assert physical[1] == lines


async def _acked(js: Any, n: int) -> bool:
    return (await consumer_state(js))[2] == n
