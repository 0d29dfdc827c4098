"""The simulator as a raw ASGI application.

Why no framework: this process is the zero-latency upstream the gateway's benchmarks are compared
against, so whatever it spends per request is wrongly charged to the gateway. A dict lookup routes,
byte templates answer (`responses.py`), and only requests that wait (latency, slow tokens, hang)
start a task to notice the client leaving (`asgi.DisconnectWatch`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace

from aigw_simulator import choices, embeddings, providers, responses
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
from aigw_simulator.config import Knobs, SimConfig
from aigw_simulator.directives import knobs_for_text, strip_directives
from aigw_simulator.errors import SimError, bad_request, error_body
from aigw_simulator.generation import Completion, ToolCall, echo, fixed, tool_call_tokens, tool_calls, words
from aigw_simulator.history import (
    CLIENT_DISCONNECTED,
    COMPLETED,
    TOOL_CALLS,
    RequestHistory,
    RequestRecord,
)
from aigw_simulator.prompt import count_prompt_tokens, last_user_text
from aigw_simulator.request import ChatRequest, parse_chat_request

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNPARSEABLE = object()
_FAULT_KEYS = 10_000  # last messages `fault_times` remembers (then it starts over)
_MALFORMED_STREAM = b'data: {"id": "chatcmpl-sim", "choices": [oops\n\n'
_MALFORMED_JSON = b'{"id": "chatcmpl-sim", "choices": ['

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
            ("POST", "/v1/embeddings"): self._embeddings,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/sim/requests"): self._list_requests,
            ("DELETE", "/sim/requests"): self._clear_requests,
        }
        self._paths = {path for _, path in self._routes}
        self._fault_counts: dict[str, int] = {}  # `fault_times`: faults given, by last user message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
            elif scope["method"] != "POST" or not await self._provider(scope, receive, send):
                await self._not_routed(scope, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _provider(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """A provider's own wire format (`providers.py`); False when the path is no provider's.
        Recorded in /sim/requests like the OpenAI route's requests (secrets redacted)."""
        path: str = scope["path"]
        if path.startswith("/openai/deployments/") and path.endswith("/chat/completions"):
            found = providers.azure_scope(scope)
            if isinstance(found, providers.ProviderError):
                body = error_body(found.message, "invalid_request_error", None, found.kind)
                await send_response(send, found.status, responses.JSON_HEADERS, body)
            else:
                await self._chat(found[0], receive, send)
            return True
        if path == "/v1/messages":
            handler = providers.anthropic
        elif path.startswith("/v1beta/models/"):
            handler = providers.gemini
        elif path.startswith("/model/"):
            handler = providers.bedrock
        else:
            return False
        received = await self._received(scope, receive)
        if received is None:
            return True
        record, raw = received
        try:
            record.body = json.loads(raw)
        except ValueError:
            record.body = None
        await handler(self, scope, raw, receive, send)
        record.outcome = COMPLETED
        return True

    async def _received(self, scope: Scope, receive: Receive) -> tuple[RequestRecord, bytes] | None:
        """A request's record (kept for /sim/requests) and its body; None if the client left first."""
        record = RequestRecord(f"{self._id_prefix}{next(self._counter):08d}", scope["headers"], time.time())
        if self._recording:
            self.history.add(record)
        try:
            return record, await read_body(receive)
        except ClientDisconnected:
            record.outcome = CLIENT_DISCONNECTED
            return None

    # --- chat completions -------------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope["headers"]
        received = await self._received(scope, receive)
        if received is None:
            return
        record, raw = received
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
        if request.knobs.fault is not None and not self._faults(request):
            request = replace(request, knobs=replace(request.knobs, fault=None))
        knobs = request.knobs
        # Only requests that wait need to notice the client leaving; the rest answer at once.
        waits = knobs.latency_ms > 0 or knobs.token_ms > 0 or knobs.fault in ("hang", "stall")
        watch = DisconnectWatch(receive) if waits else None
        try:
            await self._answer(record, request, receive, send, watch)
        finally:
            if watch is not None:
                watch.close()

    def _faults(self, request: ChatRequest) -> bool:
        """Whether this request gets its fault (`_fault_due`, keyed by its last user message)."""
        return self._fault_due(request.model, last_user_text(request.messages), request.knobs)

    def _fault_due(self, model: str, key: str, knobs: Knobs) -> bool:
        """Whether a request gets its fault: not when `fault_model` names another model, or the
        first `fault_times` requests with the same `key` (its text) had it already."""
        if knobs.fault_model is not None and model != knobs.fault_model:
            return False
        if knobs.fault_times:
            seen = self._fault_counts.get(key, 0)
            if seen >= knobs.fault_times:
                return False
            if len(self._fault_counts) >= _FAULT_KEYS:
                self._fault_counts.clear()
            self._fault_counts[key] = seen + 1
        return True

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
        if fault in _OPENAI_FAULTS:
            record.outcome = fault
            status, body = _OPENAI_FAULTS[fault]
            await send_response(send, status, (*responses.JSON_HEADERS, id_header), body)
            return
        if fault == "drop" and not request.stream:
            record.outcome = fault
            await _drop_before_response(send, receive, watch)
            return
        if fault == "malformed":
            record.outcome = fault
            if request.stream:
                await send_response(send, 200, (*responses.SSE_HEADERS, id_header), _MALFORMED_STREAM)
            else:
                await send_response(send, 200, (*responses.JSON_HEADERS, id_header), _MALFORMED_JSON)
            return
        if fault == "stall" and not request.stream and watch is not None:
            record.outcome = fault  # the headers, then nothing until the client leaves
            headers = [*responses.JSON_HEADERS, id_header]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await watch.gone.wait()
            record.outcome = CLIENT_DISCONNECTED
            return

        if request.call is None:
            await _send_text(record, request, send, receive, watch, id_header)
        else:
            await _send_tool_calls(record, request, request.call, send, receive, watch, id_header)

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

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        """OpenAI's embeddings, deterministic: each input's vector is a function of its text (or
        token ids) alone (`embeddings.py`), so tests can compute what the gateway must return."""
        received = await self._received(scope, receive)
        if received is None:
            return
        record, raw = received
        try:
            self._authorize(scope["headers"])
            try:
                payload = json.loads(raw)
            except ValueError:
                raise bad_request(_BAD_JSON) from None
            record.body = payload
            request = embeddings.parse(payload)
            text = request.first_text
            knobs = knobs_for_text(self.config.defaults, scope["headers"], text, "input")
        except SimError as error:
            record.outcome = error.outcome
            await send_response(send, error.status, responses.JSON_HEADERS, error.body())
            return
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)
        id_header = (b"x-request-id", record.id.encode())
        if knobs.fault in ("429", "500") and self._fault_due(request.model, text, knobs):
            record.outcome = knobs.fault
            if knobs.fault == "429":
                await send_response(send, 429, _rate_limit_headers(id_header, knobs.retry_after), _RATE_LIMIT)
            else:
                await send_response(send, 500, (*responses.JSON_HEADERS, id_header), _SERVER_ERROR)
            return
        record.outcome = COMPLETED
        await send_response(send, 200, (*responses.JSON_HEADERS, id_header), embeddings.answer(request))

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


