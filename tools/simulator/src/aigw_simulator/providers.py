"""The simulator speaking providers' own wire formats, as their API references describe them:

* Anthropic Messages: `POST /v1/messages` (`x-api-key`, `anthropic-version`), whole answers and SSE
  (`message_start`, `content_block_start`, `content_block_delta` with `text_delta` /
  `input_json_delta` / `thinking_delta`, `content_block_stop`, `message_delta`, `message_stop`,
  `ping`, `error`); errors as `{"type": "error", "error": {"type", "message"}}`, 529 overloaded.
* Google Gemini: `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`
  (`x-goog-api-key`); `candidates` / `usageMetadata` / `promptFeedback`; errors as
  `{"error": {"code", "message", "status"}}`.
* AWS Bedrock: `POST /model/{modelId}/converse` and `/converse-stream` (the AWS event-stream
  binary framing, `frame`), SigV4 checked from the specification when started with
  `--require-key ACCESS_KEY_ID:SECRET` (`check_sigv4`); errors as `{"message"}` with
  `x-amzn-ErrorType`, exceptions mid-stream as `:message-type: exception` frames.
* Azure OpenAI: `POST /openai/deployments/{deployment}/chat/completions?api-version=...`
  (`api-key`): OpenAI's body and answers (the OpenAI route serves it, the deployment as the model).

The same knobs and `[sim ...]` directives as the OpenAI route steer them (`directives.py`): words
or `echo` (the JSON of the request's `messages` / `contents`, `system` / `systemInstruction`
included: what the gateway's adapter sent), tool calls (`call`, `calls`), `cached_tokens`,
`cache_write` / `cache_write_1h` (Anthropic), and the faults `429`, `500`, `overloaded`,
`context`, `safety` (Gemini blocks the prompt; Anthropic refuses with stop_reason `refusal`),
`drop` and `stream_error` (mid-stream, after `drop_after` tokens), `malformed`. A request that
breaks the provider's rules the gateway must follow (Anthropic's required `max_tokens`, tool
results answering the calls before them, roles; Gemini's roles, `functionResponse` names,
`alt=sse` for streams) is a 400 in the provider's shape, so an adapter that gets them wrong fails.
Prompt tokens follow `prompt.py`'s rule over the text of the messages and the system prompt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, quote

from aigw_simulator import responses
from aigw_simulator.asgi import Receive, Send, drop_connection, send_response
from aigw_simulator.config import Knobs
from aigw_simulator.directives import apply_overrides, header_overrides, parse_directive, strip_directives
from aigw_simulator.errors import SimError
from aigw_simulator.generation import echo, fixed, words
from aigw_simulator.prompt import PER_MESSAGE_TOKENS

THINKING = "Let me think about this. sim"  # a thinking block's text (3 words: its token count)


class ProviderError(Exception):
    def __init__(self, status: int, kind: str, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.retry_after = retry_after  # a 429's: in a header (Anthropic) or the body (Gemini)


def _dumps(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _words(text: str) -> int:
    return len(text.split())


def _knobs(defaults: Knobs, headers: Any, last_text: str) -> Knobs:
    knobs = defaults
    from_headers = header_overrides(headers)
    try:
        if from_headers:
            knobs = apply_overrides(knobs, from_headers, "x-sim-*")
        directive = parse_directive(last_text) if "[sim" in last_text else None
        if directive:
            knobs = apply_overrides(knobs, directive, "messages")
    except SimError as exc:
        raise ProviderError(400, "invalid_request_error", exc.message) from None
    return knobs


def _header(headers: Any, name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _text(pieces: tuple[bytes, ...]) -> list[str]:
    return [json.loads(p) for p in pieces]


class _Answer:
    """What to answer, provider-neutral: text pieces or tool calls, and the token counts."""

    def __init__(
        self, knobs: Knobs, query: str, echoed: Any, max_tokens: int | None, call: str | None
    ) -> None:
        self.knobs = knobs
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.finish = "stop"
        if call is not None:
            count = knobs.calls
            queries = [query] if count == 1 else [f"{query} ({i})".lstrip() for i in range(1, count + 1)]
            self.calls = [(call, {"query": q}) for q in queries]
            self.pieces: list[str] = []
            self.tokens = sum(_words(json.dumps(args)) for _, args in self.calls)
            return
        if knobs.echo:
            completion = echo(echoed)
        elif knobs.reply is not None:
            completion = fixed(knobs.reply)
        else:
            completion = words(knobs.tokens, max_tokens)
        self.pieces = _text(completion.pieces)
        self.tokens = completion.completion_tokens
        self.finish = completion.finish_reason.decode()


# ------------------------------------------------------------------------------------ Anthropic

_ANTHROPIC_FINISH = {"stop": "end_turn", "length": "max_tokens"}


def _anthropic_error(error: ProviderError) -> bytes:
    return _dumps({"type": "error", "error": {"type": error.kind, "message": error.message}})


def _block_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for block in content or ():
        if isinstance(block, dict) and block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            texts.append(_block_text(block.get("content")))
    return "\n".join(texts)


def _anthropic_check(body: Any) -> None:
    def bad(message: str) -> ProviderError:
        return ProviderError(400, "invalid_request_error", message)

    if not isinstance(body, dict):
        raise bad("The request body is not valid JSON.")
    if not isinstance(body.get("model"), str):
        raise bad("model: Field required")
    limit = body.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise bad("max_tokens: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("messages: at least one message is required")
    pending: set[str] = set()
    tools = {t.get("name") for t in body.get("tools") or () if isinstance(t, dict)}
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i and messages[i - 1].get("role") == role:
            raise bad(f"messages.{i}: roles must alternate between 'user' and 'assistant'")
        content = message.get("content")
        blocks = content if isinstance(content, list) else []
        if not isinstance(content, list | str):
            raise bad(f"messages.{i}.content: Input should be a valid string or list")
        answered = {
            b.get("tool_use_id") for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"
        }
        if pending and answered != pending:
            raise bad(
                f"messages.{i}.content: `tool_use` ids were found without `tool_result` blocks immediately after: "
                + ", ".join(sorted(pending - answered))
            )
        if answered - pending:
            raise bad(f"messages.{i}.content: unexpected `tool_use_id` found in `tool_result` blocks")
        pending = set()
        for b in blocks:
            if not isinstance(b, dict) or b.get("type") not in (
                "text",
                "image",
                "tool_use",
                "tool_result",
                "thinking",
            ):
                raise bad(f"messages.{i}.content: unknown content block type")
            if b["type"] == "image":
                source = b.get("source") or {}
                if source.get("type") not in ("base64", "url"):
                    raise bad(f"messages.{i}.content: image source must be base64 or url")
            if b["type"] == "tool_use":
                if role != "assistant" or b.get("name") not in tools:
                    raise bad(f"messages.{i}.content: tool_use of a tool not in `tools`")
                if not isinstance(b.get("input"), dict):
                    raise bad(f"messages.{i}.content: tool_use.input must be an object")
                pending.add(str(b.get("id")))
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or budget >= limit:
            raise bad("thinking.budget_tokens: must be >= 1024 and less than max_tokens")
        if body.get("temperature") not in (None, 1):
            raise bad("temperature may only be set to 1 when thinking is enabled")
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise bad("tool_choice: Input tag does not match any of the expected tags")
        if choice["type"] == "tool" and choice.get("name") not in tools:
            raise bad("tool_choice.name: tool not found in `tools`")


def _anthropic_usage(knobs: Knobs, body: dict[str, Any], output: int) -> dict[str, Any]:
    system = body.get("system")
    total = sum(_words(_block_text(m.get("content"))) + PER_MESSAGE_TOKENS for m in body["messages"])
    if system:
        total += _words(_block_text(system)) + PER_MESSAGE_TOKENS
    read = min(knobs.cached_tokens, total)
    write = min(knobs.cache_write, total - read)
    hour = min(knobs.cache_write_1h, write)
    return {
        "input_tokens": total - read - write,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": write - hour, "ephemeral_1h_input_tokens": hour},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


async def anthropic(app: Any, scope: Any, raw: bytes, receive: Receive, send: Send) -> None:
    headers = scope["headers"]
    try:
        if app.config.require_key is not None and not secrets.compare_digest(
            _header(headers, b"x-api-key") or "", app.config.require_key
        ):
            raise ProviderError(401, "authentication_error", "invalid x-api-key")
        if _header(headers, b"anthropic-version") is None:
            raise ProviderError(400, "invalid_request_error", "anthropic-version: header is required")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        _anthropic_check(body)
        messages = body["messages"]
        last: dict[str, Any] = next((m for m in reversed(messages) if m["role"] == "user"), {})
        last_text = _block_text(last.get("content"))
        knobs = _knobs(app.config.defaults, headers, last_text)
        fault = knobs.fault
        if fault == "429":
            raise ProviderError(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your rate limit",
                knobs.retry_after,
            )
        if fault == "500":
            raise ProviderError(500, "api_error", "Internal server error")
        if fault == "overloaded":
            raise ProviderError(529, "overloaded_error", "Overloaded")
        if fault == "context":
            raise ProviderError(
                400, "invalid_request_error", "prompt is too long: 250000 tokens > 200000 maximum"
            )
    except ProviderError as refused:
        extra = [(b"retry-after", b"%d" % refused.retry_after)] if refused.status == 429 else []
        await send_response(
            send, refused.status, (*responses.JSON_HEADERS, *extra), _anthropic_error(refused)
        )
        return
    answered_tool = isinstance(last.get("content"), list) and any(
        b.get("type") == "tool_result" for b in last["content"]
    )
    call = knobs.call if knobs.call is not None and not answered_tool else None
    choice = body.get("tool_choice") or {}
    if choice.get("type") == "tool" and not answered_tool:
        call = choice["name"]  # a forced tool is always called
    echoed = {"system": body.get("system"), "messages": messages}
    answer = _Answer(knobs, strip_directives(last_text), echoed, body["max_tokens"], call)
    thinking = isinstance(body.get("thinking"), dict) and body["thinking"].get("type") == "enabled"
    output = answer.tokens + (_words(THINKING) if thinking else 0)
    usage = _anthropic_usage(knobs, body, output)
    stop = "tool_use" if answer.calls else _ANTHROPIC_FINISH.get(answer.finish, "end_turn")
    if fault == "safety":
        stop, answer.pieces, answer.calls = "refusal", [], []
    message_id = "msg_sim" + secrets.token_hex(10)
    blocks: list[dict[str, Any]] = []
    if thinking:
        blocks.append({"type": "thinking", "thinking": THINKING, "signature": "sig-sim"})
    if answer.pieces:
        blocks.append({"type": "text", "text": "".join(answer.pieces)})
    for name, args in answer.calls:
        blocks.append(
            {"type": "tool_use", "id": "toolu_sim" + secrets.token_hex(8), "name": name, "input": args}
        )
    if fault == "malformed":
        await send_response(send, 200, responses.JSON_HEADERS, b'{"id": "msg_sim", "content": [')
        return
    if not body.get("stream"):
        message = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        await send_response(send, 200, responses.JSON_HEADERS, _dumps(message))
        return
    start_usage = {**usage, "output_tokens": 1}
    frames = [
        _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        ),
        _sse("ping", {"type": "ping"}),
    ]
    deltas: list[bytes] = []  # the frames that count as tokens for drop_after
    for index, block in enumerate(blocks):
        start: dict[str, Any]
        pieces: list[dict[str, Any]]
        if block["type"] == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
            pieces = [
                {"type": "thinking_delta", "thinking": THINKING},
                {"type": "signature_delta", "signature": "sig-sim"},
            ]
        elif block["type"] == "text":
            start = {"type": "text", "text": ""}
            pieces = [{"type": "text_delta", "text": p} for p in answer.pieces]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            arguments = json.dumps(block["input"], separators=(",", ":"))
            half = max(1, len(arguments) // 2)
            pieces = [
                {"type": "input_json_delta", "partial_json": p} for p in (arguments[:half], arguments[half:])
            ]
        deltas.append(
            _sse(
                "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
            )
        )
        deltas.extend(
            _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": p})
            for p in pieces
        )
        deltas.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    end = [
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]
    error = _sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    await _stream(send, receive, knobs, frames, deltas, end, error)


async def _stream(
    send: Send,
    receive: Receive,
    knobs: Knobs,
    first: list[bytes],
    deltas: list[bytes],
    end: list[bytes],
    error: bytes,
    headers: Sequence[tuple[bytes, bytes]] = responses.SSE_HEADERS,
) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": list(headers)})
    if knobs.fault == "malformed":
        await send({"type": "http.response.body", "body": b"data: {oops\n\n"})
        return
    if knobs.fault in ("drop", "stream_error"):
        sent = b"".join((*first, *deltas[: knobs.drop_after]))
        if knobs.fault == "stream_error":
            await send({"type": "http.response.body", "body": sent + error})
            return
        await send({"type": "http.response.body", "body": sent, "more_body": True})
        await drop_connection(send, receive, None)
        return
    if knobs.token_ms > 0:  # paced: each token in its own write (benchmarks of per-delta work)
        await send({"type": "http.response.body", "body": b"".join(first), "more_body": True})
        for frame in deltas:
            await asyncio.sleep(knobs.token_ms / 1000)
            await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"".join(end)})
        return
    await send({"type": "http.response.body", "body": b"".join((*first, *deltas, *end))})


# ------------------------------------------------------------------------------------ Gemini

_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_GEMINI_FINISH = {"stop": "STOP", "length": "MAX_TOKENS"}


def _gemini_error(error: ProviderError) -> bytes:
    status = _GEMINI_STATUS.get(error.status, "UNKNOWN")
    body: dict[str, Any] = {"code": error.status, "message": error.message, "status": status}
    if error.status == 429:  # Google says when to retry in the body, not in a Retry-After header
        body["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{error.retry_after}s"}
        ]
    return _dumps({"error": body})


def _parts_text(parts: Any) -> str:
    return "\n".join(str(p.get("text") or "") for p in parts or () if isinstance(p, dict) and "text" in p)


def _gemini_check(body: Any) -> None:
    def bad(message: str) -> ProviderError:
        return ProviderError(400, "INVALID_ARGUMENT", message)

    if not isinstance(body, dict):
        raise bad("Invalid JSON payload received.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise bad("* GenerateContentRequest.contents: contents is not specified")
    declared = {
        d.get("name")
        for tool in body.get("tools") or ()
        for d in (tool.get("functionDeclarations") or ())
        if isinstance(d, dict)
    }
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            raise bad(f"* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            raise bad(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        for part in parts:
            keys = set(part) - {"thought", "thoughtSignature"}
            if len(keys) != 1 or not keys <= {
                "text",
                "inlineData",
                "fileData",
                "functionCall",
                "functionResponse",
            }:
                raise bad(
                    f"* GenerateContentRequest.contents[{i}].parts: a part holds exactly one kind of data"
                )
            call = part.get("functionCall") or part.get("functionResponse")
            if call is not None and call.get("name") not in declared:
                raise bad(
                    f"* GenerateContentRequest.contents[{i}].parts: function name {call.get('name')!r} is not declared"
                )
    config = body.get("generationConfig") or {}
    for key in config:
        if key not in (
            "temperature",
            "topP",
            "topK",
            "maxOutputTokens",
            "stopSequences",
            "candidateCount",
            "seed",
            "presencePenalty",
            "frequencyPenalty",
            "responseMimeType",
            "responseSchema",
            "thinkingConfig",
        ):
            raise bad(f"Invalid JSON payload received. Unknown name \"{key}\" at 'generation_config'")


def _gemini_usage(knobs: Knobs, body: dict[str, Any], output: int, thoughts: int) -> dict[str, Any]:
    total = sum(_words(_parts_text(c["parts"])) + PER_MESSAGE_TOKENS for c in body["contents"])
    system = body.get("systemInstruction")
    if system:
        total += _words(_parts_text(system.get("parts"))) + PER_MESSAGE_TOKENS
    usage: dict[str, Any] = {"promptTokenCount": total, "candidatesTokenCount": output}
    if knobs.cached_tokens:
        usage["cachedContentTokenCount"] = min(knobs.cached_tokens, total)
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    usage["totalTokenCount"] = total + output + thoughts
    return usage


async def gemini(app: Any, scope: Any, raw: bytes, receive: Receive, send: Send) -> None:
    headers = scope["headers"]
    path: str = scope["path"]
    model, _, method = path[len("/v1beta/models/") :].partition(":")
    stream = method == "streamGenerateContent"
    try:
        if method not in ("generateContent", "streamGenerateContent"):
            raise ProviderError(404, "NOT_FOUND", f"Method {method!r} not found")
        if app.config.require_key is not None and not secrets.compare_digest(
            _header(headers, b"x-goog-api-key") or "", app.config.require_key
        ):
            raise ProviderError(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
        if stream and parse_qs(scope.get("query_string", b"").decode()).get("alt") != ["sse"]:
            raise ProviderError(400, "INVALID_ARGUMENT", "this simulator streams only with alt=sse")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        _gemini_check(body)
        contents = body["contents"]
        last: dict[str, Any] = next((c for c in reversed(contents) if c["role"] == "user"), {"parts": []})
        last_text = _parts_text(last["parts"])
        knobs = _knobs(app.config.defaults, headers, last_text)
        fault = knobs.fault
        if fault == "429":
            raise ProviderError(
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                knobs.retry_after,
            )
        if fault == "500":
            raise ProviderError(500, "INTERNAL", "An internal error has occurred.")
        if fault == "overloaded":
            raise ProviderError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        if fault == "context":
            raise ProviderError(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            )
    except ProviderError as refused:
        await send_response(send, refused.status, responses.JSON_HEADERS, _gemini_error(refused))
        return
    config = body.get("generationConfig") or {}
    answered_tool = any("functionResponse" in p for p in last["parts"])
    call = knobs.call if knobs.call is not None and not answered_tool else None
    echoed = {"systemInstruction": body.get("systemInstruction"), "contents": contents}
    answer = _Answer(knobs, strip_directives(last_text), echoed, config.get("maxOutputTokens"), call)
    if config.get("responseMimeType") == "application/json" and not answer.calls and not knobs.echo:
        answer.pieces = [json.dumps({"answer": "".join(answer.pieces)})]  # JSON mode answers JSON
    thinking = config.get("thinkingConfig") or {}
    thoughts = _words(THINKING) if thinking.get("thinkingBudget") else 0
    shown = bool(thoughts and thinking.get("includeThoughts"))  # thought summaries only when asked
    usage = _gemini_usage(knobs, body, answer.tokens, thoughts)
    if fault == "safety":
        blocked = {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []}, "usageMetadata": usage}
        if stream:
            await send_response(send, 200, responses.SSE_HEADERS, b"data: " + _dumps(blocked) + b"\r\n\r\n")
        else:
            await send_response(send, 200, responses.JSON_HEADERS, _dumps(blocked))
        return
    finish = _GEMINI_FINISH.get(answer.finish, "STOP")
    calls = [{"functionCall": {"name": name, "args": args}} for name, args in answer.calls]
    version = {"modelVersion": model, "responseId": "sim" + secrets.token_hex(8)}
    if not stream:
        parts: list[dict[str, Any]] = []
        if shown:
            parts.append({"text": THINKING, "thought": True})
        if answer.pieces:
            parts.append({"text": "".join(answer.pieces)})
        parts.extend(calls)
        whole = {
            "candidates": [
                {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
            ],
            "usageMetadata": usage,
            **version,
        }
        if knobs.fault == "malformed":
            await send_response(send, 200, responses.JSON_HEADERS, b'{"candidates": [')
            return
        await send_response(send, 200, responses.JSON_HEADERS, _dumps(whole))
        return

    # Gemini streams whole GenerateContentResponses, each with the usage so far (\r\n\r\n between).
    def frame(parts: list[dict[str, Any]], done: bool) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if done:
            candidate["finishReason"] = finish
        return (
            b"data: " + _dumps({"candidates": [candidate], "usageMetadata": usage, **version}) + b"\r\n\r\n"
        )

    deltas = [frame([{"text": p}], False) for p in answer.pieces]
    first = [frame([{"text": THINKING, "thought": True}], False)] if shown else []
    end = [frame(calls or [{"text": ""}], True)]
    error = (
        b"data: "
        + _dumps({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
        + b"\r\n\r\n"
    )
    await _stream(send, receive, knobs, first, deltas, end, error)


# ------------------------------------------------------------------------------------ Azure


def azure_scope(scope: Any) -> tuple[Any, str] | ProviderError:
    """The Azure request as the OpenAI route takes it (`api-key` as a bearer key), and its
    deployment; or the error Azure answers (no `api-version`)."""
    path: str = scope["path"]
    deployment = path[len("/openai/deployments/") : -len("/chat/completions")]
    if not parse_qs(scope.get("query_string", b"").decode()).get("api-version"):
        return ProviderError(404, "404", "Resource not found (the api-version query parameter is required)")
    headers = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
    key = _header(scope["headers"], b"api-key")
    if key is not None:
        headers.append((b"authorization", b"Bearer " + key.encode("latin-1")))
    return {**scope, "headers": headers, "path": "/v1/chat/completions"}, deployment


# ------------------------------------------------------------------------------------ Bedrock

_BEDROCK_FINISH = {"stop": "end_turn", "length": "max_tokens"}
_BEDROCK_ERRORS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})"
)


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of the AWS event-stream encoding: prelude (total length, headers length, CRC32),
    headers (string values: type 7), payload, and the CRC32 of everything before it."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + len(value.encode()).to_bytes(2, "big") + value.encode()
        for name, value in headers.items()
    )
    prelude = (12 + len(encoded) + len(payload) + 4).to_bytes(4, "big") + len(encoded).to_bytes(4, "big")
    message = prelude + zlib.crc32(prelude).to_bytes(4, "big") + encoded + payload
    return message + zlib.crc32(message).to_bytes(4, "big")


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return frame(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, _dumps(data)
    )


def _bedrock_error(error: ProviderError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    kind = _BEDROCK_ERRORS.get(error.status, "InternalServerException")
    headers = [*responses.JSON_HEADERS, (b"x-amzn-errortype", kind.encode())]
    return headers, _dumps({"message": error.message})


def check_sigv4(scope: Any, body: bytes, access_key: str, secret: str) -> None:
    """The request's SigV4 signature, computed anew from the AWS specification (not botocore's code):
    canonical request, string to sign, derived key. A wrong one is Bedrock's 403."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    found = _SIGV4.fullmatch(headers.get("authorization", ""))
    if found is None:
        raise ProviderError(403, "AccessDeniedException", "Missing Authentication Token")
    key_id, day, region, service, signed, signature = found.groups()
    if key_id != access_key:
        raise ProviderError(
            403, "UnrecognizedClientException", "The security token included in the request is invalid."
        )
    stamp = headers.get("x-amz-date", "")
    raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    canonical = "\n".join(
        [
            "POST",
            quote(raw_path, safe="/~"),
            scope.get("query_string", b"").decode(),
            "".join(f"{name}:{' '.join(headers.get(name, '').split())}\n" for name in signed.split(";")),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope_text = f"{day}/{region}/{service}/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope_text}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature) or service != "bedrock":
        raise ProviderError(
            403,
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        )


def _bedrock_check(body: Any) -> None:
    def bad(message: str) -> ProviderError:
        return ProviderError(400, "ValidationException", message)

    if not isinstance(body, dict):
        raise bad("Malformed input request, please reformat your input and try again.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("A conversation must start with a user message.")
    uses_tools = False
    pending: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise bad(f"messages.{i}.role: must be user or assistant")
        if i and messages[i - 1]["role"] == role:
            raise bad("A conversation must alternate between user and assistant roles.")
        answered = set()
        for block in message.get("content") or ():
            keys = set(block)
            if len(keys) != 1 or not keys <= {
                "text",
                "image",
                "toolUse",
                "toolResult",
                "cachePoint",
                "reasoningContent",
            }:
                raise bad(f"messages.{i}.content: each content block holds exactly one member")
            if "toolUse" in block:
                uses_tools = True
                pending.add(str(block["toolUse"].get("toolUseId")))
            if "toolResult" in block:
                uses_tools = True
                answered.add(str(block["toolResult"].get("toolUseId")))
            if "image" in block and block["image"].get("format") not in ("png", "jpeg", "gif", "webp"):
                raise bad(f"messages.{i}.content: image format must be png, jpeg, gif or webp")
        if role == "user" and (pending or answered):
            if answered != pending:
                raise bad(
                    "The number of toolResult blocks exceeds or does not match the toolUse blocks of the previous turn."
                )
            pending = set()
    if uses_tools and not body.get("toolConfig"):
        raise bad("The toolConfig field must be defined when using toolUse and toolResult content blocks.")
    for key in body.get("inferenceConfig") or {}:
        if key not in ("maxTokens", "temperature", "topP", "stopSequences"):
            raise bad(f"inferenceConfig: extraneous key [{key}] is not permitted")


def _bedrock_text(content: Any) -> str:
    texts = []
    for block in content or ():
        if "text" in block:
            texts.append(str(block["text"]))
        elif "toolResult" in block:
            texts.extend(str(c.get("text", "")) for c in block["toolResult"].get("content") or ())
    return "\n".join(texts)


async def bedrock(app: Any, scope: Any, raw: bytes, receive: Receive, send: Send) -> None:
    path: str = scope["path"]
    _model, _, method = path[len("/model/") :].rpartition("/")
    stream = method == "converse-stream"
    try:
        if method not in ("converse", "converse-stream"):
            raise ProviderError(404, "ResourceNotFoundException", f"Unknown operation {method!r}")
        key = app.config.require_key
        if key is not None:
            access, _, secret = key.partition(":")
            check_sigv4(scope, raw, access, secret)
        elif not _header(scope["headers"], b"authorization"):
            raise ProviderError(403, "AccessDeniedException", "Missing Authentication Token")
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        _bedrock_check(body)
        messages = body["messages"]
        last: dict[str, Any] = next((m for m in reversed(messages) if m["role"] == "user"), {})
        last_text = _bedrock_text(last.get("content"))
        knobs = _knobs(app.config.defaults, scope["headers"], last_text)
        fault = knobs.fault
        if fault == "429":
            raise ProviderError(
                429, "ThrottlingException", "Too many requests, please wait before trying again."
            )
        if fault == "500":
            raise ProviderError(500, "InternalServerException", "The server encountered an error.")
        if fault == "overloaded":
            raise ProviderError(
                503, "ServiceUnavailableException", "The service is unavailable. Please try again."
            )
        if fault == "context":
            raise ProviderError(400, "ValidationException", "Input is too long for requested model.")
    except ProviderError as refused:
        headers, payload = _bedrock_error(refused)
        await send_response(send, refused.status, headers, payload)
        return
    answered_tool = any("toolResult" in b for b in last.get("content") or ())
    call = knobs.call if knobs.call is not None and not answered_tool else None
    echoed = {"system": body.get("system"), "messages": messages}
    config = body.get("inferenceConfig") or {}
    answer = _Answer(knobs, strip_directives(last_text), echoed, config.get("maxTokens"), call)
    total = sum(_words(_bedrock_text(m.get("content"))) + PER_MESSAGE_TOKENS for m in messages)
    if body.get("system"):
        total += _words(_bedrock_text(body["system"])) + PER_MESSAGE_TOKENS
    read = min(knobs.cached_tokens, total)
    write = min(knobs.cache_write, total - read)
    usage = {
        "inputTokens": total - read - write,
        "outputTokens": answer.tokens,
        "totalTokens": total + answer.tokens,
        "cacheReadInputTokens": read,
        "cacheWriteInputTokens": write,
    }
    stop = "tool_use" if answer.calls else _BEDROCK_FINISH.get(answer.finish, "end_turn")
    if fault == "safety":
        stop, answer.pieces, answer.calls = "content_filtered", [], []
    blocks: list[dict[str, Any]] = []
    if answer.pieces:
        blocks.append({"text": "".join(answer.pieces)})
    for name, args in answer.calls:
        blocks.append(
            {"toolUse": {"toolUseId": "tooluse_sim" + secrets.token_hex(8), "name": name, "input": args}}
        )
    if not stream:
        if fault == "malformed":
            await send_response(send, 200, responses.JSON_HEADERS, b'{"output": {')
            return
        whole = {
            "output": {"message": {"role": "assistant", "content": blocks}},
            "stopReason": stop,
            "usage": usage,
            "metrics": {"latencyMs": 1},
        }
        await send_response(send, 200, responses.JSON_HEADERS, _dumps(whole))
        return
    first = [_event("messageStart", {"role": "assistant"})]
    deltas: list[bytes] = []
    for index, block in enumerate(blocks):
        if "text" in block:
            deltas.extend(
                _event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": p}})
                for p in answer.pieces
            )
        else:
            use = block["toolUse"]
            start = {"toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}
            deltas.append(_event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
            arguments = json.dumps(use["input"], separators=(",", ":"))
            half = max(1, len(arguments) // 2)
            for piece in (arguments[:half], arguments[half:]):
                deltas.append(
                    _event(
                        "contentBlockDelta",
                        {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}},
                    )
                )
        deltas.append(_event("contentBlockStop", {"contentBlockIndex": index}))
    end = [
        _event("messageStop", {"stopReason": stop}),
        _event("metadata", {"usage": usage, "metrics": {"latencyMs": 1}}),
    ]
    error = frame(
        {
            ":exception-type": "modelStreamErrorException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        _dumps({"message": "The model stream failed (simulated)"}),
    )
    if stream and knobs.fault == "malformed":
        await send_response(send, 200, _EVENT_STREAM, b"\x00\x00\x00\x10garbage-frame!!!")
        return
    await _stream(send, receive, knobs, first, deltas, end, error, _EVENT_STREAM)


_EVENT_STREAM = ((b"content-type", b"application/vnd.amazon.eventstream"),)
