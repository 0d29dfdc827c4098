"""The simulator as a raw ASGI application.

Why no framework: this process is the zero-latency upstream the gateway's benchmarks are compared
against, so whatever it spends per request is wrongly charged to the gateway. A dict lookup routes,
byte templates answer (`responses.py`), and only requests that wait (latency, slow tokens, hang)
start a task to notice the client leaving (`asgi.DisconnectWatch`).
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable

from aigw_simulator import responses
from aigw_simulator.asgi import (
    ClientDisconnected,
    DisconnectWatch,
    Receive,
    Scope,
    Send,
    drop_connection,
    read_body,
    send_response,
)
from aigw_simulator.config import SimConfig
from aigw_simulator.errors import SimError, bad_request, error_body
from aigw_simulator.generation import Completion, echo, words
from aigw_simulator.history import CLIENT_DISCONNECTED, COMPLETED, RequestHistory, RequestRecord
from aigw_simulator.prompt import count_prompt_tokens
from aigw_simulator.request import ChatRequest, parse_chat_request

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNPARSEABLE = object()
_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def create_app(config: SimConfig | None = None) -> SimulatorApp:
    """The ASGI app for `config`; serve it with any ASGI server (see `server.serve` for uvicorn)."""
    return SimulatorApp(config or SimConfig())


class SimulatorApp:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.history = RequestHistory(config.history_size)
        self._recording = config.history_size > 0
        # A random per-process prefix keeps ids unique across restarts; the counter keeps them cheap.
        self._id_prefix = "chatcmpl-sim" + secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._models_body = responses.models_list(config.model_id)
        self._key = config.require_key
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/sim/requests"): self._list_requests,
            ("DELETE", "/sim/requests"): self._clear_requests,
        }
        self._paths = {path for _, path in self._routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
            else:
                await self._not_routed(scope, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    # --- chat completions -------------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        record = RequestRecord(f"{self._id_prefix}{next(self._counter):08d}", headers, time.time())
        if self._recording:
            self.history.add(record)
        try:
            raw = await read_body(receive)
        except ClientDisconnected:
            record.outcome = CLIENT_DISCONNECTED
            return
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = _UNPARSEABLE
        else:
            record.body = payload
        try:
            self._authorize(headers)
            if payload is _UNPARSEABLE:
                raise bad_request(_BAD_JSON)
            request = parse_chat_request(payload, headers, self.config.defaults)
        except SimError as error:
            record.outcome = error.outcome
            await send_response(send, error.status, responses.JSON_HEADERS, error.body())
            return
        knobs = request.knobs
        # Only requests that wait need to notice the client leaving; the rest answer at once.
        waits = knobs.latency_ms > 0 or knobs.token_ms > 0 or knobs.fault == "hang"
        watch = DisconnectWatch(receive) if waits else None
        try:
            await self._answer(record, request, receive, send, watch)
        finally:
            if watch is not None:
                watch.close()

    async def _answer(
        self,
        record: RequestRecord,
        request: ChatRequest,
        receive: Receive,
        send: Send,
        watch: DisconnectWatch | None,
    ) -> None:
        knobs = request.knobs
        if watch is not None and await watch.sleep(knobs.latency_ms / 1000):
            record.outcome = CLIENT_DISCONNECTED
            return
        fault = knobs.fault
        if fault == "hang" and watch is not None:
            record.outcome = "hang"  # visible while hanging; becomes client_disconnected below
            await watch.gone.wait()
            record.outcome = CLIENT_DISCONNECTED
            return
        id_header = (b"x-request-id", record.id.encode())
        if fault == "429":
            record.outcome = fault
            await send_response(send, 429, _rate_limit_headers(id_header, knobs.retry_after), _RATE_LIMIT)
            return
        if fault == "500":
            record.outcome = fault
            await send_response(send, 500, (*responses.JSON_HEADERS, id_header), _SERVER_ERROR)
            return
        if fault == "drop" and not request.stream:
            record.outcome = fault
            await _drop_before_response(send, receive, watch)
            return

        completion = echo(request.messages) if knobs.echo else words(knobs.tokens, request.max_tokens)
        usage = responses.usage(
            count_prompt_tokens(request.messages), completion.completion_tokens, knobs.cached_tokens
        )
        created = int(record.received_at)
        model = responses.model_json(request.model)
        if request.stream:
            frames = responses.ChunkFrames(record.id.encode(), created, model, request.include_usage)
            record.outcome = await _stream(
                frames, completion, usage, request, send, receive, watch, id_header
            )
            return
        if watch is not None and await watch.sleep(completion.completion_tokens * knobs.token_ms / 1000):
            record.outcome = CLIENT_DISCONNECTED
            return
        body = responses.completion(
            record.id.encode(), created, model, completion.content, completion.finish_reason, usage
        )
        await send_response(send, 200, (*responses.JSON_HEADERS, id_header), body)
        record.outcome = COMPLETED

    def _authorize(self, headers: list[tuple[bytes, bytes]]) -> None:
        if self._key is None:
            return
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and secrets.compare_digest(token.strip(), self._key):
                    return
        raise SimError(
            401,
            "Incorrect API key provided. (aigw-simulator was started with --require-key.)",
            code="invalid_api_key",
        )

    # --- the other endpoints ----------------------------------------------------------------------

    async def _models(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            self._authorize(scope["headers"])
        except SimError as error:
            await send_response(send, error.status, responses.JSON_HEADERS, error.body())
            return
        await send_response(send, 200, responses.JSON_HEADERS, self._models_body)

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send_response(send, 200, responses.JSON_HEADERS, responses.HEALTHZ)

    async def _list_requests(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = json.dumps([record.to_json() for record in self.history]).encode()
        await send_response(send, 200, responses.JSON_HEADERS, body)

    async def _clear_requests(self, scope: Scope, receive: Receive, send: Send) -> None:
        cleared = len(self.history)
        self.history.clear()
        await send_response(send, 200, responses.JSON_HEADERS, b'{"deleted":%d}' % cleared)

    async def _not_routed(self, scope: Scope, send: Send) -> None:
        known = scope["path"] in self._paths
        status = 405 if known else 404
        message = f"Invalid URL ({scope['method']} {scope['path']})"
        body = error_body(message, "invalid_request_error", None, None if known else "unknown_url")
        await send_response(send, status, responses.JSON_HEADERS, body)


async def _stream(
    frames: responses.ChunkFrames,
    completion: Completion,
    usage: bytes,
    request: ChatRequest,
    send: Send,
    receive: Receive,
    watch: DisconnectWatch | None,
    id_header: tuple[bytes, bytes],
) -> str:
    """Send the SSE stream; returns the outcome to record."""
    knobs = request.knobs
    end = [frames.finish(completion.finish_reason)]
    if request.include_usage:
        end.append(frames.usage(usage))
    end.append(responses.DONE)
    headers = [*responses.SSE_HEADERS, id_header]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    drop_at = knobs.drop_after if knobs.fault == "drop" else None
    if knobs.token_ms <= 0 and drop_at is None:
        # Nothing to pace: one write. A zero-latency upstream's tokens arrive together anyway.
        body = b"".join((frames.role(), *map(frames.piece, completion.pieces), *end))
        await send({"type": "http.response.body", "body": body})
        return COMPLETED

    delay = knobs.token_ms / 1000
    await send({"type": "http.response.body", "body": frames.role(), "more_body": True})
    for index, piece in enumerate(completion.pieces):
        if index == drop_at:
            break
        if watch is not None and await watch.sleep(delay):
            return CLIENT_DISCONNECTED
        await send({"type": "http.response.body", "body": frames.piece(piece), "more_body": True})
    if drop_at is not None:
        # Cut mid-stream: no finish chunk, no [DONE].
        await drop_connection(send, receive, watch)
        return "drop"
    await send({"type": "http.response.body", "body": b"".join(end)})
    return COMPLETED


async def _drop_before_response(send: Send, receive: Receive, watch: DisconnectWatch | None) -> None:
    if not await drop_connection(send, receive, watch):
        # Fallback for servers without a reachable transport: promise a body that never comes.
        headers = [*responses.JSON_HEADERS, (b"content-length", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


def _rate_limit_headers(id_header: tuple[bytes, bytes], retry_after: int) -> list[tuple[bytes, bytes]]:
    return [*responses.JSON_HEADERS, id_header, (b"retry-after", b"%d" % retry_after)]


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to set up, but answer the protocol so servers running with lifespan on are happy."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


_RATE_LIMIT = error_body(
    "Rate limit reached for requests (simulated by aigw-simulator). Please try again later.",
    "requests",
    None,
    "rate_limit_exceeded",
)
_SERVER_ERROR = error_body(
    "The server had an error while processing your request. Sorry about that! (simulated by aigw-simulator)",
    "server_error",
    None,
    None,
)