async def _send_text(
    record: RequestRecord,
    request: ChatRequest,
    send: Send,
    receive: Receive,
    watch: DisconnectWatch | None,
    id_header: tuple[bytes, bytes],
) -> None:
    """The normal answer: words, or the echo of the messages."""
    knobs = request.knobs
    if request.general:
        answers = [
            choices.SimChoice(i, text, tokens=text.completion_tokens)
            for i, text in ((i, _text_for(request, i)) for i in range(request.n))
        ]
        await _send_general(record, request, answers, send, receive, watch, id_header, COMPLETED)
        return
    completion = _text_for(request, 0)
    tokens = completion.completion_tokens
    usage = responses.usage(count_prompt_tokens(request.messages), tokens, knobs.cached_tokens)
    completion_id, created = record.id.encode(), int(record.received_at)
    model = responses.model_json(request.model)
    if request.stream:
        frames = responses.ChunkFrames(completion_id, created, model, request.include_usage)
        body = map(frames.piece, completion.pieces)
        end = _end_frames(frames, completion.finish_reason, usage, request.include_usage)
        record.outcome = await _stream(
            frames.role(), body, end, knobs, send, receive, watch, id_header, COMPLETED
        )
        return
    answer = responses.completion(
        completion_id, created, model, completion.content, completion.finish_reason, usage
    )
    record.outcome = await _send_whole(answer, tokens, knobs, send, watch, id_header, COMPLETED)


