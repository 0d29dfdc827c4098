"""The upstream client's CPU per call: the worker's transport against httpx's own.

    uv run python -m bench.transport [--concurrency 16] [--tokens 16] [--calls 3000] [--runs 3]

The simulator runs on CPU 1, this process on CPU 0 (uvloop, as the worker runs). Each client makes
`--calls` non-stream chat completions, `--concurrency` at a time over kept-alive connections, and
reads every body; reported: this process's CPU µs per call (user + system, `time.process_time`),
median of `--runs`, clients alternated within each run:
* `httpx.AsyncClient` over its default transport (what a plain httpx caller pays);
* `httpx.AsyncHTTPTransport.handle_async_request` alone (no client layers: auth, redirects,
  cookies, hooks);
* `aigw_worker.transport.Http11Transport.handle_async_request`, what the worker uses.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import uvloop

from aigw_devstack.stack import Stack
from aigw_worker.transport import Http11Transport

Send = Callable[[httpx.Request], Awaitable[httpx.Response]]


def _request(url: str, tokens: int) -> httpx.Request:
    body = {
        "model": "sim-model",
        "messages": [{"role": "user", "content": f"Benchmark. [sim tokens={tokens}]"}],
    }
    return httpx.Request(
        "POST", url, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


async def _drive(send: Send, url: str, tokens: int, calls: int, concurrency: int) -> float:
    """CPU µs per call of `calls` calls through `send`."""
    left = calls

    async def one_worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await send(_request(url, tokens))
            await response.aread()
            await response.aclose()
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}")

    await asyncio.gather(*(one_worker() for _ in range(concurrency)))  # warm the connections
    left = calls
    started = time.process_time()
    await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


async def _measure(url: str, tokens: int, calls: int, concurrency: int) -> dict[str, float]:
    client = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_keepalive_connections=concurrency))
    default = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=concurrency))
    ours = Http11Transport(keepalive_expiry=30.0, max_idle_per_origin=concurrency)
    try:
        return {
            "httpx.AsyncClient (default transport)": await _drive(
                client.send, url, tokens, calls, concurrency
            ),
            "httpx.AsyncHTTPTransport": await _drive(
                default.handle_async_request, url, tokens, calls, concurrency
            ),
            "aigw Http11Transport": await _drive(ours.handle_async_request, url, tokens, calls, concurrency),
        }
    finally:
        await client.aclose()
        await default.aclose()
        await ours.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    cpus = os.sched_getaffinity(0)
    here, sim_cpu = ("0", "1") if len(cpus) >= 2 else ("0", "0")
    os.sched_setaffinity(0, {int(here)})
    stack = Stack(state_dir=Path(tempfile.mkdtemp(prefix="aigw-bench-")), cpu_simulator=sim_cpu, quiet=True)
    stack.start_simulator()
    url = f"{stack.sim_url}/v1/chat/completions"
    runs: list[dict[str, float]] = []
    try:
        for i in range(args.runs):
            print(f"  run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            runs.append(uvloop.run(_measure(url, args.tokens, args.calls, args.concurrency)))
    finally:
        stack.stop()
    print(f"CPU µs per call (c={args.concurrency}, {args.tokens}-token answers, median of {args.runs}):")
    ours = statistics.median(r["aigw Http11Transport"] for r in runs)
    for name in runs[0]:
        value = statistics.median(r[name] for r in runs)
        print(f"  {name:40} {value:7.0f}  ({value / ours:.1f}× the worker's)")


if __name__ == "__main__":
    main()
