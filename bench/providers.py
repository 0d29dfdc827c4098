"""Worker CPU per request and per streamed delta for each provider adapter, against the simulator
speaking each provider's wire format; the OpenAI path (no translation) is the baseline.

    uv run python -m bench.providers [--runs 3] [--requests 1000] [--streams 20] [--tokens 200]

The real worker process (CPU 0, with nats-server and this process) calls the simulator (CPU 1):
`--requests` whole answers of 16 words, 50 at a time, then `--streams` concurrent streams of
`--tokens` tokens paced 1 ms apart (so each token is its own network read and its own delta).
Reported per adapter: the median over `--runs` runs of the worker's CPU per request and per delta
(from /proc), and its ratio to the OpenAI path's; and, first, the adapters' own work measured in
this process (`translation_cost`), which a loaded machine disturbs far less.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from aigw_devstack.procs import Process

from .worker import _bin, _cpu_seconds, start_simulator

ADAPTERS = {  # name -> (api, provider, base path under the simulator)
    "openai": (None, "sim", "/v1"),
    "azure": ("azure", "azure", "/openai"),
    "anthropic": ("anthropic", "anthropic", "/v1"),
    "gemini": ("gemini", "google", "/v1beta"),
    "bedrock": ("bedrock", "bedrock", ""),
}
KEYS = {
    "anthropic": "sk-bench",
    "google": "g-bench",
    "azure": "az-bench",
    "bedrock": "AKIDBENCH:bench-secret",
}


def _envelope(sim_url: str, adapter: str, content: str, stream: bool) -> ChatEnvelope:
    api, provider, path = ADAPTERS[adapter]
    request_id = uuid7()
    messages = [{"role": "system", "content": "You are a benchmark."}, {"role": "user", "content": content}]
    return ChatEnvelope(
        request_id=request_id,
        tenant="bench",
        key_id="bench",
        reply=subjects.reply_subject("bench", request_id),
        deadline=time.time() + 120,
        request=ChatCompletionRequest.model_validate(
            {"model": "bench", "messages": messages[1:], "stream": stream or None}
        ),
        route=RoutedCall(
            upstream=UpstreamTarget(
                id=f"@{provider}/bench",
                kind="catalog",
                provider=provider,
                model="bench-model",
                base_url=sim_url + path,
                prices=Prices(input=1, output=2),
                api=api,
            ),
            body={"messages": messages, "temperature": 0.5},
            response_model=f"@{provider}/bench",
        ),
    )


class Client:
    """Publishes envelopes to the worker and counts the events that come back."""

    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc
        self.deltas = 0
        self.ended: dict[str, str] = {}
        self.waiting = 0
        self.done = asyncio.Event()
        self.last_error = b""

    async def start(self) -> None:
        async def on_event(msg: Msg) -> None:
            kind = (msg.headers or {}).get(headers.EVENT)
            if kind == EventKind.DELTA.value:
                self.deltas += 1
            elif kind in (EventKind.FINAL.value, EventKind.ERROR.value):
                self.ended[msg.subject] = kind
                if kind == EventKind.ERROR.value:
                    self.last_error = msg.data
                if len(self.ended) >= self.waiting:
                    self.done.set()

        await self.nc.subscribe(
            subjects.reply_wildcard("bench"), cb=on_event, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        await self.nc.flush()

    async def run(self, envelopes: list[ChatEnvelope], window: int) -> None:
        """Send them `window` at a time; return once every one ended (failing on an error)."""
        for i in range(0, len(envelopes), window):
            batch = envelopes[i : i + window]
            self.ended, self.waiting = {}, len(batch)
            self.done.clear()
            for env in batch:
                await self.nc.publish(subjects.WORKER_CHAT, env.forward_json())
            await asyncio.wait_for(self.done.wait(), 120)
            errors = [s for s, kind in self.ended.items() if kind != EventKind.FINAL.value]
            if errors:
                raise RuntimeError(f"{len(errors)} requests failed: {self.last_error[:300]!r}")


async def measure(
    client: Client, worker_pid: int, sim_url: str, adapter: str, args: argparse.Namespace
) -> dict[str, float]:
    whole = [_envelope(sim_url, adapter, "bench [sim tokens=16]", False) for _ in range(args.requests)]
    cpu0 = _cpu_seconds(worker_pid)
    await client.run(whole, 50)
    per_request = (_cpu_seconds(worker_pid) - cpu0) / args.requests
    content = f"bench [sim tokens={args.tokens} token_ms=1]"
    streams = [_envelope(sim_url, adapter, content, True) for _ in range(args.streams)]
    client.deltas = 0
    cpu0 = _cpu_seconds(worker_pid)
    await client.run(streams, args.streams)
    per_delta = (_cpu_seconds(worker_pid) - cpu0) / max(client.deltas, 1)
    return {
        "cpu_us_per_request": per_request * 1e6,
        "cpu_us_per_delta": per_delta * 1e6,
        "deltas": client.deltas,
    }


def translation_cost(sim_url: str, iterations: int) -> dict[str, dict[str, float]]:
    """The adapters' own work, in this process, on answers the simulator gave in each format:
    preparing a request, its auth headers (a SigV4 signature for Bedrock) and parsing its whole
    answer (CPU per request), and decoding a 200-token
    stream one event per read into the client's deltas (CPU per delta; the stream assembler's
    work is included, as on the OpenAI path). Far less noisy than the whole worker's CPU."""
    from aigw_worker.assemble import StreamAssembler
    from aigw_worker.chunks import ChunkWriter
    from aigw_worker.providers import ADAPTERS as IMPLEMENTATIONS

    out: dict[str, dict[str, float]] = {}
    for name, (api, _provider, _path) in ADAPTERS.items():
        adapter = IMPLEMENTATIONS[api or "openai"]
        env = _envelope(sim_url, name, "bench [sim tokens=16]", False)
        assert env.route is not None
        target, body = env.route.upstream, env.route.body
        base = target.base_url.partition("?")[0]

        def fetch(
            prepared: Any, adapter: Any = adapter, base: str = base, key: str = KEYS.get(_provider, "k")
        ) -> bytes:
            url = f"{prepared.base or base}/{prepared.path}"
            headers = dict(adapter.auth(key, url, prepared) + prepared.headers)
            answer = httpx.post(url, content=prepared.body, headers=headers, timeout=10)
            answer.raise_for_status()
            return answer.content

        whole = fetch(adapter.prepare(target, body, False))
        stream_body = {
            **body,
            "messages": [*body["messages"][:-1], {"role": "user", "content": "b [sim tokens=200]"}],
        }
        raw_stream = fetch(adapter.prepare(target, stream_body, True))
        if api == "bedrock":  # binary frames: each begins with its total length
            reads, at = [], 0
            while at < len(raw_stream):
                size = int.from_bytes(raw_stream[at : at + 4], "big")
                reads.append(raw_stream[at : at + size])
                at += size
        else:
            reads = [event + b"\n\n" for event in raw_stream.replace(b"\r\n", b"\n").split(b"\n\n") if event]
        started = time.process_time()
        key, url = KEYS.get(_provider, "k"), f"{base}/{adapter.prepare(target, body, False).path}"
        for _ in range(iterations):
            prepared = adapter.prepare(target, body, False)
            adapter.auth(key, url, prepared)  # Bedrock signs each request (SigV4)
            adapter.parse(whole, prepared)
        per_request = (time.process_time() - started) / iterations
        rounds = max(1, iterations // 20)
        deltas = 0
        started = time.process_time()
        for _ in range(rounds):
            prepared = adapter.prepare(target, stream_body, True)
            decoder = adapter.decoder(1 << 20, prepared)
            assembler = StreamAssembler(ChunkWriter("chatcmpl-b", 0, "m", False), None)
            for read in reads:
                deltas += len(assembler.feed(decoder.feed(read)))
            assembler.feed(decoder.close())
        per_delta = (time.process_time() - started) / max(deltas, 1)
        out[name] = {"us_per_request": per_request * 1e6, "us_per_delta": per_delta * 1e6}
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=2000, help="of the in-process adapter measurement")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="aigw-bench-providers-"))
    os.sched_setaffinity(0, {0})
    server = NatsServer(state / "nats", cpus="0").start()
    sim, sim_url = start_simulator(state)
    try:
        costs = [translation_cost(sim_url, args.iterations) for _ in range(args.runs)]
    except BaseException:
        sim.stop()
        server.stop()
        raise
    print(f"adapter work in-process (request + whole answer; per streamed delta), median of {args.runs}:")
    translation: dict[str, dict[str, float]] = {}
    for name in ADAPTERS:
        req = statistics.median(c[name]["us_per_request"] for c in costs)
        delta = statistics.median(c[name]["us_per_delta"] for c in costs)
        base_req = statistics.median(c["openai"]["us_per_request"] for c in costs)
        base_delta = statistics.median(c["openai"]["us_per_delta"] for c in costs)
        translation[name] = {
            "us_per_request": round(req, 1),
            "us_per_delta": round(delta, 2),
            "request_ratio_to_openai": round(req / base_req, 2),
            "delta_ratio_to_openai": round(delta / base_delta, 2),
        }
        print(
            f"  {name:9} {req:7.1f} us/request ({req / base_req:.2f}x)  {delta:6.2f} us/delta ({delta / base_delta:.2f}x)"
        )
    worker = Process(
        "worker",
        ["taskset", "-c", "0", _bin("aigw-worker")],
        state / "worker.log",
        env={
            "AIGW_NATS_URL": server.url,
            "AIGW_LOG_LEVEL": "WARNING",
            "AIGW_PROVIDER_KEYS": json.dumps(KEYS),
        },
    ).start()
    nc = await nats.connect(server.url)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ADAPTERS}
    try:
        client = Client(nc)
        await client.start()
        deadline = time.monotonic() + 90
        while True:  # warm up every adapter until the worker answers
            try:
                for name in ADAPTERS:
                    warm = [_envelope(sim_url, name, "warm [sim tokens=3]", s) for s in (False, True)]
                    await asyncio.wait_for(client.run(warm, 2), 5.0)  # the worker may not listen yet
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the worker never answered; its log:\n{worker.tail()}") from None
        for run in range(args.runs):
            for name in ADAPTERS:  # interleaved, so drift in the machine's load hits all alike
                results[name].append(await measure(client, worker.pid, sim_url, name, args))
            print(f"run {run + 1}/{args.runs} done", flush=True)
    finally:
        with contextlib.suppress(Exception):
            await nc.close()
        worker.stop()
        sim.stop()
        server.stop()
    base = {
        k: statistics.median(r[k] for r in results["openai"])
        for k in ("cpu_us_per_request", "cpu_us_per_delta")
    }
    summary = {}
    print(f"worker CPU, median of {args.runs} runs (loaded 2-core machine; ratios travel, absolutes do not):")
    for name, runs in results.items():
        req = statistics.median(r["cpu_us_per_request"] for r in runs)
        delta = statistics.median(r["cpu_us_per_delta"] for r in runs)
        summary[name] = {
            "cpu_us_per_request": round(req, 1),
            "cpu_us_per_delta": round(delta, 2),
            "request_ratio_to_openai": round(req / base["cpu_us_per_request"], 3),
            "delta_ratio_to_openai": round(delta / base["cpu_us_per_delta"], 3),
            "runs": runs,
        }
        print(
            f"  {name:9} {req:8.1f} us/request ({req / base['cpu_us_per_request']:.2f}x)"
            f"  {delta:6.2f} us/delta ({delta / base['cpu_us_per_delta']:.2f}x)"
        )
    out = Path(__file__).parent / "results" / f"providers-{datetime.now(UTC):%Y-%m-%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps({"args": vars(args), "translation": translation, "worker": summary}, indent=2) + "\n"
    )
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