async def _send_tool_calls(
    record: RequestRecord,
    request: ChatRequest,
    name: str,
    send: Send,
    receive: Receive,
    watch: DisconnectWatch | None,
    id_header: tuple[bytes, bytes],
) -> None:
    """The `call` knob's answer: `calls` parallel calls of the function tool `name`."""
    knobs = request.knobs
    query = strip_directives(last_user_text(request.messages))
    if request.general:
        answers = []
        for i in range(request.n):
            made = tool_calls(name, query, knobs.calls)
            answers.append(choices.SimChoice(i, calls=made, tokens=tool_call_tokens(made)))
        await _send_general(record, request, answers, send, receive, watch, id_header, TOOL_CALLS)
        return
    calls = tool_calls(name, query, knobs.calls)
    tokens = tool_call_tokens(calls)
    usage = responses.usage(count_prompt_tokens(request.messages), tokens, knobs.cached_tokens)
    completion_id, created = record.id.encode(), int(record.received_at)
    model = responses.model_json(request.model)
    if request.stream:
        frames = responses.ChunkFrames(completion_id, created, model, request.include_usage)
        first, body = _tool_call_frames(frames, calls)
        end = _end_frames(frames, responses.FINISH_TOOL_CALLS, usage, request.include_usage)
        record.outcome = await _stream(first, body, end, knobs, send, receive, watch, id_header, TOOL_CALLS)
        return
    answer = responses.tool_calls_completion(completion_id, created, model, calls, usage)
    record.outcome = await _send_whole(answer, tokens, knobs, send, watch, id_header, TOOL_CALLS)


def _text_for(request: ChatRequest, choice: int) -> Completion:
    """Choice `choice`'s text: the echo, the `reply`, or its own words."""
    knobs = request.knobs
    if knobs.echo:
        return echo(request.messages)
    if knobs.reply is not None:
        return fixed(knobs.reply)
    return words(knobs.tokens, request.max_tokens, choice)


async def _send_general(
    record: RequestRecord,
    request: ChatRequest,
    answers: list[choices.SimChoice],
    send: Send,
    receive: Receive,
    watch: DisconnectWatch | None,
    id_header: tuple[bytes, bytes],
    outcome: str,
) -> None:
    """An answer with `n` choices or logprobs (`choices.py`); usage counts every choice."""
    knobs = request.knobs
    tokens = sum(a.tokens for a in answers)
    usage = responses.usage(count_prompt_tokens(request.messages), tokens, knobs.cached_tokens)
    created = int(record.received_at)
    if request.stream:
        frames = choices.StreamFrames(
            record.id, created, request.model, request.include_usage, request.top_logprobs
        )
        first, body, end = frames.frames(answers, usage)
        record.outcome = await _stream(first, body, end, knobs, send, receive, watch, id_header, outcome)
        return
    answer = choices.completion_body(record.id, created, request.model, answers, usage, request.top_logprobs)
    record.outcome = await _send_whole(answer, tokens, knobs, send, watch, id_header, outcome)


async def _send_whole(
    answer: bytes,
    tokens: int,
    knobs: Knobs,
    send: Send,
    watch: DisconnectWatch | None,
    id_header: tuple[bytes, bytes],
    outcome: str,
) -> str:
    """Send a non-stream answer after `tokens * token_ms`; returns the outcome to record."""
    if watch is not None and await watch.sleep(tokens * knobs.token_ms / 1000):
        return CLIENT_DISCONNECTED
    await send_response(send, 200, (*responses.JSON_HEADERS, id_header), answer)
    return outcome


