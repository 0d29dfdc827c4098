"""What tracing costs: the gateway bench layout (`bench/gateway.py`) with tracing off, on with
every request sampled, and on with 1 % sampled, exporting to an OTLP/HTTP sink.

    uv run python -m bench.tracing [--runs 3] [--duration 4]

The sink (`--sink PORT`, started as a subprocess on the load generator's core) answers every
export with 200 and drops it, so what is measured is the services' side: spans made, sampled,
batched, serialized and sent. Each mode starts a fresh stack; each scenario is the median of
`--runs` runs. Added p50 = the gateway's p50 - the simulator's p50 called directly.
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
from bench import gateway
from bench.gateway import HOST, scenario, start_pinned_stack

MODES: dict[str, dict[str, str]] = {
    "off": {},
    "on, 100 %": {"OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "on, 1 %": {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"},
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        sink(args.sink)
        return
    cpus = os.sched_getaffinity(0)  # `start_pinned_stack` pins this process: restored per mode
    port = free_port()
    cpu = "1" if len(os.sched_getaffinity(0)) >= 2 else "0"  # the load generator's core
    sink_proc = subprocess.Popen(
        ["taskset", "-c", cpu, sys.executable, "-m", "bench.tracing", "--sink", str(port)]
    )
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    try:
        for mode, env in MODES.items():
            if env:
                env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{port}"}
            for name, value in env.items():
                os.environ[name] = value  # the stack passes its environment to every service
            os.sched_setaffinity(0, cpus)
            stack = start_pinned_stack(False)
            try:
                if "direct" not in report:
                    report["direct"] = {
                        f"c{c}": scenario(stack, "direct", False, c, args.tokens, args.duration, args.runs)
                        for c in (1, 16)
                    }
                report[mode] = {
                    f"c{c}": scenario(stack, "gateway", False, c, args.tokens, args.duration, args.runs)
                    for c in (1, 16)
                }
            finally:
                stack.stop()
                for name in env:
                    os.environ.pop(name, None)
    finally:
        sink_proc.terminate()
        sink_proc.wait(5)
    summary = {
        mode: {
            "req/s c=16": round(report[mode]["c16"]["rps"], 1),
            "added p50 ms c=1": round(report[mode]["c1"]["p50_ms"] - report["direct"]["c1"]["p50_ms"], 3),
            "added p50 ms c=16": round(report[mode]["c16"]["p50_ms"] - report["direct"]["c16"]["p50_ms"], 3),
        }
        for mode in MODES
    }
    report["summary"] = summary
    out = Path(gateway.__file__).parent / "results" / f"tracing-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
