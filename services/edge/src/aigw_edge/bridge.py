"""Other APIs on the chat completions pipeline: a request translated in, the answer translated out.

`/v1/messages` (Anthropic) and `/v1/responses` (OpenAI Responses) are chat completions in another
dress. Rather than a second way through the gateway, each is translated into a chat completions
body and handed to the very `ChatEndpoint` that serves `/v1/chat/completions`, in-process, as an
ASGI call: the same key check, rate limits, admission, idempotency, envelope, deadlines, holder
checks, cancellation and metering, with no extra hop. Only the bytes it sends are intercepted:

* before it answers, its status and headers (`x-request-id`, the `x-aigw-*` headers, `retry-after`);
* a JSON answer (completion or OpenAI error body), whole, to be translated once;
* a stream, frame by frame: every `data:` chunk is parsed and handed to the translator, which
  writes its own events; the translated bytes go out with the same back-pressure, one `send` per
  batch the endpoint relayed.

The client's disconnect reaches the endpoint unchanged (its `receive` is the client's), so a client
that leaves cancels the upstream call exactly as on chat completions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw_contracts import ApiKey, headers
from aigw_contracts.errors import GatewayError, InvalidRequest

from . import sse
from .auth import KeyStore, duplicate_authorization
from .errors import invalid_request, retry_after_headers

M = TypeVar("M", bound=BaseModel)

CHAT_PATH = "/v1/chat/completions"
_KEPT = frozenset(
    {
        headers.HTTP_REQUEST_ID.encode(),
        b"retry-after",
        b"retry-after-ms",
        b"x-should-retry",
        headers.HTTP_IDEMPOTENT_REPLAY.encode(),
        headers.HTTP_ROUTED_COMPLEXITY.encode(),
    }
)
_EVENT_STREAM = b"text/event-stream"


def bearer_or_api_key(scope: Scope) -> bytes | None:
    """The caller's credentials as an `Authorization` value: the header itself, or `x-api-key`
    (what Anthropic's SDKs send) as `Bearer <key>`. Several of either are refused."""
    found: bytes | None = None
    api_key: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            if found is not None:
                raise duplicate_authorization()
            found = bytes(value)
        elif name == b"x-api-key":
            if api_key is not None:
                raise InvalidRequest("The request has more than one x-api-key header; send exactly one.")
            api_key = bytes(value)
    if found is None and api_key is not None:
        found = b"Bearer " + api_key.strip()
    return found


async def read_request(request: Request, keys: KeyStore, model: type[M]) -> tuple[ApiKey, M]:
    """Authenticate (before a byte of the body is read, as the chat endpoint does), then the body
    as `model`. Anything wrong is a `GatewayError` the route renders in its API's error shape."""
    key = keys.authenticate(bearer_or_api_key(request.scope))
    body = await request.body()
    try:
        return key, model.model_validate_json(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None


class Translator(Protocol):
    """What an API does with the chat endpoint's answer. `request_id` is set before any call."""

    request_id: str

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        """An OpenAI error body (before the answer started) as this API's error body."""
        ...

    def answer(self, completion: dict[str, Any]) -> bytes:
        """A whole `chat.completion` as this API's answer."""
        ...

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """One `chat.completion.chunk` as this API's stream events (already framed)."""
        ...

    def stream_error(self, body: dict[str, Any]) -> list[bytes]:
        """An error in a started stream, as this API's stream events."""
        ...

    def end(self) -> list[bytes]:
        """The stream ended normally (`[DONE]`): this API's closing events."""
        ...

    async def finished(self) -> None:
        """The answer is complete (stream or not); called before its last bytes go out, so a
        client that reads them can rely on what this did (e.g. stored the answer)."""
        ...


def error_response(err: GatewayError, render: Callable[[int, dict[str, Any]], bytes]) -> Response:
    """A refusal raised before the pipeline ran (bad body, bad key), in the API's error shape."""
    extra = {}
    if err.retry_after is not None:
        extra = {k.decode(): v.decode() for k, v in retry_after_headers(err.status, err.retry_after)}
    return Response(
        render(err.status, json.loads(err.to_json())), err.status, extra, media_type="application/json"
    )


class Bridged(Response):
    """The answer to a translated request: runs `chat` (the chat endpoint) on `body` when
    Starlette sends this response, translating what it sends with `translator`."""

    def __init__(self, chat: ASGIApp, body: bytes, translator: Translator):
        # Not Response.__init__: there is no body to render until the pipeline answers.
        self.chat = chat
        self.chat_body = body
        self.translator = translator
        self.background = None
        self.status_code = 200

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hdrs = [(k, v) for k, v in scope["headers"] if k not in (b"authorization", b"x-api-key")]
        credentials = bearer_or_api_key(scope)
        if credentials is not None:
            hdrs.append((b"authorization", credentials))
        # The chat endpoint reads exactly what a chat completions request would carry.
        hdrs = [(k, v) for k, v in hdrs if k not in (b"content-length", b"transfer-encoding")]
        hdrs.append((b"content-length", str(len(self.chat_body)).encode()))
        inner = {**scope, "path": CHAT_PATH, "raw_path": CHAT_PATH.encode(), "headers": hdrs}
        given = False

        async def inner_receive() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": self.chat_body, "more_body": False}
            return await receive()

        await self.chat(inner, inner_receive, _Relay(send, self.translator))


class _Relay:
    """The chat endpoint's `send`, translating as it goes (see the module doc)."""

    def __init__(self, send: Send, translator: Translator) -> None:
        self.send = send
        self.t = translator
        self.status = 0
        self.kept: list[tuple[bytes, bytes]] = []
        self.streaming = False
        self.started = False
        self.parts: list[bytes] = []
        self.pending = b""  # an SSE frame split across sends (the endpoint sends whole frames)
        self.complete = False
        self.failed = False  # an error event ended the stream

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = int(message["status"])
            for name, value in message.get("headers", ()):
                if name in _KEPT or name.startswith(b"x-aigw-"):
                    self.kept.append((name, value))
                    if name == b"x-request-id":
                        self.t.request_id = value.decode()
                if name == b"content-type" and value.startswith(_EVENT_STREAM):
                    self.streaming = True
            if self.streaming:
                self.started = True
                await self.send(
                    {
                        "type": "http.response.start",
                        "status": self.status,
                        "headers": sse.HEADERS + self.kept,
                    }
                )
            return
        if kind != "http.response.body":
            await self.send(message)
            return
        more = bool(message.get("more_body", False))
        if not self.streaming:
            self.parts.append(message.get("body", b""))
            if not more:
                await self._whole(b"".join(self.parts))
            return
        done = self.complete
        out = self._frames(message.get("body", b""))
        if self.complete and not done:
            await self.t.finished()
        await self.send({"type": "http.response.body", "body": b"".join(out), "more_body": more})

    async def _whole(self, body: bytes) -> None:
        parsed = json.loads(body)
        if 200 <= self.status < 300:
            translated = self.t.answer(parsed)
            self.complete = True
            await self.t.finished()
        else:
            translated = self.t.error(self.status, parsed)
        await self.send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(translated)).encode()),
                    *self.kept,
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": translated})

    def _frames(self, data: bytes) -> list[bytes]:
        buffer = self.pending + data
        *frames, self.pending = buffer.split(b"\n\n")
        out: list[bytes] = []
        for frame in frames:
            payload = b"\n".join(
                line[6:] if line.startswith(b"data: ") else line[5:]
                for line in frame.split(b"\n")
                if line.startswith(b"data:")
            )
            if not payload:
                continue
            if payload == b"[DONE]":
                if not self.failed:
                    out.extend(self.t.end())
                    self.complete = True
                continue
            chunk = json.loads(payload)
            if "error" in chunk:
                self.failed = True
                out.extend(self.t.stream_error(chunk))
            else:
                out.extend(self.t.chunk(chunk))
        return out


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    """One named server-sent event (Anthropic's and the Responses API's framing)."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"event: {name}\ndata: {data}\n\n".encode()
