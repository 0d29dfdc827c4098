"""The ASGI plumbing the app needs, and nothing more: body reading, responses, disconnects.

Written against the raw ASGI interface (no framework) because the simulator is a benchmark
baseline; see `app.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnected
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the common case: the whole body in one message
    parts = [body]
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_response(send: Send, status: int, headers: Headers, body: bytes) -> None:
    all_headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


class DisconnectWatch:
    """Notices the client leaving while the app is waiting (latency, slow tokens, hang).

    uvicorn's `send` silently drops writes to a closed connection, so a disconnect is only visible
    as the `http.disconnect` message from `receive`. Once the body has been read, a background task
    waits on `receive` and sets an event; the app's waits end early when it fires. Created only for
    requests that wait, so zero-latency requests pay nothing for it.
    """

    def __init__(self, receive: Receive) -> None:
        self.gone = asyncio.Event()
        self._task = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()

    async def sleep(self, seconds: float) -> bool:
        """Wait `seconds`; True if the client disconnected meanwhile (returning as soon as it does)."""
        if seconds <= 0:
            return self.gone.is_set()
        try:
            async with asyncio.timeout(seconds):
                await self.gone.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self._task.cancel()


async def drop_connection(send: Send, receive: Receive, watch: DisconnectWatch | None) -> bool:
    """Cut the TCP connection under the response, as a crashing upstream would.

    ASGI has no "drop the connection" message: an app that returns early gets a 500 or an orderly
    close from the server. uvicorn's `send` is a bound method of its per-request cycle, which holds
    the asyncio transport, so we close that (already-written bytes are flushed, then FIN, never the
    end of the HTTP message). Then wait until the server has noticed, so it neither logs "returned
    without completing response" nor tries to send a 500. Returns False under a server that does
    not expose its transport this way; the caller then falls back to an unfinished response.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    close = getattr(transport, "close", None)
    if not callable(close):
        return False
    close()
    try:
        async with asyncio.timeout(5):
            if watch is not None:
                await watch.gone.wait()
            else:
                while (await receive())["type"] != "http.disconnect":
                    pass
    except TimeoutError:
        pass
    return True
