"""Slow and keyless clients (slowloris) against the edge served with its production uvicorn config
(`server_config`): raw sockets that stop mid-headers or mid-body, floods of half-open connections,
and the connection limit. Every wait has a deadline; deadlines are the timeouts under test plus 1 s."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from aigw_contracts import ChatEnvelope
from aigw_contracts.events import EventKind
from aigw_devstack.nats import NatsServer

from .conftest import Edge, FakeRouter, chunk, completion, eventually, serve_edge

MESSAGES = [{"role": "user", "content": "hello"}]
T = TypeVar("T")


async def answer_at_once(env: ChatEnvelope, r: FakeRouter) -> None:
    await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "served"))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/json", self.body
        error: dict[str, Any] = json.loads(self.body)["error"]
        return error


class Conn:
    """A raw client connection to the edge, for clients no HTTP library would imitate."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, edge: Edge, data: bytes = b"") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
        conn = cls(reader, writer)
        if data:
            await conn.send(data)
        return conn

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, within: float) -> Response:
        """The next response (a body with `Content-Length`), or fail past `within` seconds."""
        head = await within_s(self.reader.readuntil(b"\r\n\r\n"), within)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await within_s(self.reader.readexactly(int(headers["content-length"])), within)
        return Response(int(status_line.split()[1]), headers, body)

    async def closed(self, within: float) -> bytes:
        """Wait for the edge to close the connection; what it sent until then."""
        try:
            return await within_s(self.reader.read(), within)
        except ConnectionResetError:
            return b""

    def close(self) -> None:
        self.writer.close()


async def within_s(awaitable: Awaitable[T], seconds: float) -> T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"nothing within {seconds}s") from None


@asynccontextmanager
async def held(conns: list[Conn]) -> AsyncIterator[list[Conn]]:
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()


def request(path: str, *, body: bytes = b"", length: int | None = None, key: str | None = None) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: edge", "Content-Type: application/json"]
    if key is not None:
        head.append(f"Authorization: Bearer {key}")
    head.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"
CHAT = "/v1/chat/completions"
BODY = json.dumps({"model": "m", "messages": MESSAGES}).encode()


def connections(edge: Edge) -> int:
    return len(edge.server.server_state.connections)


# ------------------------------------------------------------------------------------ request headers


@pytest.mark.parametrize("sends", ["nothing", "half the headers", "half the next request", "a stray CRLF"])
async def test_a_connection_that_does_not_complete_its_headers_is_closed_after_the_header_timeout(
    nats_server: NatsServer, tmp_path: Path, sends: str
) -> None:
    # Keep-alive (5 s) is longer than the deadline: only the header timeout can close these in time.
    async with serve_edge(nats_server.url, tmp_path, header_timeout=1.0, keep_alive_timeout=5) as edge:
        conn = await Conn.open(edge)
        if sends in ("half the next request", "a stray CRLF"):  # after a first request, kept alive
            await conn.send(HEALTHZ)
            assert (await conn.response(within=5)).status == 200
        started = time.monotonic()
        await conn.send(
            {
                "nothing": b"",
                "half the headers": b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nAuthoriz",
                "half the next request": b"GET /healthz HTTP/1.1\r\nHo",
                "a stray CRLF": b"\r\n",
            }[sends]
        )
        assert await conn.closed(within=2.0) == b""  # closed unanswered
        assert time.monotonic() - started >= 0.9  # by the timer, not at once
        conn.close()
        await eventually(lambda: connections(edge) == 0, 2, "connection released")


async def test_headers_completed_in_time_are_served(nats_server: NatsServer, tmp_path: Path) -> None:
    async with serve_edge(nats_server.url, tmp_path, header_timeout=1.0) as edge:
        conn = await Conn.open(edge, b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(0.3)  # the rest of the headers a little later, well within the deadline
        await conn.send(b"Host: edge\r\n\r\n")
        assert (await conn.response(within=2)).status == 200
        conn.close()


async def test_the_deadlines_end_with_headers_and_body_a_long_stream_is_neither_cut_nor_left_unwatched(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    async def slow_stream(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "slow"))
        await asyncio.sleep(1.5)  # longer than either deadline
        await r.emit(env, EventKind.FINAL, 1, chunk(env.request_id, finish="stop"))

    router.handler = slow_stream
    options: dict[str, Any] = {"header_timeout": 1.0, "body_timeout": 1.0, "stream_idle_timeout": 5.0}
    async with serve_edge(nats_server.url, tmp_path, **options) as edge:
        async with edge.client() as client:
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            chunks = [c async for c in stream]
            assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]

            # The chat endpoint keeps calling `receive` after the body to notice a client leaving:
            # past the body deadline, that still works (the worker is told to stop).
            async def first_chunk_only(env: ChatEnvelope, r: FakeRouter) -> None:
                await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "and then nothing"))

            router.handler = first_chunk_only
            stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
            await asyncio.sleep(1.5)  # hold the open stream past the body deadline
            await stream.close()
        await eventually(lambda: len(router.cancels) == 1, 2, "cancel after the client left")
        assert router.cancels[0].request_id == router.envelopes[1].request_id
        assert router.cancels[0].reason == "client_disconnected"


# ------------------------------------------------------------------------------------ request bodies


