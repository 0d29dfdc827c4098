"""Anthropic's Messages API (`POST /v1/messages`), both ways.

Request: system and developer messages become the top-level `system` (text blocks, each part's
`cache_control` kept, so clients can mark prompt-cache breakpoints as they do with Anthropic);
user parts become text and image blocks (data URLs as base64 sources, other URLs as url sources);
assistant `tool_calls` become `tool_use` blocks and `tool` messages `tool_result` blocks, the
results of one turn's parallel calls in one user message; `tool_choice` maps to auto / any / tool /
none, `parallel_tool_calls: false` to `disable_parallel_tool_use`; `reasoning_effort` to extended
thinking with a budget (`THINKING_BUDGET`; temperature and top_p are then left out, as Anthropic
requires; not on a call continuing a tool turn, whose thinking block clients do not send back);
`max_tokens` is required by the API: the request's, else `DEFAULT_MAX_TOKENS`. JSON mode (`response_format` json_object / json_schema) is a forced tool whose input is the answer
(Anthropic has no JSON mode; the answer's content is that input, as JSON text).

Answer: text blocks are the content, `tool_use` blocks the tool calls, thinking the message's
`reasoning_content`; stop reasons map to OpenAI's finish reasons (`FINISH`). Usage: `prompt_tokens`
is input + cache reads + cache writes, the cache writes split into 5-minute and 1-hour ones as
Anthropic prices them. Streams: `message_start` (input usage), `content_block_start` /
`content_block_delta` (text_delta, input_json_delta, thinking_delta: `delta.reasoning_content`),
`message_delta` (stop reason, output usage), `message_stop`, `ping`, and `error` events (an error
mid-stream ends the answer).
"""

from __future__ import annotations

from typing import Any

import httpx

from aigw_contracts import UpstreamTarget
from aigw_contracts.errors import GatewayError, InvalidRequest, UpstreamError

from ..jsonio import loads
from ..sse import SSEvent
from .base import (
    Prepared,
    SSEDecoder,
    StreamDecoder,
    ToolBlocks,
    add_turn,
    arguments,
    check_parameters,
    chunk,
    data_url,
    dumps,
    mapped_error,
    max_output,
    openai_usage,
    refuse,
    text_of,
    user_parts,
)

VERSION = b"2023-06-01"
DEFAULT_MAX_TOKENS = 4096
THINKING_BUDGET = {"low": 1024, "medium": 4096, "high": 16384}
JSON_TOOL = "json_response"
FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_REFUSED = ("n", "logprobs", "top_logprobs", "logit_bias", "audio")
_NAME = "Anthropic"


