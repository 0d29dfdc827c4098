"""`python -m bench.metering`: usage lines per second into ClickHouse (chDB), measured two ways.

* end to end: N usage events are published to the usage stream first (progress shown), then the
  real `aigw-metering` process drains them through its durable consumer into a fresh chDB path;
  lines/s = lines stored ÷ time from the first stored batch to the last (the service's start-up,
  ≈ 2 s to import chDB and open the store, is left out). Each run uses a fresh nats-server and
  path; the median of `--runs` is reported.
* raw insert: the store's own insert (clickhouse-connect → chDB, column-oriented, batches of
  `--batch` lines) from prepared columns, and "parse + insert": from the events' JSON bytes,
  through the same validation and batching as the consumer, into the store.

The quality bar is ≥ 50,000 lines/s into ClickHouse. `--cpus 0` pins nats-server and metering to
one core (as `make bench` does for the gateway); by default they share the machine. Because a
shared machine makes wall-clock rates noisy, the CPU time metering and nats-server spent per line
is reported too (read from /proc), and with it the lines/s one dedicated core would sustain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats

from aigw_contracts import subjects
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import Process, free_port
from aigw_metering import sample

HOST = "127.0.0.1"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _payloads(n: int, seed: int) -> tuple[list[tuple[str, bytes, str]], int]:
    """(subject, JSON, msg id) of n events, and their total number of lines."""
    out, lines = [], 0
    for e in sample.events(n, seed=seed, tenants=20):
        out.append((subjects.usage_subject(e.tenant), e.model_dump_json().encode(), e.msg_id()))
        lines += len(e.lines)
    return out, lines


async def _publish(url: str, payloads: list[tuple[str, bytes, str]], window: int = 2_000) -> float:
    """Publish with JetStream acks, `window` in flight; returns events/s."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    started = time.perf_counter()
    step = max(len(payloads) // 10, 1)
    for i in range(0, len(payloads), window):
        chunk = payloads[i : i + window]
        await asyncio.gather(*(js.publish(s, d, headers={"Nats-Msg-Id": m}) for s, d, m in chunk))
        if (i // step) != ((i + len(chunk)) // step):
            _progress(f"    published {i + len(chunk):,}/{len(payloads):,} events")
    rate = len(payloads) / (time.perf_counter() - started)
    await nc.close()
    return rate


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _health(port: int) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"http://{HOST}:{port}/readyz", timeout=2).json()
    return data


def end_to_end(
    n: int, payloads: list[tuple[str, bytes, str]], lines: int, cpus: str | None, env: dict[str, str]
) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="aigw-bench-metering-"))
    server = NatsServer(state / "nats", cpus=cpus).start()
    try:
        # The usage stream must exist before publishing: metering creates it; start it once first.
        port = free_port()
        binary = str(Path(sys.executable).parent / "aigw-metering")
        argv = ["taskset", "-c", cpus, binary] if cpus else [binary]
        service_env = {
            "AIGW_NATS_URL": server.url,
            "AIGW_METERING_DSN": f"chdb://{state / 'usage.chdb'}",
            "AIGW_METERING_HEALTH_PORT": str(port),
            "AIGW_LOG_LEVEL": "WARNING",
            **env,
        }

        def start() -> Process:
            proc = Process("metering", argv, state / "metering.log", env=service_env).start()
            proc.wait_ready(lambda: _health(port)["store_ok"], timeout=60)
            return proc

        first = start()
        first.stop()
        _progress(f"    publishing {n:,} events ({lines:,} lines)…")
        pub_rate = asyncio.run(_publish(server.url, payloads))
        proc = start()
        assert server.process is not None
        try:
            samples: list[tuple[float, int, float, float]] = []  # (time, lines, metering cpu, nats cpu)
            deadline = time.monotonic() + 600
            while True:
                inserted = _health(port)["inserted_lines"]
                now = time.perf_counter()
                if inserted and (not samples or inserted != samples[-1][1]):
                    samples.append((now, inserted, _cpu_seconds(proc.pid), _cpu_seconds(server.process.pid)))
                if inserted >= lines:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {inserted} of {lines} lines stored")
                time.sleep(0.02)
        finally:
            proc.stop()
        (t0, l0, m0, n0), (t1, l1, m1, n1) = samples[0], samples[-1]
        stored = l1 - l0
        return {
            "lines_per_s": stored / (t1 - t0) if t1 > t0 else float("nan"),
            # Independent of what else the machine runs: CPU the two processes spent per line.
            "metering_cpu_us_per_line": (m1 - m0) / stored * 1e6 if stored else float("nan"),
            "nats_cpu_us_per_line": (n1 - n0) / stored * 1e6 if stored else float("nan"),
            "publish_events_per_s": pub_rate,
            "lines": float(l1),
        }
    finally:
        server.stop()


