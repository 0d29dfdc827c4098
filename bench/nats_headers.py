"""What a `traceparent` NATS header costs a message: publish and receive through a real
nats-server with nats-py, with and without the header (`aigw_runtime.telemetry.nats_headers`).

    uv run python -m bench.nats_headers

Rounds alternate the two kinds; each round publishes `--messages` envelopes of `--size` bytes to
one subscriber and times until the last arrives. Reported: µs per message, the median and every
round (a shared machine only ever adds time, so compare the medians and the best rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import nats

from aigw_devstack.nats import NatsServer

HEADERS = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


async def _measure(url: str, messages: int, size: int, rounds: int) -> dict[str, list[float]]:
    nc = await nats.connect(url)
    payload = b"x" * size
    got = 0
    done = asyncio.Event()

    async def received(msg: nats.aio.msg.Msg) -> None:
        nonlocal got
        got += 1
        if got == messages:
            done.set()

    out: dict[str, list[float]] = {"without": [], "with": []}
    try:
        for _ in range(rounds):
            for kind in out:
                got = 0
                done.clear()
                sub = await nc.subscribe("bench.headers", cb=received)
                await nc.flush()
                began = time.perf_counter()
                hdrs = HEADERS if kind == "with" else None
                for _ in range(messages):
                    await nc.publish("bench.headers", payload, headers=hdrs)
                await done.wait()
                out[kind].append((time.perf_counter() - began) / messages * 1e6)
                await sub.unsubscribe()
    finally:
        await nc.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as state:
        server = NatsServer(Path(state)).start()
        try:
            results = asyncio.run(_measure(server.url, args.messages, args.size, args.rounds))
        finally:
            server.stop()
    for kind, rounds in results.items():
        print(
            f"{kind:>7} header: median {statistics.median(rounds):.1f} µs/message, best {min(rounds):.1f}",
            [round(r, 1) for r in rounds],
        )


if __name__ == "__main__":
    main()
