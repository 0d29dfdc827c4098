"""`make bench`: the gateway against the simulator called directly, NATS and services on one core.

Layout (2 cores): nats-server and every aigw service pinned to CPU 0; the simulator and this load
generator on CPU 1. Each scenario runs `--runs` times and the median is reported, because these
machines are noisy. Added latency = gateway percentile - direct percentile.

What it reports, besides requests/s and latencies:
* CPU µs per request of every process (edge, router, worker, metering, retrieval, nats-server) and
  their total, from the kernel's counters around each run (`bench/procs.py`); for the simulator
  called directly, its own CPU per request;
* the gateway's requests/s as a ratio to the simulator called directly in the same run (absolute
  figures do not travel between machines, ratios do);
* a paced stream: `--paced-tokens` tokens `--paced-ms` apart, each its own network write by the
  simulator (as real models send them; the plain stream scenarios get all their tokens in one read),
  reporting the relayed deltas/s and the gateway's CPU µs per delta.
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
from bench.procs import CpuMeter, stack_pids

HOST = "127.0.0.1"


def _body(model: str, tokens: int, stream: bool, token_ms: float = 0.0) -> dict[str, Any]:
    pace = f" token_ms={token_ms:g}" if token_ms else ""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "user", "content": f"Benchmark prompt of a typical size. [sim tokens={tokens}{pace}]"}
        ],
    }
    if stream:
        body["stream"] = True
    return body


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def start_pinned_stack(metering: bool, request_log: bool = True, sim_port: int = 0) -> Stack:
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
        sim_port=sim_port,
    )
    _progress(f"starting the stack (services on CPU {services_cpu}, simulator and load on CPU {client_cpu})…")
    stack.start()
    return stack


def scenario(
    stack: Stack,
    target: str,
    stream: bool,
    concurrency: int,
    tokens: int,
    duration: float,
    runs: int,
    token_ms: float = 0.0,
) -> dict[str, Any]:
    assert stack.demo is not None
    if target == "gateway":
        port, path, model, key = stack.edge_port, "/v1/chat/completions", "demo", stack.demo.key
    else:
        port, path, model, key = stack.sim_port, "/v1/chat/completions", "sim-model", None
    assert port is not None
    meter = CpuMeter(stack_pids(stack))
    results: list[Result] = []
    cpu_runs: list[dict[str, float]] = []
    for i in range(runs):
        _progress(
            f"  {target:8} stream={stream!s:5} c={concurrency:<3} paced={token_ms:g} run {i + 1}/{runs}"
        )
        meter.start()
        result = asyncio.run(
            run_load(HOST, port, path, _body(model, tokens, stream, token_ms), key, concurrency, duration)
        )
        used = meter.stop()
        results.append(result)
        per_request = {name: seconds / max(1, result.requests) * 1e6 for name, seconds in used.items()}
        per_request["total"] = sum(v for name, v in per_request.items() if name != "simulator")
        # Per upstream delta: each of a stream's `tokens` tokens is one delta the gateway relays.
        per_request["per_delta_total"] = per_request["total"] / tokens if stream else float("nan")
        cpu_runs.append(per_request)
    errors = sum(r.errors for r in results)
    cpu = {name: round(median([c[name] for c in cpu_runs]), 1) for name in cpu_runs[0]}
    if target == "direct":
        cpu = {"simulator": cpu["simulator"]}
    return {
        "rps": median([r.rps for r in results]),
        "p50_ms": median([r.pct(r.latencies, 0.5) * 1000 for r in results]),
        "p99_ms": median([r.pct(r.latencies, 0.99) * 1000 for r in results]),
        "ttft_p50_ms": median([r.pct(r.ttfts, 0.5) * 1000 for r in results]) if stream else float("nan"),
        "events_per_s": median([r.events / r.elapsed for r in results]) if stream else float("nan"),
        "tokens_per_s": median([r.tokens / r.elapsed for r in results]) if stream else float("nan"),
        "errors": float(errors),
        "cpu_us_per_request": cpu,
    }


SCENARIOS = ((False, 1), (False, 16), (False, 64), (True, 1), (True, 16))
PACED_CONCURRENCY = (1, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per non-stream answer")
    parser.add_argument("--stream-tokens", type=int, default=64)
    parser.add_argument("--paced-tokens", type=int, default=100, help="tokens of the paced stream")
    parser.add_argument("--paced-ms", type=float, default=1.0, help="ms between the paced stream's tokens")
    parser.add_argument(
        "--metering",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the metering service on CPU 0 too (it stores every request's usage)",
    )
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
            for stream, conc in SCENARIOS:
                tokens = args.stream_tokens if stream else args.tokens
                name = f"{'stream' if stream else 'json'}/c{conc}"
                if only is not None and name not in only:
                    continue
                key = f"{target}/{name}"
                report[key] = scenario(stack, target, stream, conc, tokens, args.duration, args.runs)
            for conc in PACED_CONCURRENCY:
                report[f"{target}/paced/c{conc}"] = scenario(
                    stack, target, True, conc, args.paced_tokens, args.duration, args.runs, args.paced_ms
                )
    finally:
        stack.stop()

    if only is not None:  # a partial run: the scenarios' own figures, no summary
        out = Path(__file__).parent / "results" / f"gateway-partial-{report['when'].replace(':', '')}.json"
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if "/" in k}, indent=2))
        return

    def added(name: str, field: str) -> float:
        return float(report[f"gateway/{name}"][field] - report[f"direct/{name}"][field])

    def ratio(name: str, field: str) -> float:
        return float(report[f"gateway/{name}"][field] / report[f"direct/{name}"][field])

    def cpu(name: str) -> dict[str, float]:
        per = dict(report[f"gateway/{name}"]["cpu_us_per_request"])
        per.pop("simulator", None)
        per.pop("per_delta_total", None)
        return per

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
        "gateway÷simulator req/s (c=1)": ratio("json/c1", "rps"),
        "gateway÷simulator req/s (c=16)": ratio("json/c16", "rps"),
        "gateway÷simulator req/s (c=64)": ratio("json/c64", "rps"),
        "CPU µs per request (c=1)": cpu("json/c1"),
        "CPU µs per request (c=16)": cpu("json/c16"),
        "simulator CPU µs per request, called directly (c=16)": report["direct/json/c16"][
            "cpu_us_per_request"
        ]["simulator"],
        "paced stream deltas/s (c=1)": report["gateway/paced/c1"]["events_per_s"],
        "paced stream deltas/s (c=16)": report["gateway/paced/c16"]["events_per_s"],
        "paced stream deltas/s, direct (c=1)": report["direct/paced/c1"]["events_per_s"],
        "paced stream deltas/s, direct (c=16)": report["direct/paced/c16"]["events_per_s"],
        "paced stream CPU µs per delta (c=1)": report["gateway/paced/c1"]["cpu_us_per_request"][
            "per_delta_total"
        ],
        "paced stream CPU µs per delta (c=16)": report["gateway/paced/c16"]["cpu_us_per_request"][
            "per_delta_total"
        ],
        "errors": sum(v.get("errors", 0) for k, v in report.items() if "/" in k),
    }
    report["summary"] = summary
    out = Path(__file__).parent / "results" / f"gateway-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
