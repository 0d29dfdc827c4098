"""CPU per message on the bus: faststream against raw nats-py and the runtime's `Service`.

    uv run python -m bench.bus [--messages 10000] [--publishes 50000] [--runs 3] [--asyncio]

The figures in `aigw_runtime.bus`'s docstring come from here. Measured in this process, from its
CPU time (`time.process_time()`: every thread, user and system), while it does one thing:

1. request-reply: a responder that validates a ~150-byte JSON request with a pydantic model and
   answers 12 bytes, as (a) a faststream `NatsBroker` subscriber taking the model as its argument
   and returning the answer, (b) a nats-py callback, (c) an `aigw_runtime.service.Service` reply
   route (what the router, worker, retrieval and metering run). The requests come from a driver
   process (`--drive`) with `--window` requests in flight;
2. publish: `--publishes` delta events (the worker's real chunk bytes and event headers) through
   faststream's `broker.publish`, the runtime's `Bus.publish` (size-checked) and nats-py's
   `nc.publish`, counted by the driver so every one is delivered.

Reported per scenario: µs of CPU per message and messages/s, median of `--runs` (runs interleave
the scenarios, so a noisy neighbour spreads over all of them). nats-server and this process share
CPU 0 (the services' layout in `make bench`); the driver runs on CPU 1 (CPU 0 on a one-core
machine). The loop is uvloop when installed, as `aigw_runtime.service.serve` runs the services.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import nats
import nats.errors
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import BaseModel

from aigw_contracts.events import EventKind, event_headers
from aigw_contracts.ids import uuid7
from aigw_devstack.nats import NatsServer
from aigw_runtime.bus import Bus, settle
from aigw_runtime.service import Service
from aigw_worker.chunks import ChunkWriter
from bench.loadgen import median

ANSWER = b'{"ok": true}'
WARMUP = 2000  # requests answered before the measured ones (imports, caches, allocator)


class Ping(BaseModel):
    """The request: about the size and shape of a routing or lookup message."""

    request_id: str
    tenant: str
    gateway: str
    deadline: float
    stream: bool
    max_tokens: int


def ping_bytes() -> bytes:
    return (
        Ping(
            request_id=str(uuid7()),
            tenant="tenant-0001",
            gateway="demo:50c3",
            deadline=time.time() + 30,
            stream=False,
            max_tokens=256,
        )
        .model_dump_json()
        .encode()
    )


def delta_event() -> tuple[bytes, dict[str, str]]:
    writer = ChunkWriter(f"chatcmpl-{uuid7()}", int(time.time()), "@openai/gpt-5-mini", False)
    writer.begin("fp_x")
    return writer.content(" token"), event_headers(EventKind.DELTA, 7)


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- driver
# The other end of every scenario, in a process of its own so its CPU is not counted. Commands on
# stdin, one a line; answers on stdout:
#   request SUBJECT WARMUP N WINDOW -> "warm" (after WARMUP answered), waits for "go",
#                                      then "done SECONDS" once N more are answered
#   count SUBJECT N                 -> "ready" (subscribed), then "done COUNT" once N arrived
#                                      (or 60 s passed)


async def _drive(url: str) -> None:
    nc = await nats.connect(url)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    payload = ping_bytes()

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def windowed(subject: str, count: int, window: int) -> None:
        """`count` requests, `window` of them in flight, answered on one wildcard inbox."""
        inbox = f"_INBOX.{uuid7()}"
        done = asyncio.Event()
        sent = answered = 0

        async def on_answer(_msg: Msg) -> None:
            nonlocal sent, answered
            answered += 1
            if sent < count:
                sent += 1
                await nc.publish(subject, payload, reply=f"{inbox}.{sent}")
            elif answered == count:
                done.set()

        sub = await nc.subscribe(f"{inbox}.*", cb=on_answer)
        await settle(nc)
        for _ in range(min(window, count)):
            sent += 1
            await nc.publish(subject, payload, reply=f"{inbox}.{sent}")
        await asyncio.wait_for(done.wait(), 120)
        await sub.unsubscribe()

    async def counted(subject: str, count: int) -> int:
        """Messages arrived on `subject` once `count` did, or after 60 s; says "ready" first."""
        seen = 0
        all_in = asyncio.Event()

        async def on_msg(_msg: Msg) -> None:
            nonlocal seen
            seen += 1
            if seen == count:
                all_in.set()

        sub = await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await settle(nc)
        say("ready")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 60)
        await sub.unsubscribe()
        return seen

    while line := (await stdin.readline()).decode().split():
        if line[0] == "request":
            subject, warmup, count, window = line[1], int(line[2]), int(line[3]), int(line[4])
            deadline = time.monotonic() + 30  # until the responder is subscribed
            while True:
                try:
                    await nc.request(subject, payload, timeout=1)
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            await windowed(subject, warmup, window)
            say("warm")
            await stdin.readline()
            started = time.perf_counter()
            await windowed(subject, count, window)
            say(f"done {time.perf_counter() - started}")
        elif line[0] == "count":
            say(f"done {await counted(line[1], int(line[2]))}")
    await nc.close()


class Driver:
    """The driver process, seen from the measuring side."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str, cpu: int, use_asyncio: bool) -> Driver:
        argv = [sys.executable, "-m", "bench.bus", "--drive", url, *(["--asyncio"] if use_asyncio else [])]
        proc = await asyncio.create_subprocess_exec(
            "taskset", "-c", str(cpu), *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        return cls(proc)

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, word: str) -> list[str]:
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 180)).decode().split()
        if not line or line[0] != word:
            raise RuntimeError(f"the driver said {line!r}, expected {word!r}")
        return line[1:]

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ------------------------------------------------------------------------------------ responders
# Each starts a responder on `subject` and returns what stops it.

