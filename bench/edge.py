"""Measure the edge alone: HTTP in, NATS out and back, against an instant fake router+worker.

    uv run python -m bench.edge [--duration 4] [--deltas 64]

nats-server, the edge and a fake router+worker share CPU 0 (the system benchmark's layout); the
load generator (bench/loadgen.py) runs on CPU 1. The fake worker answers from prebuilt bytes
without parsing, so what is measured is the edge's cost plus one NATS round trip and the fake
worker's small share of the core. (Splitting NATS and its clients across cores on these VMs adds
about 1.5 ms per round trip of cross-CPU wake-ups: measure in this layout.) A bare uvicorn app that
answers a fixed body on the same core is measured too: the floor any ASGI edge starts from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import nats

from aigw_contracts import ApiKey, ConfigSnapshot
from aigw_contracts.keys import hash_secret, new_secret
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import Process, free_port
from aigw_runtime.configstore import ConfigWriter
from bench.loadgen import Result, median, run_load

HOST = "127.0.0.1"

# The fake router+worker: answers every envelope on its NATS reply subject, instantly.
WORKER = textwrap.dedent(
    """
    import asyncio, sys, nats
    from aigw_contracts import subjects
    from aigw_contracts.events import EventKind, event_headers

    DELTAS = int(sys.argv[2])
    FINAL_JSON = b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
    DELTA = b'{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"tok "},"finish_reason":null}]}'
    CLOSE = b'{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":64,"total_tokens":69}}'
    HDRS = [event_headers(EventKind.DELTA, i) for i in range(DELTAS + 1)]

    async def main():
        nc = await nats.connect(sys.argv[1])
        async def on_chat(msg):
            if b'"stream": true' in msg.data:
                for i in range(DELTAS):
                    await nc.publish(msg.reply, DELTA, headers=HDRS[i])
                await nc.publish(msg.reply, CLOSE, headers=event_headers(EventKind.FINAL, DELTAS))
            else:
                await nc.publish(msg.reply, FINAL_JSON, headers=event_headers(EventKind.FINAL, 0))
        await nc.subscribe(subjects.ROUTER_CHAT, cb=on_chat, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)

BARE = textwrap.dedent(
    """
    import sys, uvicorn
    BODY = b'{"id":"chatcmpl-x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hello world"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]})
        await send({"type": "http.response.body", "body": BODY})
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning")
    """
)


async def _seed(url: str, snapshot: ConfigSnapshot) -> None:
    """The edge reads its keys from the config store."""
    nc = await nats.connect(url)
    try:
        await (await ConfigWriter.open(nc.jetstream())).load(snapshot)
    finally:
        await nc.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


def _scenario(
    port: int, key: str | None, stream: bool, concurrency: int, duration: float, runs: int
) -> Result:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "Benchmark prompt."}]}
    if stream:
        body["stream"] = True
    results = [
        asyncio.run(run_load(HOST, port, "/v1/chat/completions", body, key, concurrency, duration))
        for _ in range(runs)
    ]
    return min(results, key=lambda r: abs(r.rps - median([x.rps for x in results])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deltas", type=int, default=64)
    args = parser.parse_args()
    two = len(os.sched_getaffinity(0)) >= 2
    server_cpu, client_cpu = ("0", "1") if two else ("0", "0")
    os.sched_setaffinity(0, {int(client_cpu)})
    state = Path(tempfile.mkdtemp(prefix="aigw-edge-bench-"))
    procs: list[Process] = []
    nats_server = NatsServer(state / "nats", cpus=server_cpu).start()
    try:
        secret, pepper = new_secret(), "bench-pepper"
        asyncio.run(
            _seed(
                nats_server.url,
                ConfigSnapshot(keys=[ApiKey(id="k", tenant="t", hash=hash_secret(secret, pepper))]),
            )
        )
        (state / "worker.py").write_text(WORKER)
        (state / "bare.py").write_text(BARE)
        worker = Process(
            "worker",
            [
                "taskset",
                "-c",
                server_cpu,
                sys.executable,
                str(state / "worker.py"),
                nats_server.url,
                str(args.deltas),
            ],
            state / "worker.log",
        ).start()
        procs.append(worker)
        worker.wait_ready(lambda: "ready" in worker.log_path.read_text())
        edge_port, bare_port = free_port(), free_port()
        edge = Process(
            "edge",
            ["taskset", "-c", server_cpu, _bin("aigw-edge")],
            state / "edge.log",
            env={
                "AIGW_NATS_URL": nats_server.url,
                "AIGW_PORT": str(edge_port),
                "AIGW_KEY_PEPPER": pepper,
                "AIGW_ACCESS_LOG": "false",
                "AIGW_LOG_LEVEL": "WARNING",
            },
        ).start()
        procs.append(edge)
        edge.wait_ready(lambda: _answers(f"http://{HOST}:{edge_port}/readyz"))
        bare = Process(
            "bare",
            ["taskset", "-c", server_cpu, sys.executable, str(state / "bare.py"), str(bare_port)],
            state / "bare.log",
        ).start()
        procs.append(bare)
        bare.wait_ready(lambda: _answers(f"http://{HOST}:{bare_port}/"))

        report: dict[str, float] = {}
        for name, port, key in (("bare uvicorn", bare_port, None), ("edge", edge_port, secret)):
            c1 = _scenario(port, key, False, 1, args.duration, args.runs)
            c16 = _scenario(port, key, False, 16, args.duration, args.runs)
            report[f"{name}: json p50 ms (c=1)"] = round(c1.pct(c1.latencies, 0.5) * 1000, 3)
            report[f"{name}: json req/s (c=16)"] = round(c16.rps)
            assert c1.errors == c16.errors == 0, "errors during the run"
        # The fake worker sends a stream's events in one burst, so a stream's latency is its
        # whole relay (time to first token is not meaningful here; bench/gateway.py measures it).
        stream = _scenario(edge_port, secret, True, 16, args.duration, args.runs)
        single = _scenario(edge_port, secret, True, 1, args.duration, args.runs)
        assert stream.errors == single.errors == 0, "errors during the run"
        report["edge: stream deltas/s (c=16)"] = round(stream.events / stream.elapsed)
        report["edge: stream req/s (c=16)"] = round(stream.rps, 1)
        report[f"edge: stream of {args.deltas} deltas, p50 ms (c=1)"] = round(
            single.pct(single.latencies, 0.5) * 1000, 3
        )
        report["when"] = time.time()
        print(json.dumps(report, indent=2))
    finally:
        for proc in reversed(procs):
            proc.stop()
        nats_server.stop()


if __name__ == "__main__":
    main()
