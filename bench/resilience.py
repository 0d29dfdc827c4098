"""Resilience: how fast a gateway whose upstream hangs answers from its fallback, and what the
circuit-breaker and retry bookkeeping costs on the plain path.

    uv run python -m bench.resilience hang [--requests 40] [--concurrency 4]
    uv run python -m bench.resilience plain --baseline-worker /work/main/.venv/bin/aigw-worker [--runs 3]

`hang`: the whole stack, a gateway whose upstream never answers (the simulator's `fault=hang`)
with a healthy fallback and `"timeouts": {"ttft": 1}`; time to the answer, p50 and p99, with the
circuit breaker as shipped (5 failures open it for 30 s) and with it kept closed
(`AIGW_CIRCUIT_FAILURES=1000`, each request then waits its time to first token).

`plain`: the worker process alone (nats-server, the worker and this process on CPU 0, the
simulator on CPU 1), whole answers of 5 tokens at concurrency 64, healthy upstream: requests per
second and the worker's CPU per request, for this tree's worker and a baseline worker binary (an
older checkout's, without the bookkeeping), alternated `--runs` times; medians, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
from nats.aio.msg import Msg

from aigw_contracts import (
    ConfigSnapshot,
    Gateway,
    Timeouts,
    headers,
    subjects,
)
from aigw_contracts.events import EventKind
from aigw_contracts.ids import uuid7
from aigw_devstack.procs import Process
from aigw_devstack.stack import SIM_UPSTREAM, Stack
from bench.worker import _bin, _cpu_seconds, start_nats_and_simulator
from bench.worker import _envelope as envelope

HOST = "127.0.0.1"


# ---------------------------------------------------------------------- hanging primary
def _hang_stack(state: Path, env: dict[str, str]) -> Stack:
    hanging = "@sim/hanging"

    def config(stack: Stack) -> None:
        upstream = stack.sim_upstream("hanging")
        gateway = Gateway(
            id=uuid7(),
            name="hang",
            tenant="demo",
            upstream=hanging,
            fallbacks=[SIM_UPSTREAM],
            timeouts=Timeouts(ttft=1),
        )
        stack.add_to_config(ConfigSnapshot(upstreams=[upstream], gateways=[gateway]))

    stack = Stack(
        state_dir=state,
        with_metering=False,
        quiet=True,
        env={"AIGW_LOG_LEVEL": "WARNING", "AIGW_ACCESS_LOG": "false", **env},
        start_hooks=[config],
    )
    stack.start()
    return stack


async def _time_answers(stack: Stack, requests: int, concurrency: int) -> list[float]:
    assert stack.demo is not None
    body = {
        "model": "hang",
        "messages": [{"role": "user", "content": "hello [sim fault=hang fault_model=hanging tokens=5]"}],
    }
    auth = {"Authorization": f"Bearer {stack.demo.key}"}
    times: list[float] = []
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=stack.base_url, headers=auth, timeout=60) as client:

        async def one() -> None:
            while queue:
                queue.pop()
                started = time.perf_counter()
                resp = await client.post("/chat/completions", json=body)
                assert resp.status_code == 200, resp.text
                assert resp.headers["x-aigw-fallback"] == SIM_UPSTREAM
                times.append(time.perf_counter() - started)

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def hang(requests: int, concurrency: int) -> None:
    for label, env in (
        ("breaker as shipped (5 failures, 30 s)", {}),
        ("breaker kept closed", {"AIGW_CIRCUIT_FAILURES": "1000"}),
    ):
        stack = _hang_stack(Path(tempfile.mkdtemp(prefix="aigw-bench-hang-")), env)
        try:
            times = asyncio.run(_time_answers(stack, requests, concurrency))
        finally:
            stack.stop()
        print(
            f"  {label}: {requests} requests at concurrency {concurrency}, time to the fallback's "
            f"answer p50 {_pct(times, 0.5) * 1000:.0f} ms, p99 {_pct(times, 0.99) * 1000:.0f} ms "
            "(ttft timeout 1 s)"
        )


# ---------------------------------------------------------------------- plain path
def _envelope(sim_url: str) -> bytes:
    return envelope(sim_url, 5, stream=False, token_ms=0).model_dump_json().encode()


async def _plain_once(
    worker_bin: str, url: str, sim_url: str, state: Path, requests: int
) -> dict[str, float]:
    worker = Process(
        "worker",
        ["taskset", "-c", "0", worker_bin],
        state / f"worker-{time.monotonic_ns()}.log",
        env={"AIGW_NATS_URL": url, "AIGW_LOG_LEVEL": "WARNING"},
    ).start()
    nc = await nats.connect(url)
    done = 0
    goal = 1
    finished = asyncio.Event()
    window: asyncio.Semaphore | None = None  # requests in flight, while measuring

    async def on_event(msg: Msg) -> None:
        nonlocal done
        if (msg.headers or {}).get(headers.EVENT) != EventKind.DELTA.value:
            done += 1
            if window is not None:
                window.release()
            if done >= goal:
                finished.set()

    try:
        await nc.subscribe(subjects.reply_wildcard("bench"), cb=on_event, pending_msgs_limit=-1)
        await nc.flush()
        deadline = time.monotonic() + 30
        while not finished.is_set():  # warm up until the worker listens
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker never answered; its log:\n{worker.tail()}")
            await nc.publish(subjects.WORKER_CHAT, _envelope(sim_url))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), 0.5)
        await asyncio.sleep(0.6)  # answers to the warm-up's repeats, if any, come in before counting
        window = asyncio.Semaphore(64)
        done, goal = 0, requests
        finished.clear()
        bodies = [_envelope(sim_url) for _ in range(requests)]
        cpu0 = _cpu_seconds(worker.pid)
        started = time.perf_counter()
        for body in bodies:
            await window.acquire()
            await nc.publish(subjects.WORKER_CHAT, body)
        await asyncio.wait_for(finished.wait(), 120)
        elapsed = time.perf_counter() - started
        cpu = _cpu_seconds(worker.pid) - cpu0
    finally:
        await nc.close()
        worker.stop()
    return {"rps": requests / elapsed, "cpu_us": cpu / requests * 1e6}


async def plain(baseline: str, runs: int, requests: int) -> None:
    state, server, sim, sim_url = start_nats_and_simulator("aigw-bench-plain-")
    results: dict[str, list[dict[str, float]]] = {"this tree": [], "baseline": []}
    try:
        for _ in range(runs):
            for label, binary in (("baseline", baseline), ("this tree", _bin("aigw-worker"))):
                results[label].append(await _plain_once(binary, server.url, sim_url, state, requests))
    finally:
        sim.stop()
        server.stop()
    med: dict[str, Any] = {}
    for label, rows in results.items():
        med[label] = {k: statistics.median(r[k] for r in rows) for k in ("rps", "cpu_us")}
        print(
            f"  {label}: median of {runs}: {med[label]['rps']:,.0f} req/s, worker CPU "
            f"{med[label]['cpu_us']:.0f} us/request  (runs: "
            + ", ".join(f"{r['rps']:,.0f}" for r in rows)
            + ")"
        )
    print(
        f"  ratio this tree / baseline: throughput {med['this tree']['rps'] / med['baseline']['rps']:.3f}, "
        f"CPU per request {med['this tree']['cpu_us'] / med['baseline']['cpu_us']:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("hang")
    p.add_argument("--requests", type=int, default=40)
    p.add_argument("--concurrency", type=int, default=4)
    p = sub.add_parser("plain")
    p.add_argument("--baseline-worker", required=True, help="an aigw-worker binary to compare with")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    if args.what == "hang":
        print("a hanging primary with a healthy fallback:")
        hang(args.requests, args.concurrency)
    else:
        print(f"plain path, whole answers of 5 tokens, the worker alone (baseline {args.baseline_worker}):")
        asyncio.run(plain(args.baseline_worker, args.runs, args.requests))


if __name__ == "__main__":
    main()