def _end_frames(
    frames: responses.ChunkFrames, finish_reason: bytes, usage: bytes, include_usage: bool
) -> list[bytes]:
    """What closes a stream: the finish chunk, the usage chunk if asked for, and [DONE]."""
    end = [frames.finish(finish_reason)]
    if include_usage:
        end.append(frames.usage(usage))
    end.append(responses.DONE)
    return end


def _tool_call_frames(
    frames: responses.ChunkFrames, calls: tuple[ToolCall, ...]
) -> tuple[bytes, list[bytes]]:
    """The first chunk (role and call 0 opened), then each call's argument fragments in turn, every
    later call opened by its own chunk, as OpenAI streams parallel tool calls."""
    body: list[bytes] = []
    for index, call in enumerate(calls):
        if index:
            body.append(frames.tool_call_start(index, call))
        body.extend(frames.tool_arguments(index, fragment) for fragment in call.fragments())
    return frames.tool_call_start(0, calls[0]), body


async def _stream(
    first: bytes,
    body: Iterable[bytes],
    end: list[bytes],
    knobs: Knobs,
    send: Send,
    receive: Receive,
    watch: DisconnectWatch | None,
    id_header: tuple[bytes, bytes],
    outcome: str,
) -> str:
    """Send the SSE stream: `first` at once, `body` paced by token_ms (each counts as a token for
    drop_after), then `end`. Returns the outcome to record: `outcome` if it all went out."""
    headers = [*responses.SSE_HEADERS, id_header]
    await send({"type": "http.response.start", "status": 200, "headers": headers})

    drop_at = knobs.drop_after if knobs.fault in ("drop", "stall", "stream_error") else None
    if knobs.token_ms <= 0 and drop_at is None:
        # Nothing to pace: one write. A zero-latency upstream's tokens arrive together anyway.
        await send({"type": "http.response.body", "body": b"".join((first, *body, *end))})
        return outcome

    delay = knobs.token_ms / 1000
    await send({"type": "http.response.body", "body": first, "more_body": True})
    for index, frame in enumerate(body):
        if index == drop_at:
            break
        if watch is not None and await watch.sleep(delay):
            return CLIENT_DISCONNECTED
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    if knobs.fault == "stall":
        # Silence mid-stream until the client leaves.
        if watch is not None:
            await watch.gone.wait()
        return CLIENT_DISCONNECTED
    if knobs.fault == "stream_error":
        # OpenAI's mid-stream error: an error object as a data event, then the stream ends.
        await send({"type": "http.response.body", "body": b"data: " + _SERVER_ERROR + b"\n\n"})
        return "stream_error"
    if drop_at is not None:
        # Cut mid-stream: no finish chunk, no [DONE].
        await drop_connection(send, receive, watch)
        return "drop"
    await send({"type": "http.response.body", "body": b"".join(end)})
    return outcome


async def _drop_before_response(send: Send, receive: Receive, watch: DisconnectWatch | None) -> None:
    if not await drop_connection(send, receive, watch):
        # Fallback for servers without a reachable transport: promise a body that never comes.
        headers = [*responses.JSON_HEADERS, (b"content-length", b"1")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})


def _rate_limit_headers(id_header: tuple[bytes, bytes], retry_after: int) -> list[tuple[bytes, bytes]]:
    """As OpenAI's 429: `Retry-After`, and the request budget used up until its reset."""
    return [
        *responses.JSON_HEADERS,
        id_header,
        (b"retry-after", b"%d" % retry_after),
        (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", b"%ds" % retry_after),
    ]


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
_OPENAI_FAULTS = {
    "overloaded": (
        503,
        error_body("The engine is currently overloaded, please try again later", "server_error", None, None),
    ),
    "context": (
        400,
        error_body(
            "This model's maximum context length is 8192 tokens. However, your messages resulted in "
            "more tokens. Please reduce the length of the messages. (simulated by aigw-simulator)",
            "invalid_request_error",
            "messages",
            "context_length_exceeded",
        ),
    ),
    "safety": (
        400,
        error_body(
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            "invalid_request_error",
            None,
            "invalid_prompt",
        ),
    ),
}
