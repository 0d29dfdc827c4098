"""CPU the request log costs the edge per request, measured in-process (`python -m bench.requestlog`).

What a request pays on its own path: `RequestLog.record` (build the event as a dict, add it to its
tenant's batch: no I/O), and what the publisher's sender task pays later, off the request's path:
serializing the batch (per event here). Publishing costs one message per tenant per 20 ms, not per
request; it is measured end to end by `python -m bench.cpu` with and without `--no-request-log`.
Median of several rounds.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from aigw_edge.requestlog import LoggedBatch, RequestLog
from aigw_runtime.usage_publisher import UsagePublisher


class _NoBus:
    async def start_usage_acks(self, on_ack: object) -> None: ...

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None: ...


async def _measure(n: int, rounds: int) -> tuple[float, float]:
    log = RequestLog("bench-edge", linger=3600)  # flushed by hand below
    publisher = UsagePublisher(_NoBus())  # not started: submitted batches queue
    log.publisher = publisher
    fields = {
        "request_id": "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "tenant": "acme",
        "key_id": "key-1",
        "model": "support",
        "stream": False,
        "outcome": "final",
        "gateway": "support:ab12",
        "fallback": None,
        "ttft_ms": None,
    }
    path = "/v1/chat/completions"
    record_us, dump_us = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            log.record("POST", path, 200, time.time(), started, dict(fields), None, None, b"")
        record_us.append((time.perf_counter() - started) / n * 1e6)
        log.flush()
        batches = [b for b in publisher._submitted if isinstance(b, LoggedBatch)]
        publisher._submitted.clear()
        started = time.perf_counter()
        for batch in batches:
            batch.model_dump_json().encode()
        dump_us.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(record_us), statistics.median(dump_us)


def main(n: int = 20_000, rounds: int = 7) -> None:
    record, dump = asyncio.run(_measure(n, rounds))
    print(
        f"record (on the request's path): {record:.1f} µs/request; serialize (sender task): "
        f"{dump:.1f} µs/event (median of {rounds} rounds of {n})"
    )


if __name__ == "__main__":
    main()