@pytest.mark.parametrize("path", [CHAT, "/v1/gateways"])
async def test_a_body_that_stops_arriving_is_408_and_closed_while_others_are_served(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    router.handler = answer_at_once
    caplog.set_level(logging.INFO, logger="aigw.edge.access")
    async with serve_edge(nats_server.url, tmp_path, body_timeout=1.0) as edge:
        started = time.monotonic()
        slow = await Conn.open(edge, request(path, body=BODY[:10], length=1000, key=edge.keys.good))
        async with edge.client() as client:
            reply = await client.chat.completions.create(model="m", messages=MESSAGES)
        assert reply.choices[0].message.content == "served"
        served = time.monotonic()

        assert served - started < 0.9  # served while the slow body was still being waited for
        resp = await slow.response(within=2.0)
        assert time.monotonic() - started >= 0.9
        assert resp.status == 408 and resp.headers["connection"] == "close"
        error = resp.error()
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
        assert await slow.closed(within=1.0) == b""
        slow.close()
    assert len(router.envelopes) == 1  # only the served request reached the bus
    logged = [r.__dict__ for r in caplog.records if r.name == "aigw.edge.access"]
    assert [(line["path"], line["status"]) for line in logged] == [(CHAT, 200), (path, 408)]


async def test_a_chunked_body_that_stops_arriving_is_408_too(nats_server: NatsServer, tmp_path: Path) -> None:
    async with serve_edge(nats_server.url, tmp_path, body_timeout=1.0) as edge:
        head = f"POST {CHAT} HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer {edge.keys.good}\r\n"
        slow = await Conn.open(edge, f"{head}Transfer-Encoding: chunked\r\n\r\na\r\n".encode() + BODY[:10])
        resp = await slow.response(within=2.0)
        assert resp.status == 408 and resp.error()["code"] == "request_timeout"
        assert await slow.closed(within=1.0) == b""
        slow.close()


@pytest.mark.parametrize("path", [CHAT, "/v1/gateways", "/v1/keys"])
async def test_a_request_with_a_body_and_no_key_is_refused_at_once_and_cannot_linger(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter, path: str
) -> None:
    options: dict[str, Any] = {"body_timeout": 5.0, "header_timeout": 1.0, "keep_alive_timeout": 5}
    async with serve_edge(nats_server.url, tmp_path, **options) as edge:
        # The body never comes: a 401 now, not a 408 at the body timeout, proves it was not waited for.
        conn = await Conn.open(edge, request(path, length=1000))
        resp = await conn.response(within=1.0)
        assert resp.status == 401 and resp.error()["code"] == "missing_api_key"

        # Trickling the unread body afterwards does not keep the connection: it falls under the
        # header deadline (1 s), not keep-alive (5 s, which the first byte cancels) or nothing.
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < 2.0:
            try:
                await conn.send(b"x")
                closed = await asyncio.wait_for(conn.reader.read(), 0.2) == b""
            except TimeoutError:
                continue
            except ConnectionError:
                closed = True
        assert closed, "the edge kept a keyless connection trickling its body"
        conn.close()

        wrong = await Conn.open(edge, request(path, length=1000, key="aigw_not-a-key-anyone-issued"))
        assert (await wrong.response(within=1.0)).status == 401
        wrong.close()
    assert router.envelopes == []


async def test_fifty_half_open_connections_do_not_delay_a_normal_request_and_are_all_closed(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    router.handler = answer_at_once
    timeout = 2.0
    async with serve_edge(nats_server.url, tmp_path, header_timeout=timeout, body_timeout=timeout) as edge:
        half_headers = [Conn.open(edge, b"POST /v1/chat/completions HTTP/1.1\r\nHost: ed") for _ in range(25)]
        half_bodies = [
            Conn.open(edge, request(CHAT, body=BODY[:10], length=1000, key=edge.keys.good)) for _ in range(25)
        ]
        started = time.monotonic()
        async with held(list(await asyncio.gather(*half_headers, *half_bodies))) as conns:
            await eventually(lambda: connections(edge) >= 50, 2, "50 connections accepted")

            t0 = time.monotonic()
            async with edge.client() as client:
                reply = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert reply.choices[0].message.content == "served"
            assert time.monotonic() - t0 < 1.0
            assert connections(edge) >= 50  # the half-open ones were all still held meanwhile

            left = timeout + 1 - (time.monotonic() - started)
            ends = await asyncio.gather(*(conn.closed(within=left) for conn in conns))
            assert ends[:25] == [b""] * 25  # incomplete headers: closed unanswered
            assert all(b" 408 " in end.split(b"\r\n")[0] for end in ends[25:])
        await eventually(lambda: connections(edge) == 0, 2, "connections released")


# ------------------------------------------------------------------------------------ connection limit


async def test_past_max_connections_a_request_gets_an_openai_503_at_once_and_is_closed(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with serve_edge(nats_server.url, tmp_path, max_connections=5) as edge:
        async with held([await Conn.open(edge) for _ in range(4)]) as idle:
            await eventually(lambda: connections(edge) == 4, 2, "4 idle connections accepted")
            fifth = await Conn.open(edge, HEALTHZ)
            assert (await fifth.response(within=2)).status == 200  # the limit itself is served
            async with held([fifth]):
                t0 = time.monotonic()
                sixth = await Conn.open(edge, HEALTHZ)
                resp = await sixth.response(within=2)
                assert time.monotonic() - t0 < 1.0
                assert resp.status == 503 and resp.headers["retry-after"] == "1"
                assert resp.error()["code"] == "overloaded" and resp.headers["connection"] == "close"
                assert await sixth.closed(within=1) == b""
                sixth.close()
            assert len(idle) == 4
        await eventually(lambda: connections(edge) == 0, 2, "connections released")
        again = await Conn.open(edge, HEALTHZ)  # below the limit again: served
        assert (await again.response(within=2)).status == 200
        again.close()
