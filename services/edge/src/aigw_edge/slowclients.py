"""What a slow or keyless client can hold: two pure-ASGI middlewares, for chat and management alike.

uvicorn waits for a request body as long as the client likes, and FastAPI reads the body before it
runs any dependency (authentication included). So a client that sends headers and then a trickle
of body, with or without a key, would hold a connection and a task indefinitely. Here:

- `KeyBeforeBodyMiddleware`: a request that carries a body needs a valid API key before a byte of
  it is read (the chat endpoint checks its key before reading on its own, and is skipped).
- `BodyTimeoutMiddleware`: a body must arrive whole within `AIGW_BODY_TIMEOUT` of the request
  headers, else 408 (`request_timeout`) and the connection is closed.

A refusal sent before the body was read (401, 413) leaves the connection open, so a client still
sending its body reads the answer rather than a reset; what it sends after the answer falls under
the header deadline of `server.EdgeHttpProtocol`, which also holds the connection limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw_contracts.errors import GatewayError

from .auth import KeyStore, authorization
from .errors import send_error

_CONNECTION_CLOSE = (b"connection", b"close")


class RequestTimeout(GatewayError):
    """The request body did not arrive in time (408, which the OpenAI SDKs retry)."""

    status, type, code = 408, "invalid_request_error", "request_timeout"


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request declares a body: a non-zero `Content-Length`, or chunked transfer coding."""
    for name, value in headers:
        if (name == b"content-length" and value.strip() != b"0") or name == b"transfer-encoding":
            return True
    return False


class KeyBeforeBodyMiddleware:
    """Refuse a request that carries a body and no valid key, from its headers alone: the same
    401 (or 400 for several `Authorization` headers) the route's own check would give, without
    waiting for the body FastAPI would read first. Every route that takes a body needs a key, so
    this refuses nothing a route would accept; a keyless body sent to an unknown path gets 401
    instead of 404."""

    def __init__(self, app: ASGIApp, keys: KeyStore, skip_paths: Collection[str] = ()) -> None:
        self.app = app
        self.keys = keys
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.skip_paths and has_body(scope["headers"]):
            try:
                self.keys.authenticate(authorization(scope))
            except GatewayError as err:
                await send_error(send, err)
                return
        await self.app(scope, receive, send)


class _Body:
    """One request's body on its way in: `receive` and `send` as its app sees them.

    Both are plain functions returning the server's own awaitable on the common path (body
    complete, no timeout), so the hot path pays no extra coroutine per call."""

    __slots__ = (
        "_receive",
        "_send",
        "answered",
        "complete",
        "deadline",
        "expired",
        "timed_out",
        "timeout",
        "waiter",
    )

    def __init__(self, receive: Receive, send: Send, timeout: float, now: float) -> None:
        self._receive, self._send = receive, send
        self.timeout, self.deadline = timeout, now + timeout
        self.waiter: asyncio.Task[Any] | None = None  # the task awaiting `receive`, while it does
        self.expired = False  # past the deadline (set by the sweeper)
        self.complete = False  # the whole body was received: from here on, `receive` is the server's
        self.answered = False  # the app started its response
        self.timed_out = False  # we answered 408

    def receive(self) -> Awaitable[Message]:
        return self._receive() if self.complete else self._receive_within()

    def send(self, message: Message) -> Awaitable[None]:
        if self.timed_out:
            return _dropped()  # the client had its 408; the connection closes
        self.answered = True
        return self._send(message)

    async def _receive_within(self) -> Message:
        if self.timed_out:
            return {"type": "http.disconnect"}
        if not self.expired:
            task = self.waiter = asyncio.current_task()
            try:
                message = await self._receive()
            except asyncio.CancelledError:
                # Ours (the sweeper's) unless someone else cancelled the task as well.
                if not self.expired or task is None or task.uncancel() > 0:
                    raise
            else:
                if message["type"] != "http.request" or not message.get("more_body", False):
                    self.complete = True
                return message
            finally:
                self.waiter = None
        self.timed_out = True
        err = RequestTimeout(f"The request body did not arrive within {self.timeout:g} s.")
        if not self.answered:
            await send_error(self._send, err, [_CONNECTION_CLOSE])
        raise err


async def _dropped() -> None:
    pass


class BodyTimeoutMiddleware:
    """A deadline on the request body, from the headers to its last byte.

    One sweeper task per middleware checks the bodies being read every `tick` seconds, instead of a
    timer per request: chat completions are the hot path, and their body is nearly always there
    with the headers, so a request costs a set insert and removal rather than a timer. An overdue
    request is answered 408 with `connection: close` at once; its app then sees `RequestTimeout`
    raised from `receive`, and whatever it still sends is dropped. Once the body is complete,
    `receive` is the server's own (the chat endpoint keeps calling it to notice a client leaving).
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout
        self.tick = min(1.0, timeout / 4)
        self.reading: set[_Body] = set()  # bodies not complete yet
        self._sweeper: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope["headers"]):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        body = _Body(receive, send, self.timeout, loop.time())
        self.reading.add(body)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep())
        try:
            await self.app(scope, body.receive, body.send)
        except RequestTimeout:
            if not body.timed_out:
                raise
        finally:
            self.reading.discard(body)

    async def _sweep(self) -> None:
        """Expire overdue bodies until none is being read (the next request starts it again)."""
        loop = asyncio.get_running_loop()
        try:
            while self.reading:
                await asyncio.sleep(self.tick)
                now = loop.time()
                for body in [b for b in self.reading if b.deadline <= now]:
                    self.reading.discard(body)
                    if body.complete or body.timed_out:
                        continue
                    body.expired = True
                    if body.waiter is not None:
                        body.waiter.cancel()
        finally:
            self._sweeper = None
