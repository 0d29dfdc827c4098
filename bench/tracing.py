"""What tracing costs: the gateway bench layout (`bench/gateway.py`) with tracing off, on with
every request sampled, and on with 1 % sampled, exporting to an OTLP/HTTP sink.

    uv run python -m bench.tracing [--runs 3] [--duration 4]

One stack per mode, all started first (each with its `OTEL_*` environment; an idle stack costs
next to nothing), then the runs interleaved (off, 100 %, 1 %, off, …) so that load from other
jobs on the machine falls on every mode alike, with a pause after each run for the spans still
queued to be exported (otherwise the 100 % stack's last batches land in the next mode's run). Reported per mode and concurrency, medians of
`--runs`: req/s, added p50 (the gateway's p50 - the simulator's called directly) and the CPU the
request path used per request (edge, router, worker and nats-server, user + system, from /proc),
the figure least disturbed by a loaded machine.

The sink (`--sink PORT`, a subprocess on the load generator's core) answers every export with 200
and drops it, so what is measured is the services' side: spans made, sampled, batched, serialized
and sent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aigw_devstack.procs import free_port
from aigw_devstack.stack import Stack
from bench.cpu import measure
from bench.gateway import HOST, _progress, scenario, start_pinned_stack
from bench.loadgen import median

MODES: dict[str, dict[str, str]] = {
    "off": {},
    "on, 100 %": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "on, 1 %": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}
_REQUEST_PATH = ("edge", "router-0", "worker-0", "nats-server")


def sink(port: int) -> None:
    class Drop(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer((HOST, port), Drop).serve_forever()


def _pids(stack: Stack) -> dict[str, int]:
    pids = {name: stack.procs[name].pid for name in _REQUEST_PATH if name in stack.procs}
    assert stack.nats is not None and stack.nats.process is not None
    pids["nats-server"] = stack.nats.process.pid
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--control",
        action="store_true",
        help="a second stack without tracing, measured last: the noise floor",
    )
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    modes = {**MODES, **({"off, again": {}} if args.control else {})}
    if args.sink:
        sink(args.sink)
        return
    cpus = os.sched_getaffinity(0)  # `start_pinned_stack` pins this process: restored per stack
    port = free_port()
    cpu = "1" if len(cpus) >= 2 else "0"  # the load generator's core
    sink_proc = subprocess.Popen(
        ["taskset", "-c", cpu, sys.executable, "-m", "bench.tracing", "--sink", str(port)]
    )
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    stacks: dict[str, Stack] = {}
    try:
        for mode, env in modes.items():
            if env:
                # Batches leave within half a second, so a mode's exports have ended before the
                # next mode's run starts (they share CPU 0; see the pause below).
                env = {
                    **env,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{port}",
                    "OTEL_BSP_SCHEDULE_DELAY": "500",
                }
            os.environ.update(env)  # the stack passes its environment to every service
            os.sched_setaffinity(0, cpus)
            try:
                stacks[mode] = start_pinned_stack(False)
            finally:
                for name in env:
                    os.environ.pop(name, None)
        first = next(iter(stacks.values()))
        report["direct"] = {
            f"c{c}": scenario(first, "direct", False, c, 16, args.duration, args.runs)
            for c in args.concurrency
        }
        runs: dict[tuple[str, int], list[dict[str, Any]]] = {
            (m, c): [] for m in modes for c in args.concurrency
        }
        for i in range(args.runs):
            for c in args.concurrency:
                for mode, stack in stacks.items():
                    _progress(f"  {mode:10} c={c:<3} run {i + 1}/{args.runs}")
                    runs[(mode, c)].append(measure(stack, _pids(stack), c, False, args.duration))
                    time.sleep(1.0)  # the spans still queued in this stack go out before the next run
        for (mode, c), rows in runs.items():
            report.setdefault(mode, {})[f"c{c}"] = {
                "rps": median([r["rps"] for r in rows]),
                "p50_ms": median([r["p50_ms"] for r in rows]),
                "cpu_us_per_request": median(
                    [sum(p["user_us"] + p["sys_us"] for p in r["cpu"].values()) for r in rows]
                ),
            }
    finally:
        for stack in stacks.values():
            stack.stop()
        sink_proc.terminate()
        sink_proc.wait(5)
    summary = {
        mode: {
            f"c={c}": {
                "req/s": round(report[mode][f"c{c}"]["rps"], 1),
                "added p50 ms": round(
                    report[mode][f"c{c}"]["p50_ms"] - report["direct"][f"c{c}"]["p50_ms"], 2
                ),
                "CPU µs/request": round(report[mode][f"c{c}"]["cpu_us_per_request"]),
            }
            for c in args.concurrency
        }
        for mode in modes
    }
    report["summary"] = summary
    out = Path(__file__).parent / "results" / f"tracing-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
