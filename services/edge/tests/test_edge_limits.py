"""The body size limit middleware, driven with ASGI messages directly."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from aigw_edge.limits import BodyLimitMiddleware

LIMIT = 100


class Echo:
    """An app that reads the whole body and answers with its length."""

    def __init__(self) -> None:
        self.called = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.called = True
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def _run(app: Any, headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> tuple[list[Message], int]:
    pending = [
        {"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)
    ]
    consumed = 0

    async def receive() -> Message:
        nonlocal consumed
        consumed += 1
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    await app(scope, receive, send)
    return sent, consumed


def _status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


async def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    app = Echo()
    sent, consumed = await _run(BodyLimitMiddleware(app, LIMIT), [(b"content-length", b"101")], [b"x" * 101])
    assert _status(sent) == 413 and consumed == 0 and not app.called
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


async def test_a_declared_length_at_the_limit_passes() -> None:
    sent, _ = await _run(BodyLimitMiddleware(Echo(), LIMIT), [(b"content-length", b"100")], [b"x" * 100])
    assert _status(sent) == 200 and sent[1]["body"] == b"100"


async def test_a_chunked_body_is_counted_and_refused_once_over() -> None:
    parts = [b"x" * 40, b"x" * 40, b"x" * 40, b"x" * 40]
    sent, consumed = await _run(
        BodyLimitMiddleware(Echo(), LIMIT), [(b"transfer-encoding", b"chunked")], parts
    )
    assert _status(sent) == 413
    assert consumed == 3  # stopped at the chunk that crossed the limit


async def test_a_chunked_body_under_the_limit_passes_whole() -> None:
    parts = [b"x" * 30, b"x" * 30, b"x" * 30]
    sent, _ = await _run(BodyLimitMiddleware(Echo(), LIMIT), [(b"transfer-encoding", b"chunked")], parts)
    assert _status(sent) == 200 and sent[1]["body"] == b"90"


async def test_an_overflow_after_the_response_started_is_not_hidden() -> None:
    async def streams_first(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body"):
            pass

    parts = [b"x" * 80, b"x" * 80]
    with pytest.raises(Exception, match="larger than"):
        await _run(BodyLimitMiddleware(streams_first, LIMIT), [], parts)
