"""`make bench`: the gateway against the simulator called directly, NATS and services on one core.

Layout (2 cores): nats-server and every aigw service pinned to CPU 0; the simulator and this load
generator on CPU 1. Each scenario runs `--runs` times and the median is reported, because these
machines are noisy. Added latency = gateway percentile - direct percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aigw_devstack.stack import Stack
from bench.loadgen import Result, median, run_load

HOST = "127.0.0.1"


def _body(model: str, tokens: int, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "user", "content": f"Benchmark prompt of a typical size. [sim tokens={tokens}]"}
        ],
    }
    if stream:
        body["stream"] = True
    return body


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_pinned_stack(metering: bool, request_log: bool = True) -> Stack:
    """The bench layout, started: nats-server and the services on CPU 0, the simulator and this
    process (the load generator) on CPU 1 (all on CPU 0 on a one-core machine)."""
    cpus = os.sched_getaffinity(0)
    services_cpu, client_cpu = ("0", "1") if len(cpus) >= 2 else ("0", "0")
    os.sched_setaffinity(0, {int(client_cpu)})
    stack = Stack(
        state_dir=Path(tempfile.mkdtemp(prefix="aigw-bench-")),
        with_metering=metering,
        cpu_services=services_cpu,
        cpu_simulator=client_cpu,
        quiet=True,
        # The request log stays on (as deployed): its cost is part of the figures; --no-request-log
        # measures without it.
        env={
            "AIGW_LOG_LEVEL": "WARNING",
            "AIGW_ACCESS_LOG": "false",
            "AIGW_REQUEST_LOG": "true" if request_log else "false",
        },
    )
    _progress(f"starting the stack (services on CPU {services_cpu}, simulator and load on CPU {client_cpu})…")
    stack.start()
    return stack


def scenario(
    stack: Stack, target: str, stream: bool, concurrency: int, tokens: int, duration: float, runs: int
) -> dict[str, float]:
    assert stack.demo is not None
    if target == "gateway":
        port, path, model, key = stack.edge_port, "/v1/chat/completions", "demo", stack.demo.key
    else:
        port, path, model, key = stack.sim_port, "/v1/chat/completions", "sim-model", None
    assert port is not None
    results: list[Result] = []
    for i in range(runs):
        _progress(f"  {target:8} stream={stream!s:5} c={concurrency:<3} run {i + 1}/{runs}")
        results.append(
            asyncio.run(run_load(HOST, port, path, _body(model, tokens, stream), key, concurrency, duration))
        )
    errors = sum(r.errors for r in results)
    return {
        "rps": median([r.rps for r in results]),
        "p50_ms": median([r.pct(r.latencies, 0.5) * 1000 for r in results]),
        "p99_ms": median([r.pct(r.latencies, 0.99) * 1000 for r in results]),
        "ttft_p50_ms": median([r.pct(r.ttfts, 0.5) * 1000 for r in results]) if stream else float("nan"),
        "events_per_s": median([r.events / r.elapsed for r in results]) if stream else float("nan"),
        "tokens_per_s": median([r.tokens / r.elapsed for r in results]) if stream else float("nan"),
        "errors": float(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per non-stream answer")
    parser.add_argument("--stream-tokens", type=int, default=64)
    parser.add_argument("--metering", action="store_true", help="also run the metering service on CPU 0")
    parser.add_argument("--no-request-log", action="store_true", help="the edge publishes no request log")
    parser.add_argument(
        "--only", help="comma list of scenarios to run, e.g. json/c1,json/c16 (the summary needs all)"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None

    stack = start_pinned_stack(args.metering, request_log=not args.no_request_log)
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    try:
        for target in ("direct", "gateway"):
            for stream, conc in ((False, 1), (False, 16), (False, 64), (True, 1), (True, 16)):
                tokens = args.stream_tokens if stream else args.tokens
                name = f"{'stream' if stream else 'json'}/c{conc}"
                if only is not None and name not in only:
                    continue
                key = f"{target}/{name}"
                report[key] = scenario(stack, target, stream, conc, tokens, args.duration, args.runs)
    finally:
        stack.stop()

    if only is not None:  # a partial run: the scenarios' own figures, no summary
        out = Path(__file__).parent / "results" / f"gateway-partial-{report['when'].replace(':', '')}.json"
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if "/" in k}, indent=2))
        return

    def added(name: str, field: str) -> float:
        return float(report[f"gateway/{name}"][field] - report[f"direct/{name}"][field])

    summary = {
        "non-stream req/s (c=16)": report["gateway/json/c16"]["rps"],
        "non-stream req/s (c=64)": report["gateway/json/c64"]["rps"],
        "added p50 ms (c=1)": added("json/c1", "p50_ms"),
        "added p99 ms (c=1)": added("json/c1", "p99_ms"),
        "added p50 ms (c=16)": added("json/c16", "p50_ms"),
        "added p99 ms (c=16)": added("json/c16", "p99_ms"),
        "streamed tokens/s (c=16)": report["gateway/stream/c16"]["tokens_per_s"],
        "streamed SSE events/s (c=16)": report["gateway/stream/c16"]["events_per_s"],
        "added TTFT p50 ms (c=1)": added("stream/c1", "ttft_p50_ms"),
        "direct simulator req/s (c=16)": report["direct/json/c16"]["rps"],
        "errors": sum(v.get("errors", 0) for k, v in report.items() if "/" in k),
    }
    report["summary"] = summary
    out = Path(__file__).parent / "results" / f"gateway-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