Stop = Callable[[], Awaitable[None]]


async def faststream_responder(url: str, subject: str) -> Stop:
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(subject)
    async def handle(body: Ping) -> bytes:
        return ANSWER

    await broker.start()
    return broker.stop


async def nats_py_responder(url: str, subject: str) -> Stop:
    nc = await nats.connect(url)

    async def handle(msg: Msg) -> None:
        Ping.model_validate_json(msg.data)
        await nc.publish(msg.reply, ANSWER)

    await nc.subscribe(subject, cb=handle)
    await settle(nc)
    return nc.drain


async def service_responder(url: str, subject: str) -> Stop:
    service = Service("bench", "0", url)

    async def answer(data: bytes) -> tuple[bytes, dict[str, str] | None]:
        Ping.model_validate_json(data)
        return ANSWER, None

    service.reply_route(subject, answer, "bench")
    await service.start()

    async def stop() -> None:
        await service.stop(grace=1.0)

    return stop


RESPONDERS: dict[str, Callable[[str, str], Awaitable[Stop]]] = {
    "faststream subscriber": faststream_responder,
    "nats-py callback": nats_py_responder,
    "runtime Service route": service_responder,
}


async def request_reply(url: str, driver: Driver, name: str, messages: int, window: int) -> dict[str, float]:
    subject = f"aigw.bench.{uuid7()[-8:]}"  # as long as the services' ("aigw.v1.router.chat")
    stop = await RESPONDERS[name](url, subject)
    try:
        await driver.send(f"request {subject} {WARMUP} {messages} {window}")
        await driver.expect("warm")
        cpu = time.process_time()
        await driver.send("go")
        (seconds,) = await driver.expect("done")
        cpu = time.process_time() - cpu
    finally:
        await stop()
    return {"cpu_us": cpu / messages * 1e6, "msgs_per_s": messages / float(seconds)}


# --------------------------------------------------------------------------------------- publish
# Each connects a publisher and returns (publish one event, close).

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[None]]


async def faststream_publisher(url: str) -> tuple[Publish, NatsClient, Stop]:
    broker = NatsBroker(url, logger=None)
    await broker.connect()

    async def publish(subject: str, payload: bytes, hdrs: dict[str, str]) -> None:
        await broker.publish(payload, subject=subject, headers=hdrs)

    return publish, broker.connection, broker.stop


async def bus_publisher(url: str) -> tuple[Publish, NatsClient, Stop]:
    bus = Bus(url, "bench")
    await bus.connect()
    return bus.publish, bus.nc, bus.close


