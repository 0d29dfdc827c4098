"""The upstream transport (httpcore's HTTP/1.1 on asyncio sockets) against real sockets: keep-alive
reuse, dead idle connections, timeouts and errors as httpx's exceptions, TLS with a checked address
and its server name, compressed bodies, and bodies cut short."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from aigw_contracts import Prices, UpstreamTarget
from aigw_devstack.procs import free_port
from aigw_worker.transport import Http11Transport
from aigw_worker.upstream import Upstream

from .conftest import Sim, worker_settings

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    port = free_port()
    server = await asyncio.start_server(handler, "127.0.0.1", port, ssl=tls)
    try:
        yield port
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


def response(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


def request(url: str, timeout: float = 5.0, **extensions: object) -> httpx.Request:
    ext = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}, **extensions}
    return httpx.Request("POST", url, content=b"{}", extensions=ext)


async def send(transport: Http11Transport, req: httpx.Request) -> tuple[bytes, object]:
    resp = await transport.handle_async_request(req)
    stream = resp.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    try:
        body = b"".join([part async for part in stream])
    finally:
        await stream.aclose()
    return body, resp.extensions["network_stream"].get_extra_info("client_addr")


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_idle_connections_are_reused_most_recent_first(sim: Sim) -> None:
    transport = Http11Transport()
    url = f"{sim.url}/chat/completions"
    body = b'{"model":"m","messages":[{"role":"user","content":"x [sim tokens=2]"}]}'
    try:
        ports = []
        for _ in range(3):
            resp = await transport.handle_async_request(
                httpx.Request("POST", url, content=body, extensions={"timeout": {"read": 5.0}})
            )
            assert resp.status_code == 200
            assert b"sim0 sim1" in await resp.aread()
            ports.append(resp.extensions["network_stream"].get_extra_info("client_addr")[1])
            await resp.aclose()
        assert len(set(ports)) == 1 and transport.idle_connections == 1
    finally:
        await transport.aclose()


async def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    served = 0
    drop = asyncio.Event()

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(response(b'{"n": %d}' % served))  # keep-alive, as far as the client knows
        await writer.drain()
        await drop.wait()
        writer.close()  # ... then the server drops it (its keep-alive timeout)

    transport = Http11Transport()
    try:
        async with serve(once_then_close) as port:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            first, addr1 = await send(transport, request(url))
            assert transport.idle_connections == 1
            (idle,) = next(iter(transport._idle.values()))
            assert not idle.has_expired()
            drop.set()
            await until(lambda: idle.has_expired())  # noticed from the socket's EOF, no syscall
            second, addr2 = await send(transport, request(url))
        assert (first, second) == (b'{"n": 1}', b'{"n": 2}') and addr1 != addr2
    finally:
        await transport.aclose()


async def test_timeouts_and_refusals_are_httpx_exceptions() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    transport = Http11Transport()
    try:
        async with serve(silent) as port:
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout):
                await transport.handle_async_request(request(f"http://127.0.0.1:{port}/x", timeout=0.2))
            assert time.monotonic() - started < 3
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(request(f"http://127.0.0.1:{free_port()}/x"))
        with pytest.raises(httpx.UnsupportedProtocol):
            await transport.handle_async_request(request("ftp://127.0.0.1/x"))
    finally:
        await transport.aclose()


async def test_a_body_closed_before_its_end_closes_the_connection(sim: Sim) -> None:
    transport = Http11Transport()
    body = (
        b'{"model":"m","stream":true,"messages":[{"role":"user","content":"x [sim tokens=50 token_ms=20]"}]}'
    )
    try:
        resp = await transport.handle_async_request(
            httpx.Request(
                "POST", f"{sim.url}/chat/completions", content=body, extensions={"timeout": {"read": 5.0}}
            )
        )
        stream = resp.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        async for part in stream:
            assert part.startswith(b"data:")
            break
        await stream.aclose()
        assert transport.idle_connections == 0  # half-read: never handed to another request
    finally:
        await transport.aclose()


async def test_fetch_decodes_a_compressed_answer() -> None:
    answer = b'{"choices": [], "text": "' + b"z" * 2000 + b'"}'

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(response(gzip.compress(answer), b"content-encoding: gzip"))
            await writer.drain()

    async with serve(gzipped) as port:
        upstream = Upstream(worker_settings())
        target = UpstreamTarget(
            id="@sim/m",
            kind="catalog",
            provider="sim",
            model="m",
            base_url=f"http://127.0.0.1:{port}/v1",
            prices=Prices(input=Decimal(0), output=Decimal(0), cached_input=Decimal(0)),
        )
        try:
            req = await upstream.build(target, b"{}", 5.0, stream=False)
            assert req.headers["host"] == f"127.0.0.1:{port}" and req.headers["content-length"] == "2"
            assert await upstream.fetch(req) == answer
            assert await upstream.fetch(await upstream.build(target, b"{}", 5.0, stream=False)) == answer
        finally:
            await upstream.aclose()


def _self_signed(tmp: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a certificate of `name`."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


async def test_tls_to_a_checked_address_verifies_the_server_name(tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path, "upstream.example")

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(response(b'{"ok": true}'))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    transport = Http11Transport(ssl_context=client_ctx)
    try:
        async with serve(answer, tls=server_ctx) as port:
            url = f"https://127.0.0.1:{port}/v1/chat/completions"
            body, addr1 = await send(transport, request(url, sni_hostname="upstream.example"))
            again, addr2 = await send(transport, request(url, sni_hostname="upstream.example"))
            assert body == again == b'{"ok": true}' and addr1 == addr2  # TLS kept alive too
            # the same address under another name is another connection, and that name is refused
            with pytest.raises(httpx.ConnectError):
                await transport.handle_async_request(request(url, sni_hostname="other.example"))
    finally:
        await transport.aclose()
