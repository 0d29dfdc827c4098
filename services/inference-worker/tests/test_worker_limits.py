"""One tenant's upstream cannot exhaust the worker every tenant shares: a whole answer's body is
capped after decompression (a gzip bomb stops at the cap), a stream's lines are capped and parsed in
linear time, and the request that went over fails alone with a 502 `upstream_response_too_large`.
The upstreams here are real HTTP servers on loopback, misbehaving on purpose."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal

import pytest

from aigw_contracts import Prices, UpstreamTarget, headers
from aigw_contracts.errors import UpstreamError
from aigw_devstack.procs import free_port
from aigw_worker import WorkerSettings
from aigw_worker.limits import RESPONSE_TOO_LARGE
from aigw_worker.sse import SSEParser
from aigw_worker.upstream import Upstream

from .conftest import Sim, make_envelope, running, worker_settings

MiB = 1024 * 1024
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ANSWER = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}'


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)


def gzip_bomb(decoded: int) -> bytes:
    """A gzip body of about decoded/1000 bytes that inflates to `decoded` bytes of JSON-ish text."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b" " * MiB
    parts = [z.compress(b'{"choices":"')] + [z.compress(block) for _ in range(decoded // MiB)]
    return b"".join([*parts, z.compress(b'"}'), z.flush()])


def target(port: int) -> UpstreamTarget:
    return UpstreamTarget(
        id="@sim/m",
        kind="catalog",
        provider="sim",
        model="m",
        base_url=f"http://127.0.0.1:{port}/v1",
        prices=Prices(input=Decimal(0), output=Decimal(0), cached_input=Decimal(0)),
    )


class Sender:
    """Counts what a misbehaving upstream managed to write before the worker hung up."""

    def __init__(self) -> None:
        self.sent = 0
        self.done = asyncio.Event()

    async def pour(self, writer: asyncio.StreamWriter, head: bytes, piece: bytes, up_to: int) -> None:
        try:
            writer.write(head)
            while self.sent < up_to:
                writer.write(piece)
                await writer.drain()
                self.sent += len(piece)
        except (ConnectionError, OSError):
            pass  # the worker hung up: what we wanted
        finally:
            writer.close()
            self.done.set()


async def fetch_error(upstream: Upstream, port: int) -> tuple[UpstreamError, float, int]:
    """The error of fetching a whole answer, the seconds it took and the peak Python memory."""
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.fetch(await upstream.build(target(port), b"{}", 30.0, stream=False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value, time.monotonic() - started, peak


def test_the_limits_default_to_16_mib_a_body_and_1_mib_a_stream_line() -> None:
    settings = WorkerSettings()
    assert settings.upstream_max_body_bytes == 16 * MiB and settings.upstream_max_sse_line_bytes == MiB


# ---------------------------------------------------------------- whole answers
async def test_a_gzip_bomb_is_inflated_only_up_to_the_cap() -> None:
    bomb = gzip_bomb(64 * MiB)  # 64 KiB on the wire
    assert len(bomb) < 128 * 1024

    async def bomber(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(bomb), bomb)
        )
        await writer.drain()
        writer.close()

    upstream = Upstream(worker_settings(upstream_max_body_bytes=MiB))
    try:
        async with serve(bomber) as port:
            err, took, peak = await fetch_error(upstream, port)
    finally:
        await upstream.aclose()
    assert err.status == 502 and err.code == RESPONSE_TOO_LARGE, err.message
    assert str(MiB) in err.message
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB: inflated past the 1 MiB cap"  # 64 MiB unbounded
    assert took < 5.0


async def test_a_huge_plain_body_is_read_only_up_to_the_cap() -> None:
    sender = Sender()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n"
        await sender.pour(writer, head, b" " * (64 * 1024), 256 * MiB)  # no length: until closed

    upstream = Upstream(worker_settings(upstream_max_body_bytes=MiB))
    try:
        async with serve(flood) as port:
            err, took, peak = await fetch_error(upstream, port)
            await asyncio.wait_for(sender.done.wait(), 10)
    finally:
        await upstream.aclose()
    assert err.code == RESPONSE_TOO_LARGE and took < 5.0
    assert peak < 8 * MiB
    assert sender.sent < 64 * MiB, f"the upstream wrote {sender.sent / MiB:.0f} MiB before we hung up"


async def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 300000000\r\n\r\n"
        )
        await writer.drain()
        await reader.read()  # hold the connection open; the body never comes
        writer.close()

    upstream = Upstream(worker_settings(upstream_max_body_bytes=MiB))
    try:
        async with serve(liar) as port:
            err, took, _ = await fetch_error(upstream, port)
    finally:
        await upstream.aclose()
    assert err.code == RESPONSE_TOO_LARGE and took < 5.0


async def test_a_compressed_answer_within_the_cap_is_still_decoded() -> None:
    body = json.dumps({"choices": [], "text": "z" * 300_000}).encode()

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        packed = gzip.compress(body)
        for coding, payload in ((b"gzip", packed), (b"deflate", zlib.compress(body))):
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-encoding: %s\r\ncontent-length: %d\r\n\r\n%s"
                % (coding, len(payload), payload)
            )
            await writer.drain()

    upstream = Upstream(worker_settings(upstream_max_body_bytes=MiB))
    try:
        async with serve(gzipped) as port:
            for _ in range(2):
                req = await upstream.build(target(port), b"{}", 5.0, stream=False)
                assert await upstream.fetch(req) == body
    finally:
        await upstream.aclose()


# ---------------------------------------------------------------- stream lines
def test_the_sse_parser_is_linear_in_a_long_line() -> None:
    parser = SSEParser(max_line=16 * MiB)
    piece = b"x" * 4096
    started = time.perf_counter()
    assert parser.feed(b"data: ") == []
    for _ in range(8 * MiB // len(piece)):  # 8 MiB in 4 KiB reads
        assert parser.feed(piece) == []
    (event,) = parser.feed(b"\n\n")
    took = time.perf_counter() - started
    assert len(event.data) == 8 * MiB
    assert took < 0.5, f"{took:.2f}s for one 8 MiB line: quadratic re-concatenation"


def test_an_unterminated_sse_line_fails_at_the_cap_and_stops_reading() -> None:
    parser = SSEParser(max_line=MiB)
    piece = b"x" * 4096
    fed = 0
    started = time.perf_counter()
    with pytest.raises(UpstreamError) as caught:
        parser.feed(b"data: ")
        for _ in range(8 * MiB // len(piece)):
            parser.feed(piece)
            fed += len(piece)
    assert caught.value.status == 502 and caught.value.code == RESPONSE_TOO_LARGE
    assert MiB - len(piece) <= fed <= MiB  # stopped at the cap, not at the end of the 8 MiB
    assert time.perf_counter() - started < 0.5


def test_an_event_of_endless_data_lines_fails_at_the_cap() -> None:
    parser = SSEParser(max_line=64 * 1024)
    with pytest.raises(UpstreamError) as caught:
        for _ in range(1000):
            parser.feed(b"data: " + b"y" * 1000 + b"\n")  # never a blank line: one event growing
    assert caught.value.code == RESPONSE_TOO_LARGE


# ---------------------------------------------------------------- through the worker
async def test_a_runaway_upstream_fails_its_request_alone_with_a_502(sim: Sim) -> None:
    bomb = gzip_bomb(64 * MiB)
    line = Sender()

    async def bomber(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(bomb), bomb)
        )
        await writer.drain()
        writer.close()

    async def endless_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\ndata: "
        await line.pour(writer, head, b"x" * (64 * 1024), 256 * MiB)  # one line, never ended

    settings = worker_settings(upstream_max_body_bytes=MiB, upstream_max_sse_line_bytes=MiB)
    async with running(settings) as h, serve(bomber) as bomb_port, serve(endless_line) as line_port:
        for stream, port in ((False, bomb_port), (True, line_port)):
            env = make_envelope(f"http://127.0.0.1:{port}/v1", "boom", stream=stream)
            other = make_envelope(sim.url, "meanwhile [sim tokens=2]", stream=stream)
            started = time.monotonic()
            await h.send(env)
            await h.send(other)
            events = await h.events(env.request_id, within=10)
            assert time.monotonic() - started < 10
            assert events[-1].kind == "error" and events[-1].headers[headers.STATUS] == "502"
            assert json.loads(events[-1].body)["error"]["code"] == RESPONSE_TOO_LARGE
            assert (await h.events(other.request_id))[-1].kind == "final"  # the others carry on
        await asyncio.wait_for(line.done.wait(), 10)
        assert line.sent < 64 * MiB, f"the upstream wrote {line.sent / MiB:.0f} MiB before we hung up"
