"""The inference worker end to end: delta events relayed per second and its CPU per event.

    uv run python -m bench.worker [--streams 40] [--tokens 200]

The real worker process relays S concurrent streams of T tokens from the simulator (token_ms=1, so
tokens arrive in separate reads and are not coalesced away); reported: delta events relayed, per
second, and the worker's CPU time per event. The cost of one publish alone (faststream's
`broker.publish`, the runtime's `Bus.publish`, nats-py's) is measured by `bench.bus`.

nats-server, the bench process and the worker share CPU 0 (the system benchmark's layout); the
simulator runs on CPU 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nats
from nats.aio.msg import Msg

from aigw_contracts import (
    ChatCompletionRequest,
    ChatEnvelope,
    Prices,
    RoutedCall,
    UpstreamTarget,
    headers,
    subjects,
)
from aigw_contracts.events import EventKind
from aigw_contracts.ids import uuid7
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import Process, free_port

HOST = "127.0.0.1"


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _envelope(sim_url: str, tokens: int, stream: bool = True, token_ms: int = 1) -> ChatEnvelope:
    request_id = uuid7()
    content = f"bench [sim tokens={tokens} token_ms={token_ms}]"
    return ChatEnvelope(
        request_id=request_id,
        tenant="bench",
        key_id="bench",
        reply=subjects.reply_subject("bench", request_id),
        deadline=time.time() + 120,
        request=ChatCompletionRequest.model_validate(
            {"model": "bench", "messages": [{"role": "user", "content": content}], "stream": stream}
        ),
        route=RoutedCall(
            upstream=UpstreamTarget(
                id="@sim/sim-model",
                kind="catalog",
                provider="sim",
                model="sim-model",
                base_url=f"{sim_url}/v1",
                prices=Prices(),
            ),
            body={"messages": [{"role": "user", "content": content}]},
            response_model="@sim/sim-model",
        ),
    )


async def end_to_end(url: str, sim_url: str, state: Path, streams: int, tokens: int) -> dict[str, float]:
    worker = Process(
        "worker",
        ["taskset", "-c", "0", _bin("aigw-worker")],
        state / "worker.log",
        env={"AIGW_NATS_URL": url, "AIGW_LOG_LEVEL": "WARNING"},
    ).start()
    nc = await nats.connect(url)
    deltas = 0
    ended: set[str] = set()
    expected = 1
    all_done = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        nonlocal deltas
        kind = (msg.headers or {}).get(headers.EVENT)
        if kind == EventKind.DELTA.value:
            deltas += 1
        else:
            ended.add(msg.subject)
            if len(ended) == expected:
                all_done.set()

    await nc.subscribe(
        subjects.reply_wildcard("bench"), cb=on_event, pending_msgs_limit=-1, pending_bytes_limit=-1
    )
    await nc.flush()
    # warm up: one stream, so connections and imports are not measured; polled until the worker listens
    deadline = time.monotonic() + 30
    while not all_done.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker never answered; its log:\n{worker.tail()}")
        await nc.publish(subjects.WORKER_CHAT, _envelope(sim_url, 5).model_dump_json().encode())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_done.wait(), 0.5)
    deltas, ended, expected = 0, set(), streams
    all_done.clear()
    envelopes = [_envelope(sim_url, tokens) for _ in range(streams)]
    cpu0 = _cpu_seconds(worker.pid)
    started = time.perf_counter()
    for env in envelopes:
        await nc.publish(subjects.WORKER_CHAT, env.model_dump_json().encode())
    await asyncio.wait_for(all_done.wait(), 120)
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(worker.pid) - cpu0
    await nc.close()
    worker.stop()
    return {
        "deltas": deltas,
        "deltas_per_s": deltas / elapsed,
        "cpu_us_per_delta": cpu / max(deltas, 1) * 1e6,
    }


def start_simulator(state: Path) -> tuple[Process, str]:
    """The simulator on CPU 1, ready; its process and root URL."""
    sim_port = free_port()
    sim = Process(
        "simulator",
        ["taskset", "-c", "1", _bin("aigw-simulator"), "--port", str(sim_port)],
        state / "sim.log",
    ).start()
    sim_url = f"http://{HOST}:{sim_port}"

    def sim_up() -> bool:
        try:
            return httpx.get(f"{sim_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    sim.wait_ready(sim_up)
    return sim, sim_url


def start_nats_and_simulator(prefix: str) -> tuple[Path, NatsServer, Process, str]:
    """The worker benchmarks' layout: this process and nats-server on CPU 0 (the worker goes there
    too), the simulator on CPU 1. Returns the state folder, the server, the simulator and its URL."""
    state = Path(tempfile.mkdtemp(prefix=prefix))
    os.sched_setaffinity(0, {0})
    server = NatsServer(state / "nats", cpus="0").start()
    sim, sim_url = start_simulator(state)
    return state, server, sim, sim_url


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=200)
    args = parser.parse_args()
    state, server, sim, sim_url = start_nats_and_simulator("aigw-bench-worker-")
    try:
        print(f"end to end, {args.streams} streams x {args.tokens} tokens through the worker:")
        r = await end_to_end(server.url, sim_url, state, args.streams, args.tokens)
        print(
            f"  deltas={r['deltas']:.0f} {r['deltas_per_s']:,.0f} deltas/s, "
            f"worker CPU {r['cpu_us_per_delta']:.1f} us/delta"
        )
    finally:
        sim.stop()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
