"""Metering test fixtures: a real nats-server, chDB in this process, and the service in-process or
as the `aigw-metering` console script.

chDB opens one data path per process, so every in-process test shares one session path and gets
a database of its own; tests that run metering as a subprocess give it a path of its own and read
it back in a child Python (`stored_lines`) once the service has stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS

from aigw_contracts import streams, subjects
from aigw_contracts.usage import UsageEvent
from aigw_devstack.procs import Process, free_port
from aigw_metering import MeteringService, MeteringSettings, Store, parse_dsn


async def eventually(probe: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    """Poll `probe` (sync or async) until truthy, failing past the deadline; returns its value."""
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.02)


@pytest.fixture(scope="session")
def chdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("chdb") / "usage"


@pytest.fixture
def database() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def settings_for(nats_url: str, dsn: str, database: str = "aigw", **overrides: Any) -> MeteringSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "metering_dsn": dsn,
        "metering_database": database,
        "metering_batch_delay_s": 0.05,
        "metering_ack_wait_s": 3.0,
        "metering_backoff_initial_s": 0.05,
        "metering_backoff_max_s": 0.5,
        "metering_ping_interval_s": 0.5,
        **overrides,
    }
    return MeteringSettings.model_validate(values)


@pytest.fixture
def store(chdb_dir: Path, database: str) -> Any:
    s = Store(parse_dsn(f"chdb://{chdb_dir}", database))
    s.open()
    yield s
    s.close()


@asynccontextmanager
async def running(settings: MeteringSettings) -> AsyncIterator[MeteringService]:
    service = MeteringService(settings)
    await service.start()
    try:
        await eventually(lambda: service.health.store_ok, within=30, what="store open")
        yield service
    finally:
        await service.stop()


async def publish(
    js: Any, events: Iterable[UsageEvent], msg_id: Callable[[UsageEvent], str] | None = None
) -> int:
    """Publish like a producer (Nats-Msg-Id = event.msg_id()); returns the number of lines."""
    lines = 0
    for event in events:
        mid = msg_id(event) if msg_id else event.msg_id()
        await js.publish(
            subjects.usage_subject(event.tenant),
            event.model_dump_json().encode(),
            headers={"Nats-Msg-Id": mid},
        )
        lines += len(event.lines)
    return lines


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[NATS]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def consumer_state(js: Any) -> tuple[int, int, int]:
    """(events not yet delivered, delivered but unacked, acked floor) of metering's durable."""
    info = await js.consumer_info(streams.USAGE_STREAM, subjects.METERING_DURABLE)
    return info.num_pending, info.num_ack_pending, info.ack_floor.stream_seq


async def all_acked(js: Any, n: int, within: float = 10.0, what: str = "every event acked") -> None:
    """Wait until the durable has acked exactly `n` events with nothing pending: the ack follows
    the insert asynchronously, so a counter seen right after the insert may still lead it."""

    async def settled() -> bool:
        return await consumer_state(js) == (0, 0, n)

    await eventually(settled, within=within, what=what)


def totals_of(events: Iterable[UsageEvent]) -> tuple[int, int, Decimal]:
    """(lines, quantity, amount) the store must hold for these events."""
    lines, quantity, amount = 0, 0, Decimal(0)
    for e in events:
        lines += len(e.lines)
        quantity += sum(line.quantity for line in e.lines)
        amount += e.total()
    return lines, quantity, amount


# ------------------------------------------------------------------ metering as a subprocess
class MeteringProcess:
    """`aigw-metering` as a child process with a health port; stopped by pid."""

    def __init__(self, workdir: Path, nats_url: str, dsn: str, **env: str) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.env = {
            "AIGW_NATS_URL": nats_url,
            "AIGW_METERING_DSN": dsn,
            "AIGW_METERING_HEALTH_PORT": str(self.port),
            "AIGW_METERING_BATCH_DELAY_S": "0.05",
            "AIGW_METERING_ACK_WAIT_S": "3",
            "AIGW_METERING_BACKOFF_INITIAL_S": "0.05",
            "AIGW_METERING_BACKOFF_MAX_S": "0.5",
            "AIGW_METERING_PING_INTERVAL_S": "0.5",
            **env,
        }
        self.proc: Process | None = None
        self.runs = 0

    def start(self) -> MeteringProcess:
        self.runs += 1
        binary = Path(sys.executable).parent / "aigw-metering"
        self.proc = Process(
            "metering", [str(binary)], self.workdir / f"metering-{self.port}-{self.runs}.log", env=self.env
        ).start()
        self.proc.wait_ready(lambda: '"msg": "ready"' in self.proc.log_path.read_text(), timeout=60)  # type: ignore[union-attr]
        return self

    def health(self) -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
        return r.status_code, r.json()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(9)
        self.proc.popen.wait(timeout=10)  # type: ignore[union-attr]

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.stop(grace=20)
        return self.proc.popen.returncode if self.proc.popen else None


@pytest.fixture
def metering_procs() -> Any:
    started: list[MeteringProcess] = []

    def make(workdir: Path, nats_url: str, dsn: str, **env: str) -> MeteringProcess:
        mp = MeteringProcess(workdir, nats_url, dsn, **env)
        started.append(mp)
        return mp

    yield make
    for mp in started:
        mp.stop()


_COUNT_SCRIPT = """
import json, sys, clickhouse_connect
c = clickhouse_connect.get_client(interface="chdb", path=sys.argv[1])
db = sys.argv[2]
row = c.query(
    f"SELECT count(), uniqExact(request_id, source, sku), toString(sum(amount)), sum(quantity) "
    f"FROM {db}.usage_lines"
).result_rows[0]
final = c.query(f"SELECT count(), toString(sum(amount)) FROM {db}.usage_lines FINAL").result_rows[0]
print(json.dumps({"count": row[0], "unique": row[1], "amount": row[2], "quantity": row[3],
                  "final_count": final[0], "final_amount": final[1]}))
"""


def stored_lines(path: Path, database: str = "aigw") -> dict[str, Any]:
    """Counts in a chDB path another process wrote (run in a child: one path per process)."""
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_SCRIPT, str(path), database],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
        check=True,
    )
    data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return data
