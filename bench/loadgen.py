"""A lean HTTP/1.1 load generator on raw asyncio streams (keep-alive, one connection per worker).

Python HTTP clients cost more CPU per request than the gateway itself; this one parses only what
it must (status, content-length or chunked framing, SSE `data:` lines), so the same client measures
the gateway and the simulator called directly, and the difference is the gateway's.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, per request
    ttfts: list[float] = field(default_factory=list)  # seconds to the first content event (streams)
    events: int = 0  # SSE data events carrying content
    tokens: int = 0  # words of content received (the simulator's tokens are words)
    errors: int = 0
    elapsed: float = 0.0
    warm_requests: int = 0  # of the warm-up, not measured above (CPU counters span the whole run)
    wrong: int = 0  # answers the `check` given to `run_load` refused
    contents: list[str] = field(default_factory=list)  # with a check: the last answers' text, to show

    @property
    def requests(self) -> int:
        """Every request completed in the run, warm-up included."""
        return len(self.latencies) + self.warm_requests

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _request_bytes(
    host: str, port: int, path: str, body: dict[str, object], key: str | None, extra_headers: str = ""
) -> bytes:
    payload = json.dumps(body).encode()
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}{extra_headers}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


Check = Callable[[int, str], bool]  # (status, the answer's text) -> is it the expected answer?


async def _read_response(
    reader: asyncio.StreamReader, started: float, result: Result, check: Check | None = None
) -> int:
    """Read one response; with `check`, the answer's text (a whole answer's message content, or a
    stream's content deltas joined) is assembled and checked, a refusal counted in `wrong`."""
    text: list[str] = []
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        buf = b""
        first = True
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            buf += data[:-2]
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if event.startswith(b"data: {") and b'"content":"' in event:
                    if first:
                        result.ttfts.append(time.perf_counter() - started)
                        first = False
                    result.events += 1
                    chunk = json.loads(event[6:])
                    for choice in chunk.get("choices", []):
                        content = choice["delta"].get("content") or ""
                        result.tokens += len(content.split())
                        if check is not None:
                            text.append(content)
    else:
        idx = lower.find(b"content-length:")
        length = int(lower[idx + 15 : lower.find(b"\r\n", idx)])
        body = await reader.readexactly(length)
        if check is not None and status == 200:
            try:
                text.append(json.loads(body)["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError):
                text.append("")
    if check is not None:
        answer = "".join(text)
        if not check(status, answer):
            result.wrong += 1
        if len(result.contents) < 3:
            result.contents.append(answer)
    return status


async def run_load(
    host: str,
    port: int,
    path: str,
    body: dict[str, object],
    key: str | None,
    concurrency: int,
    duration: float,
    warmup: float = 0.5,
    extra_headers: str = "",  # whole header lines, each ending with CRLF
    check: Check | None = None,
) -> Result:
    request = _request_bytes(host, port, path, body, key, extra_headers)
    result = Result()
    warm = Result()
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (now := time.perf_counter()) < stop_at:
                sink = result if now >= measure_from else warm
                writer.write(request)
                status = await _read_response(reader, now, sink, check)
                if status != 200:
                    sink.errors += 1
                sink.latencies.append(time.perf_counter() - now)
        finally:
            writer.close()

    await asyncio.sleep(0)
    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - max(begin, measure_from)
    result.warm_requests = len(warm.latencies)
    result.wrong += warm.wrong
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
