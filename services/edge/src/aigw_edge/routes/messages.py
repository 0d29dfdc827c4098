"""`POST /v1/messages`: Anthropic's Messages API, for clients built on Anthropic's SDKs.

`model` names a gateway (or a catalog model), as on chat completions. The request is translated to
a chat completions body and run through the same pipeline (`bridge.py`); the answer, streamed or
not, is translated back: content blocks (`text`, `tool_use`), `stop_reason`, `usage`, Anthropic's
stream events (`message_start`, `ping`, `content_block_start/delta/stop`, `message_delta`,
`message_stop`, `error`) and its error body `{"type": "error", "error": {"type", "message"}}`.
`generation_context` (the priced usage lines) rides on the message, and on the stream's
`message_delta`. The key is `x-api-key` (what the SDK sends) or `Authorization: Bearer`.

Translation, request side: `system` becomes the first system message (the gateway's instructions
still come before it); `tool_result` blocks become `tool` messages, placed before the rest of
their user turn; `tool_use` blocks become the assistant's `tool_calls`; images become
`image_url` parts; `stop_sequences` → `stop`, `metadata.user_id` → `user`, `tool_choice`
`auto/any/tool/none` → `auto/required/{function}/none` (`disable_parallel_tool_use` →
`parallel_tool_calls: false`). Ignored, since chat completions has no counterpart: `top_k`,
`thinking` (the answer comes without thinking blocks), `cache_control` marks, `thinking` blocks in
history. Refused (400): server tools, documents.

`POST /v1/messages/count_tokens` (which Anthropic's SDKs and coding tools call before a request)
answers an estimate: about four characters a token (the worker's rule for upstreams that report
no usage) of the request's own messages, system prompt and tools; the gateway's instructions and
knowledge are not in it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Request, Security
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from aigw_contracts.errors import GatewayError, InvalidRequest

from ..bridge import Bridged, error_response, read_request, sse_event
from ..deps import bearer
from ..openapi import errors as openapi_errors

PATHS = ("/v1/messages", "/v1/messages/count_tokens")
CHARS_PER_TOKEN = 4  # as aigw_worker.pricing estimates tokens

router = APIRouter(tags=["messages"])

# Anthropic's error types, by the status it answers with.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# ---------------------------------------------------------------------------------------- models
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class AnthropicTool(_Open):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class MessagesRequest(BaseModel):
    """Anthropic's `POST /v1/messages` body. Unknown fields are refused (400 naming the field)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=4)
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[AnthropicTool] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    thinking: dict[str, Any] | None = None


class CountTokensRequest(MessagesRequest):
    """`POST /v1/messages/count_tokens`: a Messages request without `max_tokens`."""

    max_tokens: int = Field(default=1, ge=1)
    stream: None = None


class TokenCount(BaseModel):
    input_tokens: int


class Usage(_Open):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class Message(_Open):
    """Anthropic's message object, plus `generation_context` (the priced usage lines)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: Usage
    generation_context: dict[str, Any] | None = None


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """Every error of this endpoint, in Anthropic's shape."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
    request_id: str | None = None


