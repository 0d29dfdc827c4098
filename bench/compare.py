"""Side by side: the same load against aigw and any other OpenAI-compatible gateway, in one run.

    uv run python -m bench.compare --sim-port 18080 \\
        --peer litellm=http://127.0.0.1:4000/v1 --peer-key litellm=sk-1234 --peer-model litellm=sim \\
        --peer-pid litellm=12345

Starts aigw as `make bench` does (nats-server and the services on CPU 0, the simulator and this
load generator on CPU 1) with the simulator on `--sim-port`, so a peer gateway started beforehand
(pinned to CPU 0 too: `taskset -c 0 …`) can be pointed at the same upstream:
`http://127.0.0.1:<sim-port>/v1`, model `sim-model`, any API key. Each scenario then runs against
the simulator called directly, aigw and every peer, alternating targets within each round so drift
on a noisy machine hits all alike; medians of `--runs` rounds.

Every answer is checked: status 200 and exactly the number of words the simulator was asked for
(`[sim tokens=N]`), whole or streamed; a gateway that answers fast but wrong shows up in `wrong`.
With `--peer-pid`, the peer's CPU per request is read from /proc like aigw's (Linux only).
Plain HTTP only (the load generator speaks HTTP/1.1 over TCP).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.gateway import HOST, _body, _progress, start_pinned_stack
from bench.loadgen import Result, median, run_load
from bench.procs import CpuMeter, stack_pids


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    path: str  # of chat completions
    model: str
    key: str | None
    pids: dict[str, int]  # processes whose CPU counts as this target's


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"{what} must be NAME=VALUE, got {value!r}")
        pairs[name] = rest
    return pairs


def peer_target(name: str, url: str, key: str | None, model: str, pids: dict[str, int]) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--peer {name}: an http:// base URL such as http://127.0.0.1:4000/v1, got {url!r}")
    path = parts.path.rstrip("/") + "/chat/completions"
    return Target(name, parts.hostname, parts.port or 80, path, model, key, pids)


def expected_words(tokens: int) -> Any:
    def check(status: int, text: str) -> bool:
        return status == 200 and len(text.split()) == tokens

    return check


def run_once(target: Target, stream: bool, concurrency: int, tokens: int, duration: float) -> dict[str, Any]:
    meter = CpuMeter(target.pids)
    meter.start()
    result: Result = asyncio.run(
        run_load(
            target.host,
            target.port,
            target.path,
            _body(target.model, tokens, stream),
            target.key,
            concurrency,
            duration,
            check=expected_words(tokens),
        )
    )
    used = meter.stop()
    per_request = sum(used.values()) / max(1, result.requests) * 1e6 if target.pids else float("nan")
    return {
        "rps": result.rps,
        "p50_ms": result.pct(result.latencies, 0.5) * 1000,
        "p99_ms": result.pct(result.latencies, 0.99) * 1000,
        "errors": result.errors,
        "wrong": result.wrong,
        "cpu_us_per_request": per_request,
        "sample": result.contents[:1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--peer", action="append", default=[], help="NAME=BASE_URL of another gateway")
    parser.add_argument("--peer-key", action="append", default=[], help="NAME=API_KEY for that gateway")
    parser.add_argument("--peer-model", action="append", default=[], help="NAME=MODEL (default sim-model)")
    parser.add_argument("--peer-pid", action="append", default=[], help="NAME=PID[,PID…]: its processes")
    parser.add_argument("--sim-port", type=int, default=0, help="the simulator's port (default: any free)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--stream", action="store_true", help="streamed answers instead of whole ones")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    keys, models = _pairs(args.peer_key, "--peer-key"), _pairs(args.peer_model, "--peer-model")
    peer_pids = {
        name: {f"{name}-{i}": int(pid) for i, pid in enumerate(pids.split(","))}
        for name, pids in _pairs(args.peer_pid, "--peer-pid").items()
    }
    peers = [
        peer_target(name, url, keys.get(name), models.get(name, "sim-model"), peer_pids.get(name, {}))
        for name, url in _pairs(args.peer, "--peer").items()
    ]

    stack = start_pinned_stack(metering=True, sim_port=args.sim_port)
    assert stack.demo is not None and stack.edge_port is not None
    _progress(f"simulator for peers: {stack.sim_url}/v1 (model sim-model)")
    pids = stack_pids(stack)
    aigw_pids = {name: pid for name, pid in pids.items() if name != "simulator"}
    targets = [
        Target(
            "direct",
            HOST,
            stack.sim_port,
            "/v1/chat/completions",
            "sim-model",
            None,
            {"simulator": pids["simulator"]},
        ),
        Target("aigw", HOST, stack.edge_port, "/v1/chat/completions", "demo", stack.demo.key, aigw_pids),
        *peers,
    ]
    report: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args)}
    try:
        for concurrency in args.concurrency:
            runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            for i in range(args.runs):
                for target in targets:
                    _progress(f"  c={concurrency} stream={args.stream} {target.name} run {i + 1}/{args.runs}")
                    runs[target.name].append(
                        run_once(target, args.stream, concurrency, args.tokens, args.duration)
                    )
            direct_rps = median([r["rps"] for r in runs["direct"]])
            direct_p50 = median([r["p50_ms"] for r in runs["direct"]])
            row: dict[str, Any] = {}
            for name, results in runs.items():
                rps = median([r["rps"] for r in results])
                row[name] = {
                    "req/s": round(rps, 1),
                    "÷ simulator": round(rps / direct_rps, 3) if direct_rps else float("nan"),
                    "p50 ms": round(median([r["p50_ms"] for r in results]), 2),
                    "added p50 ms": round(median([r["p50_ms"] for r in results]) - direct_p50, 2),
                    "p99 ms": round(median([r["p99_ms"] for r in results]), 2),
                    "CPU µs per request": round(median([r["cpu_us_per_request"] for r in results]), 1),
                    "errors": sum(r["errors"] for r in results),
                    "wrong answers": sum(r["wrong"] for r in results),
                    "sample answer": results[-1]["sample"][:1],
                }
            report[f"{'stream' if args.stream else 'json'}/c{concurrency}"] = row
    finally:
        stack.stop()
    out = Path(__file__).parent / "results" / f"compare-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    for scenario, row in report.items():
        if "/" not in scenario:
            continue
        print(scenario)
        for name, figures in row.items():
            shown = {k: v for k, v in figures.items() if k != "sample answer"}
            print(f"  {name:10} {json.dumps(shown, ensure_ascii=False)}")
    print(f"full report: {out}", file=sys.stderr)
    if any(
        figures["wrong answers"]
        for row in report.values()
        if isinstance(row, dict)
        for figures in row.values()
        if isinstance(figures, dict)
    ):
        sys.exit(1)


if __name__ == "__main__":
    main()