async def nats_py_publisher(url: str) -> tuple[Publish, NatsClient, Stop]:
    nc = await nats.connect(url)

    async def publish(subject: str, payload: bytes, hdrs: dict[str, str]) -> None:
        await nc.publish(subject, payload, headers=hdrs)

    return publish, nc, nc.close


PUBLISHERS: dict[str, Callable[[str], Awaitable[tuple[Publish, NatsClient, Stop]]]] = {
    "faststream broker.publish": faststream_publisher,
    "runtime Bus.publish": bus_publisher,
    "nats-py nc.publish": nats_py_publisher,
}


async def publish_loop(url: str, driver: Driver, name: str, events: int) -> dict[str, float]:
    payload, hdrs = delta_event()
    subject = f"aigw.bench.{uuid7()[-8:]}"
    publish, nc, stop = await PUBLISHERS[name](url)
    try:
        for _ in range(1000):  # warm up (not counted by the driver: it is not subscribed yet)
            await publish(subject, payload, hdrs)
        await nc.flush()
        await driver.send(f"count {subject} {events}")
        await driver.expect("ready")
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(events):
            await publish(subject, payload, hdrs)
        await nc.flush()
        cpu, elapsed = time.process_time() - cpu, time.perf_counter() - started
        (seen,) = await driver.expect("done")
    finally:
        await stop()
    if int(seen) != events:
        raise RuntimeError(f"{name}: the driver counted {seen} of {events} events")
    return {"cpu_us": cpu / events * 1e6, "msgs_per_s": events / elapsed}


# ------------------------------------------------------------------------------------------ main


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{os.cpu_count()} × {model}"


def versions() -> dict[str, str]:
    found = {}
    for name in ("faststream", "nats-py", "pydantic", "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    driver_cpu = 1 if len(cpus) >= 2 else 0
    os.sched_setaffinity(0, {0})
    state = Path(tempfile.mkdtemp(prefix="aigw-bench-bus-"))
    server = NatsServer(state / "nats", cpus="0").start()
    driver = await Driver.start(server.url, driver_cpu, args.asyncio)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in (*RESPONDERS, *PUBLISHERS)}
    _progress(
        f"{machine()}; this process and nats-server on CPU 0, the driver on CPU {driver_cpu}; "
        f"request {len(ping_bytes())} B, delta event {len(delta_event()[0])} B; "
        f"loop: {'asyncio' if args.asyncio else 'uvloop'}; {versions()}; load average {os.getloadavg()}"
    )
    try:
        for run in range(1, args.runs + 1):
            for name in RESPONDERS:
                _progress(f"  run {run}/{args.runs}  request-reply  {name} ({args.messages} messages)")
                runs[name].append(await request_reply(server.url, driver, name, args.messages, args.window))
            for name in PUBLISHERS:
                _progress(f"  run {run}/{args.runs}  publish        {name} ({args.publishes} events)")
                runs[name].append(await publish_loop(server.url, driver, name, args.publishes))
    finally:
        await driver.stop()
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
    return {
        name: {
            "cpu_us": round(median([r["cpu_us"] for r in results]), 1),
            "msgs_per_s": round(median([r["msgs_per_s"] for r in results])),
            "runs": results,
        }
        for name, results in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=10_000, help="request-reply messages per run")
    parser.add_argument("--window", type=int, default=32, help="requests in flight")
    parser.add_argument("--publishes", type=int, default=50_000, help="published events per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--asyncio", action="store_true", help="the stock asyncio loop instead of uvloop")
    parser.add_argument("--drive", metavar="NATS_URL", help=argparse.SUPPRESS)  # the driver process
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        args.asyncio = True
    run: Callable[[Any], Any] = asyncio.run if args.asyncio else uvloop.run
    if args.drive:
        run(_drive(args.drive))
        return
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "versions": versions(),
        "args": vars(args),
        "load_average_before": os.getloadavg(),
    }
    report["results"] = run(bench(args))
    report["load_average_after"] = os.getloadavg()
    print(f"{'':28s} {'CPU µs/msg':>10s} {'msgs/s':>10s}   (median of {args.runs})")
    for name, row in report["results"].items():
        print(f"{name:28s} {row['cpu_us']:10.1f} {row['msgs_per_s']:10,d}")
    out = Path(__file__).parent / "results" / f"bus-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
