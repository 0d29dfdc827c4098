"""CPU the request log costs the edge per request, measured in-process (`python -m bench.requestlog`).

What a request pays on its own path: `RequestLog.record` (build the event, hand it over: no I/O),
and what the publisher's sender task pays later, off the request's path: serializing the event once
(`model_dump_json`). The batched publish itself (one socket write per 20 ms) is measured end to end
by `make bench` / `python -m bench.gateway --no-request-log`. Median of several rounds.
"""

from __future__ import annotations

import statistics
import time

from aigw_edge.requestlog import RequestLog
from aigw_runtime.usage_publisher import UsagePublisher


class _NoBus:
    async def start_usage_acks(self, on_ack: object) -> None: ...

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None: ...


def main(n: int = 20_000, rounds: int = 7) -> None:
    log = RequestLog("bench-edge")
    publisher = UsagePublisher(_NoBus())  # not started: submitted events just queue
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
    record_us, dump_us = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            log.record("POST", "/v1/chat/completions", 200, time.time(), started, dict(fields), None, None, b"")
        record_us.append((time.perf_counter() - started) / n * 1e6)
        events = list(publisher._submitted)
        publisher._submitted.clear()
        started = time.perf_counter()
        for event in events:
            event.model_dump_json().encode()
        dump_us.append((time.perf_counter() - started) / n * 1e6)
    print(
        f"record (on the request's path): {statistics.median(record_us):.1f} µs/request; "
        f"serialize (sender task): {statistics.median(dump_us):.1f} µs/event "
        f"(median of {rounds} rounds of {n})"
    )


if __name__ == "__main__":
    main()