def raw_insert(payloads: list[tuple[str, bytes, str]], batch_lines: int, runs: int) -> dict[str, float]:
    """In-process: prepared columns → store.insert, and JSON → parse → batch → insert."""
    from aigw_metering.rows import Batch, parse
    from aigw_metering.store import Store, parse_dsn

    path = Path(tempfile.mkdtemp(prefix="aigw-bench-raw-")) / "usage.chdb"
    store = Store(parse_dsn(f"chdb://{path}", "aigw"))
    store.open()
    try:
        batches: list[Batch] = []
        batch = Batch()
        for seq, (_, data, _) in enumerate(payloads, 1):
            batch.add(parse(data), seq)
            if batch.lines >= batch_lines:
                batches.append(batch)
                batch = Batch()
        insert_rates, pipeline_rates = [], []
        for _ in range(runs):
            started = time.perf_counter()
            for b in batches:
                store.insert(b.block(), b.token())
            insert_rates.append(sum(b.lines for b in batches) / (time.perf_counter() - started))
            started = time.perf_counter()
            total = 0
            batch = Batch()
            for seq, (_, data, _) in enumerate(payloads, 1):
                batch.add(parse(data), seq)
                if batch.lines >= batch_lines:
                    store.insert(batch.block(), batch.token())
                    total += batch.lines
                    batch = Batch()
            pipeline_rates.append(total / (time.perf_counter() - started))
        return {
            "insert_lines_per_s": statistics.median(insert_rates),
            "parse_and_insert_lines_per_s": statistics.median(pipeline_rates),
        }
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000, help="usage events per run (≈2.4 lines each)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--batch", type=int, default=20_000, help="lines per insert (AIGW_METERING_BATCH_LINES)"
    )
    parser.add_argument("--cpus", default=None, help="pin nats-server and metering to these CPUs (taskset)")
    parser.add_argument("--skip-raw", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the report (JSON) here")
    args = parser.parse_args()

    _progress(f"preparing {args.events:,} events…")
    payloads, lines = _payloads(args.events, seed=1)
    env = {"AIGW_METERING_BATCH_LINES": str(args.batch)}
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": {k: str(v) for k, v in vars(args).items()},
        "cpus_available": len(os.sched_getaffinity(0)),
        "events": args.events,
        "lines": lines,
    }
    runs = []
    for i in range(args.runs):
        _progress(f"end to end, run {i + 1}/{args.runs}")
        result = end_to_end(args.events, payloads, lines, args.cpus, env)
        _progress(
            f"    {result['lines_per_s']:,.0f} lines/s into chDB; CPU per line: metering "
            f"{result['metering_cpu_us_per_line']:.1f} µs, nats-server {result['nats_cpu_us_per_line']:.1f} µs"
        )
        runs.append(result)
    report["end_to_end_runs"] = runs
    report["end_to_end_lines_per_s_median"] = statistics.median(r["lines_per_s"] for r in runs)
    cpu = statistics.median(r["metering_cpu_us_per_line"] for r in runs)
    report["metering_cpu_us_per_line_median"] = cpu
    # What one dedicated core for metering would sustain, however busy the machine was meanwhile.
    report["lines_per_metering_cpu_second_median"] = 1e6 / cpu
    if not args.skip_raw:
        _progress("raw insert (in-process chDB)…")
        report["raw"] = raw_insert(payloads, args.batch, args.runs)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
