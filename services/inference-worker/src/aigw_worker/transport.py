"""The httpx transport the worker calls upstreams through: httpcore's HTTP/1.1 connections on plain
asyncio sockets, the idle ones kept on a stack per origin.

Why not httpx's default transport: measured on this machine kind (the simulator on another core,
16 requests in flight, a 16-token answer), `AsyncClient.send` over the default transport costs
about 2,000 µs of CPU per request; `handle_async_request` on this transport about 240 µs. Measured
again with `uv run python -m bench.transport` (same layout, median of 3 × 3,000 calls, a loaded
2-core VM, 2026-12-02): 2,223 µs per call through `httpx.AsyncClient`, 1,731 µs through
`httpx.AsyncHTTPTransport` alone, 371 µs here (6.0× and 4.7× less). The default's cost comes from three places, none of which the worker needs:

* httpcore's connection pool walks every connection twice per request (on send and on close), and
  for each idle one counts the idle ones again (quadratic) and asks the socket whether it is
  readable (a `poll` syscall behind several anyio attribute lookups);
* anyio wraps every socket read and write in cancel scopes and `fail_after` timers;
* the client's auth, redirect, cookie and event-hook layers. The worker follows no redirects (a
  tenant's endpoint must not send it elsewhere), sends no cookies (one shared cookie jar would
  carry a tenant's upstream cookies to another tenant's request) and has no hooks.

What stays httpx's and httpcore's: `httpx.Request`/`httpx.Response`, httpx's exceptions (so the
error mapping in `upstream.py` is unchanged), and httpcore's HTTP/1.1 connection (h11's parser,
keep-alive rules, timeouts per read and write). What this module adds is small: a socket protocol
(`_Socket`) that answers "is this idle connection dead?" from state it already holds, and a stack
of idle connections per origin (the most recently used first, so a busy worker keeps reusing its
warm connections; the bottom of a stack is pruned when it expires).

httpcore's connection still takes an anyio lock twice a call, each acquisition yielding to the loop
once; a non-yielding lock in its place was measured (`bench.transport`, alternated) at 1.2× the CPU
per call, not less: those yields let more answers be read per turn of the loop. Keep it.

There is no connection limit here: the worker's `max_inflight` semaphore bounds the calls in flight,
and each call holds at most one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httpcore
import httpx

_HIGH_WATER = 256 * 1024  # bytes buffered from an upstream before we stop reading its socket
_MAX_ORIGINS = 4096

# httpcore's exceptions, as the httpx exceptions callers handle (what httpx's own transport maps).
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
)


def _as_httpx(exc: Exception) -> httpx.HTTPError:
    for core, mapped in _ERRORS:
        if isinstance(exc, core):
            return mapped(str(exc))
    return httpx.TransportError(str(exc))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Socket(asyncio.Protocol):
    """One TCP connection's state, kept by the event loop's callbacks (no syscalls to ask it)."""

    __slots__ = ("buffer", "closed", "drained", "error", "paused", "received", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False  # EOF or connection lost
        self.error: BaseException | None = None
        self.received: asyncio.Future[None] | None = None  # a reader waiting for data
        self.drained: asyncio.Future[None] | None = None  # a writer waiting for the send buffer
        self.paused = False  # the send buffer is above its high-water mark

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.received
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self.buffer) > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiter = self.drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        for waiter in (self.received, self.drained):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """httpcore's view of one connection. Timeouts are one timer per wait, only when it must wait."""

    __slots__ = ("_socket", "_transport")

    def __init__(self, transport: asyncio.Transport, socket: _Socket) -> None:
        self._transport = transport
        self._socket = socket

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's interface)
        sock = self._socket
        if not sock.buffer and not sock.closed:
            loop = asyncio.get_running_loop()
            waiter = sock.received = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading from the upstream") from None
            finally:
                sock.received = None
                if timer is not None:
                    timer.cancel()
        buffer = sock.buffer
        if buffer:
            if len(buffer) <= max_bytes:
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:max_bytes])
                del buffer[:max_bytes]
            if len(buffer) <= _HIGH_WATER // 2 and not sock.closed:
                self._transport.resume_reading()  # a no-op unless it was paused
            return data
        if sock.error is not None:
            raise httpcore.ReadError(str(sock.error) or type(sock.error).__name__)
        return b""  # EOF: httpcore decides whether that was expected

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 (httpcore's interface)
        if not buffer:
            return
        sock = self._socket
        if sock.closed or self._transport.is_closing():
            raise httpcore.WriteError("the upstream connection is closed")
        self._transport.write(buffer)
        if sock.paused:
            loop = asyncio.get_running_loop()
            waiter = sock.drained = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the upstream") from None
            finally:
                sock.drained = None
                if timer is not None:
                    timer.cancel()
            if sock.error is not None:
                raise httpcore.WriteError(str(sock.error))

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._socket, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake with the upstream") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        if tls is None:  # the connection went away during the handshake
            raise httpcore.ConnectError("the upstream closed the connection during the TLS handshake")
        self._socket.transport = tls = cast(asyncio.Transport, tls)
        return AsyncioStream(tls, self._socket)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle HTTP/1.1 connection that has data or EOF waiting is dead (the server closed it).
            sock = self._socket
            return sock.closed or bool(sock.buffer)
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


async def connect(host: str, port: int, within: float | None) -> AsyncioStream:
    """A TCP connection (TCP_NODELAY, as asyncio sets it), as an httpcore network stream."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            transport, socket = await loop.create_connection(_Socket, host, port)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
    return AsyncioStream(cast(asyncio.Transport, transport), socket)


_Key = tuple[bytes, bytes, int, str | None]  # scheme, host, port, TLS server name


class _Body(httpx.AsyncByteStream):
    """A response body: httpcore's errors mapped to httpx's; closing returns a reusable connection."""

    __slots__ = ("_connection", "_idle", "_stream", "_transport")

    def __init__(
        self,
        stream: Any,
        connection: httpcore.AsyncHTTP11Connection,
        idle: deque[httpcore.AsyncHTTP11Connection],
        transport: Http11Transport,
    ) -> None:
        self._stream = stream
        self._connection = connection
        self._idle = idle
        self._transport = transport

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except httpcore.ConnectionNotAvailable as exc:  # pragma: no cover - httpcore internal
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
            raise _as_httpx(exc) from exc

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
            raise _as_httpx(exc) from exc
        finally:
            await self._transport._release(self._connection, self._idle)


class Http11Transport(httpx.AsyncBaseTransport):
    """An httpx transport over HTTP/1.1 keep-alive connections, for `Upstream`.

    `request.extensions` may hold `timeout` (httpx's dict: connect, read, write) and
    `sni_hostname` (the TLS server name when the URL's host is an address that was checked).
    """

    def __init__(
        self,
        ssl_context: ssl.SSLContext | None = None,
        keepalive_expiry: float = 30.0,
        max_idle_per_origin: int = 512,
    ) -> None:
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._max_idle = max_idle_per_origin
        self._idle: dict[_Key, deque[httpcore.AsyncHTTP11Connection]] = {}
        self._closed = False

    def _ssl(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = httpx.create_ssl_context()  # certifi's CAs, as httpx's default
        return self._ssl_context

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"Request URL has an unsupported protocol '{url.scheme}://'.")
        extensions = request.extensions
        port = url.port or (443 if scheme == b"https" else 80)
        sni: str | None = extensions.get("sni_hostname") if scheme == b"https" else None
        key: _Key = (scheme, url.raw_host, port, sni)
        idle = self._idle.get(key)
        if idle is None:
            if len(self._idle) >= _MAX_ORIGINS:  # many own endpoints: forget the ones with nothing idle
                self._idle = {k: stack for k, stack in self._idle.items() if stack}
            idle = self._idle[key] = deque()
        connection = await self._connection(idle, url, port, sni, extensions.get("timeout") or {})
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=scheme, host=url.raw_host, port=port, target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,  # an httpx stream is an async iterable of bytes
            extensions=extensions,
        )
        try:
            response = await connection.handle_async_request(core_request)
        except httpcore.ConnectionNotAvailable as exc:  # pragma: no cover - checked idle just before
            await connection.aclose()
            raise httpx.RemoteProtocolError(str(exc)) from exc
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
            raise _as_httpx(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream, connection, idle, self),
            extensions=response.extensions,
        )

    async def _connection(
        self,
        idle: deque[httpcore.AsyncHTTP11Connection],
        url: httpx.URL,
        port: int,
        sni: str | None,
        timeouts: dict[str, float | None],
    ) -> httpcore.AsyncHTTP11Connection:
        while idle:
            connection = idle.pop()  # the warmest
            if connection.is_idle() and not connection.has_expired():
                return connection
            await connection.aclose()
        connect_timeout = timeouts.get("connect")
        try:
            stream: httpcore.AsyncNetworkStream = await connect(url.host, port, connect_timeout)
            if url.raw_scheme == b"https":
                stream = await stream.start_tls(self._ssl(), sni or url.host, connect_timeout)
        except (httpcore.NetworkError, httpcore.TimeoutException) as exc:
            raise _as_httpx(exc) from exc
        origin = httpcore.Origin(url.raw_scheme, url.raw_host, port)
        return httpcore.AsyncHTTP11Connection(origin, stream, keepalive_expiry=self._keepalive_expiry)

    async def _release(
        self, connection: httpcore.AsyncHTTP11Connection, idle: deque[httpcore.AsyncHTTP11Connection]
    ) -> None:
        """Back on its stack if it can carry another request (else httpcore already closed it)."""
        if not connection.is_idle():
            return
        if self._closed:
            await connection.aclose()
            return
        idle.append(connection)
        # Prune from the cold end: connections nobody used within the keep-alive expiry (or that
        # the server closed), and any beyond the cap.
        while idle and (len(idle) > self._max_idle or idle[0].has_expired()):
            await idle.popleft().aclose()

    @property
    def idle_connections(self) -> int:
        return sum(len(stack) for stack in self._idle.values())

    async def aclose(self) -> None:
        self._closed = True
        stacks, self._idle = list(self._idle.values()), {}
        for stack in stacks:
            for connection in stack:
                with contextlib.suppress(Exception):
                    await connection.aclose()