class Anthropic:
    name = "anthropic"

    def prepare(self, target: UpstreamTarget, body: dict[str, Any], stream: bool) -> Prepared:
        check_parameters(body, _NAME, _REFUSED, _KNOWN)
        system, messages = _messages(body.get("messages") or [])
        data: dict[str, Any] = {"model": target.model, "messages": messages}
        if system:
            data["system"] = system
        limit = max_output(body)
        effort = body.get("reasoning_effort")
        budget = THINKING_BUDGET.get(effort) if isinstance(effort, str) else None
        if budget is not None and _continues_tool_turn(body.get("messages") or []):
            # Anthropic wants the turn's thinking block (with its signature) back before its tool
            # calls, which OpenAI-shaped clients do not keep: this call of the turn thinks no more.
            budget = None
        if budget is not None:
            if limit is None:
                limit = budget + DEFAULT_MAX_TOKENS
            elif limit <= budget:
                budget = max(1024, limit // 2)
                if limit <= budget:
                    raise refuse(
                        "reasoning_effort",
                        _NAME,
                        "thinking needs max_completion_tokens above 1024; raise it or drop reasoning_effort",
                    )
            data["thinking"] = {"type": "enabled", "budget_tokens": budget}
        data["max_tokens"] = limit if limit is not None else DEFAULT_MAX_TOKENS
        if budget is None:
            for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
                if body.get(ours) is not None:
                    data[theirs] = body[ours]
        stop = body.get("stop")
        if stop:
            data["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        context: dict[str, Any] = {}
        tools = [_tool(t, i) for i, t in enumerate(body.get("tools") or [])]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
            tools.append(
                {
                    "name": JSON_TOOL,
                    "description": "Give the answer as this tool's input: a JSON object.",
                    "input_schema": schema or {"type": "object"},
                }
            )
            choice = {"type": "tool", "name": JSON_TOOL}
            context["json"] = True
            if budget is not None:  # Anthropic forbids forcing a tool while thinking
                raise refuse("response_format", _NAME, "JSON mode cannot be combined with reasoning_effort")
        if tools:
            data["tools"] = tools
        if choice is not None:
            if not tools and choice.get("type") != "none":
                raise InvalidRequest("tool_choice needs tools", param="tool_choice")
            if tools:
                data["tool_choice"] = choice
        user = body.get("user")
        if isinstance(user, str) and user:
            data["metadata"] = {"user_id": user[:256]}
        if stream:
            data["stream"] = True
        return Prepared("messages", dumps(data), [(b"anthropic-version", VERSION)], context=context)

    def auth(self, key: str, url: str = "", prepared: Prepared | None = None) -> list[tuple[bytes, bytes]]:
        return [(b"x-api-key", key.encode("latin-1"))]

    def parse(self, content: bytes, prepared: Prepared) -> Any:
        data = loads(content)
        if not isinstance(data, dict) or data.get("type") == "error":
            raise UpstreamError("The upstream model sent an answer in an unexpected shape")
        json_mode = prepared.context.get("json", False)
        texts: list[str] = []
        thinking: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in data.get("content") or ():
            kind = block.get("type")
            if kind == "text":
                texts.append(block.get("text") or "")
            elif kind == "thinking":
                thinking.append(block.get("thinking") or "")
            elif kind == "tool_use":
                if json_mode and block.get("name") == JSON_TOOL:
                    texts.append(dumps(block.get("input") or {}).decode())
                    continue
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {
                            "name": block.get("name"),
                            "arguments": dumps(block.get("input") or {}).decode(),
                        },
                    }
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["reasoning_content"] = "".join(thinking)
        finish = FINISH.get(str(data.get("stop_reason")), "stop")
        if json_mode and finish == "tool_calls" and not calls:
            finish = "stop"
        return {
            "id": data.get("id"),
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _usage(data.get("usage")),
        }

    def decoder(self, max_line: int, prepared: Prepared) -> StreamDecoder:
        return SSEDecoder(max_line, _Stream(prepared.context.get("json", False)).on_event)

    def error(self, status: int, raw: bytes, headers: httpx.Headers) -> GatewayError:
        return mapped_error(
            status,
            raw,
            headers,
            overloaded=lambda s, m: s == 529 or ("overloaded" in m.lower() and s >= 500),
            too_long=lambda m: (
                "prompt is too long" in m.lower() or ("context" in m.lower() and "exceed" in m.lower())
            ),
        )


_KNOWN = frozenset({"reasoning_effort", "parallel_tool_calls", "response_format", "user"})


def _continues_tool_turn(messages: list[Any]) -> bool:
    """The conversation ends with tool results answering the last assistant message's calls."""
    tail = len(messages)
    while tail and isinstance(messages[tail - 1], dict) and messages[tail - 1].get("role") == "tool":
        tail -= 1
    if tail == len(messages) or not tail:
        return False
    last = messages[tail - 1]
    return isinstance(last, dict) and last.get("role") == "assistant" and bool(last.get("tool_calls"))


def _usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    fresh = raw.get("input_tokens") or 0
    read = raw.get("cache_read_input_tokens") or 0
    written = raw.get("cache_creation_input_tokens") or 0
    split = raw.get("cache_creation")
    hour = (split.get("ephemeral_1h_input_tokens") or 0) if isinstance(split, dict) else 0
    if not all(isinstance(v, int) for v in (fresh, read, written, hour)):
        return {"prompt_tokens": "unusable", "completion_tokens": raw.get("output_tokens")}
    return openai_usage(
        prompt=fresh + read + written,
        completion=raw.get("output_tokens") or 0,
        cached=read,
        cache_write=written - hour,
        cache_write_1h=hour,
    )


def _messages(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    for i, message in enumerate(raw):
        param = f"messages[{i}]"
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, f"{param}.content"))
        elif role == "user":
            add_turn(out, "user", _user_blocks(content, f"{param}.content"))
        elif role == "assistant":
            blocks = _text_blocks(content, f"{param}.content") if content else []
            blocks = [b for b in blocks if b.get("text")]
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id"),
                        "name": function.get("name"),
                        "input": arguments(
                            function.get("arguments"), f"{param}.tool_calls[{j}].function.arguments"
                        ),
                    }
                )
            if blocks:
                add_turn(out, "assistant", blocks)
        elif role == "tool":
            add_turn(
                out,
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id"),
                        "content": text_of(content, f"{param}.content"),
                    }
                ],
            )
        else:
            raise InvalidRequest(f"role '{role}' is not supported by {_NAME} models", param=f"{param}.role")
    return system, out