# ---------------------------------------------------------------------------------------- request
def _text_of(blocks: str | list[dict[str, Any]], where: str) -> str:
    if isinstance(blocks, str):
        return blocks
    out: list[str] = []
    for index, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            out.append(block["text"])
        else:
            raise InvalidRequest(
                f"Only text blocks are supported in {where} (got '{kind}').", param=f"{where}[{index}]"
            )
    return "\n".join(out) if where.endswith(".content") else "".join(out)


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise InvalidRequest("An image block needs a base64 or url source.", param=f"{param}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _user_turn(content: str | list[dict[str, Any]], param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        at, kind = f"{param}[{index}]", block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequest("A tool_result block needs 'tool_use_id'.", param=f"{at}.tool_use_id")
            text = _text_of(block.get("content") or "", f"{at}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        else:
            raise InvalidRequest(f"Content blocks of type '{kind}' are not supported here.", param=at)
    out = results
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _assistant_turn(content: str | list[dict[str, Any]], param: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for index, block in enumerate(content):
        kind = block.get("type")
        if kind == "text":
            text.append(str(block.get("text", "")))
        elif kind == "tool_use":
            name, ident = block.get("name"), block.get("id")
            if not isinstance(name, str) or not isinstance(ident, str):
                raise InvalidRequest("A tool_use block needs 'id' and 'name'.", param=f"{param}[{index}]")
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"), ensure_ascii=False)
            calls.append(
                {"id": ident, "type": "function", "function": {"name": name, "arguments": arguments}}
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # chat completions has no place for them
        else:
            raise InvalidRequest(
                f"Content blocks of type '{kind}' are not supported here.", param=f"{param}[{index}]"
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    elif not text:
        message["content"] = ""
    return message


def _tool_choice(choice: dict[str, Any]) -> tuple[Any, bool | None]:
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}, parallel
    raise InvalidRequest("tool_choice must be auto, any, none, or tool with a name.", param="tool_choice")


def to_chat(request: MessagesRequest) -> dict[str, Any]:
    """The chat completions body for a Messages request."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text_of(request.system, "system")})
    for index, turn in enumerate(request.messages):
        param = f"messages[{index}].content"
        if turn.role == "user":
            messages.extend(_user_turn(turn.content, param))
        else:
            messages.append(_assistant_turn(turn.content, param))
    chat: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    for name in ("temperature", "top_p", "stream"):
        value = getattr(request, name)
        if value is not None:
            chat[name] = value
    if request.stop_sequences:
        chat["stop"] = request.stop_sequences
    if request.tools:
        tools = []
        for index, tool in enumerate(request.tools):
            if tool.type not in (None, "custom") or tool.input_schema is None:
                raise InvalidRequest(
                    "Only client tools (name, description, input_schema) are supported.",
                    param=f"tools[{index}]",
                )
            function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                function["description"] = tool.description
            tools.append({"type": "function", "function": function})
        chat["tools"] = tools
    if request.tool_choice:
        choice, parallel = _tool_choice(request.tool_choice)
        chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    if request.metadata and isinstance(request.metadata.get("user_id"), str):
        chat["user"] = request.metadata["user_id"]
    return chat


# ---------------------------------------------------------------------------------------- answer
def _usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def _arguments(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"_raw": text}  # a model's malformed arguments: kept, not lost


def render_error(status: int, body: dict[str, Any], request_id: str | None = None) -> bytes:
    error = body.get("error") or {}
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    out = {"type": "error", "error": {"type": kind, "message": str(error.get("message", ""))}}
    if request_id:
        out["request_id"] = request_id
    return json.dumps(out, ensure_ascii=False).encode()


class AnthropicTranslator:
    """Chat completions answers as Anthropic's (`bridge.Translator`)."""

    def __init__(self, requested_model: str) -> None:
        self.request_id = ""
        self.model = requested_model
        self.started = False
        self.index = -1  # the open content block, if `open_kind`
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # a chunk's tool call index → our block index
        self.stop_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.context: Any = None

    @property
    def message_id(self) -> str:
        return f"msg_{self.request_id}"

    def error(self, status: int, body: dict[str, Any]) -> bytes:
        return render_error(status, body, self.request_id)

    def answer(self, completion: dict[str, Any]) -> bytes:
        choice = (completion.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "input": _arguments(function.get("arguments") or ""),
                }
            )
        out: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": completion.get("model") or self.model,
            "content": content,
            "stop_reason": _STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
            "stop_sequence": None,
            "usage": _usage(completion.get("usage")),
        }
        if completion.get("generation_context") is not None:
            out["generation_context"] = completion["generation_context"]
        return json.dumps(out, ensure_ascii=False).encode()

    # ------------------------------------------------------------------ stream
    def _close(self, out: list[bytes]) -> None:
        if self.open_kind is not None:
            out.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": self.index}))
            self.open_kind = None

    def _open(self, out: list[bytes], block: dict[str, Any]) -> None:
        self._close(out)
        self.index += 1
        self.open_kind = block["type"]
        out.append(
            sse_event(
                "content_block_start",
                {"type": "content_block_start", "index": self.index, "content_block": block},
            )
        )

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:
            self.started = True
            self.model = chunk.get("model") or self.model
            start: dict[str, Any] = {
                "id": self.message_id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
            out.append(sse_event("message_start", {"type": "message_start", "message": start}))
            out.append(sse_event("ping", {"type": "ping"}))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open_kind != "text":
                    self._open(out, {"type": "text", "text": ""})
                out.append(self._delta(self.index, {"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or ():
                position = int(call.get("index", 0))
                function = call.get("function") or {}
                if call.get("id") or position not in self.tool_blocks:
                    block = {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": {},
                    }
                    self._open(out, block)
                    self.tool_blocks[position] = self.index
                arguments = function.get("arguments")
                if arguments:
                    out.append(
                        self._delta(
                            self.tool_blocks[position],
                            {"type": "input_json_delta", "partial_json": arguments},
                        )
                    )
            if choice.get("finish_reason"):
                self.stop_reason = _STOP_REASONS.get(choice["finish_reason"], "end_turn")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if chunk.get("generation_context") is not None:
            self.context = chunk["generation_context"]
        return out

    def stream_error(self, body: dict[str, Any]) -> list[bytes]:
        error = body.get("error") or {}
        code = str(error.get("code") or "")
        kind = "overloaded_error" if code in ("overloaded", "holder_lost") else "api_error"
        if error.get("type") == "rate_limit_error" or code == "rate_limit_exceeded":
            kind = "rate_limit_error"
        return [
            sse_event(
                "error", {"type": "error", "error": {"type": kind, "message": str(error.get("message", ""))}}
            )
        ]

    def end(self) -> list[bytes]:
        out: list[bytes] = []
        if not self.started:  # an answer with no chunk at all still has a message
            out.extend(self.chunk({}))
        self._close(out)
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None},
            "usage": _usage(self.usage),
        }
        if self.context is not None:
            delta["generation_context"] = self.context
        out.append(sse_event("message_delta", delta))
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out

    async def finished(self) -> None:
        pass  # nothing is kept


# ---------------------------------------------------------------------------------------- route
def _refused(err: GatewayError) -> Response:
    return error_response(err, render_error)


@router.post(
    PATHS[0],
    dependencies=[Security(bearer)],  # documents the key; `read_request` checks it
    summary="Create a message (Anthropic's Messages API)",
    response_model=Message,
    response_description="The message as JSON or, with `stream: true`, Anthropic's server-sent events",
    responses={
        status: {"model": AnthropicError, "description": spec["description"]}
        for status, spec in openapi_errors(400, 401, 404, 413, 429, 502, 503, 504).items()
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessagesRequest"}}},
        }
    },
)
async def create_message(request: Request) -> Response:
    """Anthropic's Messages API on any gateway: `model` is the gateway. Authenticate with
    `x-api-key: <aigw key>` (Anthropic's SDKs) or `Authorization: Bearer`. Errors are Anthropic's
    error body with the same statuses as chat completions."""
    try:
        _, body = await read_request(request, request.app.state.keys, MessagesRequest)
        chat = to_chat(body)
    except GatewayError as err:
        return _refused(err)
    payload = json.dumps(chat, separators=(",", ":"), ensure_ascii=False).encode()
    return Bridged(request.app.state.chat_endpoint, payload, AnthropicTranslator(body.model))


@router.post(
    PATHS[1],
    dependencies=[Security(bearer)],
    summary="Count a message's input tokens (an estimate)",
    response_model=TokenCount,
    responses={
        status: {"model": AnthropicError, "description": spec["description"]}
        for status, spec in openapi_errors(400, 401).items()
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CountTokensRequest"}}},
        }
    },
)
async def count_tokens(request: Request) -> Response:
    """About four characters a token of the request's messages, system prompt and tools (the
    gateway's instructions are not counted): what a client needs to budget, not a bill."""
    try:
        _, body = await read_request(request, request.app.state.keys, CountTokensRequest)
        chat = to_chat(body)
    except GatewayError as err:
        return _refused(err)
    counted = [chat["messages"], chat.get("tools") or []]
    chars = len(json.dumps(counted, separators=(",", ":"), ensure_ascii=False))
    return Response(
        TokenCount(input_tokens=-(-chars // CHARS_PER_TOKEN)).model_dump_json(), media_type="application/json"
    )
