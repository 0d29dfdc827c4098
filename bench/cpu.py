"""CPU per request of each process on the request path: where a request's time goes.

`uv run python -m bench.cpu [--concurrency 1 64] [--stream]`: starts the stack as `make bench` does
(nats-server and the services on CPU 0, the simulator and this load generator on CPU 1), drives
non-stream (or streamed) requests to the demo gateway, and reads each process's user and system CPU
time from /proc before and after. Reported per request, in microseconds, median of `--runs`.

Why it matters: with every service sharing one core, the added latency at concurrency 1 is about
the sum of these numbers; at higher concurrency they shrink (batched reads and writes, warm caches),
which is where the throughput comes from. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from aigw_devstack.stack import Stack
from bench.gateway import HOST, _body, _progress, start_pinned_stack
from bench.loadgen import median, run_load
from bench.procs import cpu_seconds


def measure(
    stack: Stack, pids: dict[str, int], concurrency: int, stream: bool, duration: float
) -> dict[str, Any]:
    assert stack.demo is not None and stack.edge_port is not None
    body = _body("demo", 64 if stream else 16, stream)
    asyncio.run(
        run_load(HOST, stack.edge_port, "/v1/chat/completions", body, stack.demo.key, concurrency, 1.0)
    )
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = asyncio.run(
        run_load(HOST, stack.edge_port, "/v1/chat/completions", body, stack.demo.key, concurrency, duration)
    )
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    requests = max(1.0, result.rps * duration)
    per_process = {
        name: {
            "user_us": (after[name][0] - before[name][0]) / requests * 1e6,
            "sys_us": (after[name][1] - before[name][1]) / requests * 1e6,
        }
        for name in pids
    }
    return {"rps": result.rps, "p50_ms": result.pct(result.latencies, 0.5) * 1000, "cpu": per_process}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--stream", action="store_true", help="streamed answers of 64 tokens")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-request-log", action="store_true", help="the edge publishes no request log")
    args = parser.parse_args()

    stack = start_pinned_stack(metering=False, request_log=not args.no_request_log)
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    try:
        pids = {name: proc.pid for name, proc in stack.procs.items() if name != "retrieval"}
        assert stack.nats is not None and stack.nats.process is not None
        pids["nats-server"] = stack.nats.process.pid
        for concurrency in args.concurrency:
            runs = []
            for i in range(args.runs):
                _progress(f"  c={concurrency} stream={args.stream} run {i + 1}/{args.runs}")
                runs.append(measure(stack, pids, concurrency, args.stream, args.duration))
            report[f"c{concurrency}"] = {
                "rps": median([r["rps"] for r in runs]),
                "p50_ms": median([r["p50_ms"] for r in runs]),
                "cpu_us_per_request": {
                    name: {
                        kind: round(median([r["cpu"][name][kind] for r in runs]), 1)
                        for kind in ("user_us", "sys_us")
                    }
                    for name in pids
                },
            }
    finally:
        stack.stop()
    out = Path(__file__).parent / "results" / f"cpu-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    for concurrency in args.concurrency:
        row = report[f"c{concurrency}"]
        print(f"c={concurrency}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms; CPU µs per request:")
        for name, cpu in row["cpu_us_per_request"].items():
            print(f"  {name:12} user {cpu['user_us']:7.1f}  sys {cpu['sys_us']:7.1f}")
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