def _text_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for j, part in enumerate(content or ()):
        if not isinstance(part, dict) or part.get("type") != "text":
            raise InvalidRequest("only text parts are supported here", param=f"{param}[{j}]")
        blocks.append(_with_cache(part, {"type": "text", "text": part.get("text") or ""}))
    return blocks


def _with_cache(part: dict[str, Any], block: dict[str, Any]) -> dict[str, Any]:
    cache = part.get("cache_control")
    if isinstance(cache, dict):
        block["cache_control"] = cache
    return block


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, (kind, value, part) in enumerate(user_parts(content, param, _NAME)):
        if kind == "text":
            blocks.append(_with_cache(part, {"type": "text", "text": value}))
            continue
        inline = data_url(value, f"{param}[{j}].image_url.url")
        source = (
            {"type": "base64", "media_type": inline[0], "data": inline[1]}
            if inline
            else {"type": "url", "url": value}
        )
        blocks.append(_with_cache(part, {"type": "image", "source": source}))
    return blocks


def _tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise refuse(f"tools[{i}].type", _NAME, "only function tools")
    function = tool.get("function") or {}
    out: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return _with_cache(tool, out)


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise InvalidRequest("tool_choice is not one this gateway can translate", param="tool_choice")
    if parallel is False:
        out = out or {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out


class _Stream:
    """One streamed answer's state: which content block is which tool call, the input usage."""

    __slots__ = ("json_mode", "prompt", "tools")

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.tools = ToolBlocks()  # the JSON-mode tool's block is -1: its input is the content
        self.prompt: dict[str, Any] = {}

    def on_event(self, event: SSEvent) -> list[dict[str, Any]]:
        try:
            data = loads(event.data)
        except ValueError:
            raise UpstreamError("The upstream model sent a malformed stream event") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [chunk({"content": delta.get("text") or ""})]
            if dtype == "input_json_delta":
                block = data.get("index", 0)
                partial = delta.get("partial_json") or ""
                if self.tools.blocks.get(block) == -1:
                    return [chunk({"content": partial})]
                return self.tools.arguments(block, partial)
            if dtype == "thinking_delta":
                return [chunk({"reasoning_content": delta.get("thinking") or ""})]
            return []  # signature_delta, citations: not part of an OpenAI chunk
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") != "tool_use":
                return []
            if self.json_mode and block.get("name") == JSON_TOOL:
                self.tools.blocks[data.get("index", 0)] = -1
                return []
            return [self.tools.start(data.get("index", 0), block.get("id"), block.get("name"))]
        if kind == "message_start":
            usage = (data.get("message") or {}).get("usage")
            self.prompt = usage if isinstance(usage, dict) else {}
            return [{"choices": []}]
        if kind == "message_delta":
            stop = (data.get("delta") or {}).get("stop_reason")
            finish = FINISH.get(str(stop), "stop")
            if self.json_mode and finish == "tool_calls" and not self.tools.count:
                finish = "stop"
            usage = {**self.prompt, **{k: v for k, v in (data.get("usage") or {}).items() if v is not None}}
            return [
                {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
                {"choices": [], "usage": _usage(usage)},
            ]
        if kind == "error" or event.event == "error":
            error = data.get("error") if isinstance(data, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise UpstreamError(f"The upstream model failed mid-answer: {message or 'unknown error'}"[:400])
        return []  # ping, content_block_stop, message_stop
