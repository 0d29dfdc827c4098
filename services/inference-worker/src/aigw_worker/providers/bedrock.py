"""AWS Bedrock's Converse and ConverseStream APIs, signed with SigV4 (botocore's `SigV4Auth`),
streams in the AWS event-stream binary framing (botocore's `EventStreamBuffer`, CRCs checked).

A Bedrock upstream's `base_url` is the regional runtime endpoint,
`https://bedrock-runtime.<region>.amazonaws.com` (the region is read from it), its `model` the
model id or inference profile (`anthropic.claude-sonnet-4-5-20250929-v1:0`, `us.amazon.nova-pro-v1:0`);
the credentials (`AIGW_PROVIDER_KEYS`' entry for the upstream's provider) are
`ACCESS_KEY_ID:SECRET_ACCESS_KEY` or `ACCESS_KEY_ID:SECRET_ACCESS_KEY:SESSION_TOKEN`.

Request: system messages → `system`; text and images (data URLs; Converse takes no image URL: a
400) → content blocks, a part's `cache_control` → a `cachePoint` block after it; `tool_calls` ↔
`toolUse`, `tool` messages → `toolResult` (one user turn per round); tools → `toolConfig.tools`
(`toolSpec`), `tool_choice` auto/required/named → auto/any/tool (`none` with tools: a 400, Converse
has no such choice); `max_tokens`, `temperature`, `top_p`, `stop` → `inferenceConfig`. Answer:
`stopReason` → OpenAI's (`guardrail_intervened`, `content_filtered` → `content_filter`), usage with
`cacheReadInputTokens` / `cacheWriteInputTokens` as cache reads and writes. Stream events:
`messageStart`, `contentBlockStart` (a tool call), `contentBlockDelta` (text, tool input,
reasoning), `contentBlockStop`, `messageStop`, `metadata` (usage); an exception message mid-stream
ends the answer (`throttlingException`, `modelStreamErrorException`, ...).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx

from aigw_contracts import UpstreamTarget
from aigw_contracts.errors import GatewayError, InvalidRequest, UpstreamError

from ..jsonio import loads
from ..upstream import UpstreamStatusError
from .base import (
    Prepared,
    StreamDecoder,
    ToolBlocks,
    UpstreamOverloaded,
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

FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_REFUSED = ("n", "logprobs", "top_logprobs", "logit_bias", "audio", "response_format", "reasoning_effort")
_KNOWN = frozenset({"parallel_tool_calls"})
_NAME = "Bedrock"
_REGION = re.compile(r"bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


class Bedrock:
    name = "bedrock"

    def prepare(self, target: UpstreamTarget, body: dict[str, Any], stream: bool) -> Prepared:
        check_parameters(body, _NAME, _REFUSED, _KNOWN)
        if body.get("parallel_tool_calls") is False:
            raise refuse("parallel_tool_calls", _NAME, "parallel tool calls cannot be turned off")
        system, messages = _messages(body.get("messages") or [])
        data: dict[str, Any] = {"messages": messages}
        if system:
            data["system"] = system
        config: dict[str, Any] = {}
        limit = max_output(body)
        if limit is not None:
            config["maxTokens"] = limit
        for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
            if body.get(ours) is not None:
                config[theirs] = body[ours]
        stop = body.get("stop")
        if stop:
            config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
        if config:
            data["inferenceConfig"] = config
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if tools:
            if choice == "none":
                raise refuse(
                    "tool_choice", _NAME, "'none' has no equivalent in Converse; send no tools instead"
                )
            spec: dict[str, Any] = {"tools": [_tool(t, i) for i, t in enumerate(tools)]}
            if choice is not None:
                spec["toolChoice"] = _tool_choice(choice)
            data["toolConfig"] = spec
        model = quote(target.model, safe="")
        path = f"model/{model}/converse-stream" if stream else f"model/{model}/converse"
        return Prepared(path, dumps(data))

    def auth(self, key: str, url: str = "", prepared: Prepared | None = None) -> list[tuple[bytes, bytes]]:
        """SigV4 headers for the request to `url` with `prepared`'s body (the key's parts:
        access key id, secret, and an optional session token)."""
        parts = key.split(":", 2)
        if len(parts) < 2 or prepared is None:
            raise UpstreamError(
                "The Bedrock credentials must be ACCESS_KEY_ID:SECRET_ACCESS_KEY[:SESSION_TOKEN]",
                code="upstream_not_configured",
            )
        from botocore.auth import SigV4Auth  # botocore loads only in a worker that calls Bedrock
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        found = _REGION.search(url)
        region = found.group(1) if found else "us-east-1"
        request = AWSRequest(
            method="POST", url=url, data=prepared.body, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(
            Credentials(parts[0], parts[1], parts[2] if len(parts) > 2 else None), "bedrock", region
        ).add_auth(request)
        return [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "x-amz-date", "x-amz-security-token")
        ]

    def parse(self, content: bytes, prepared: Prepared) -> Any:
        data = loads(content)
        if not isinstance(data, dict):
            raise UpstreamError("The upstream model sent an answer in an unexpected shape")
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in ((data.get("output") or {}).get("message") or {}).get("content") or ():
            if "text" in block:
                texts.append(block["text"] or "")
            elif "toolUse" in block:
                use = block["toolUse"] or {}
                calls.append(
                    {
                        "id": use.get("toolUseId"),
                        "type": "function",
                        "function": {
                            "name": use.get("name"),
                            "arguments": dumps(use.get("input") or {}).decode(),
                        },
                    }
                )
            elif "reasoningContent" in block:
                reasoning.append(
                    ((block["reasoningContent"] or {}).get("reasoningText") or {}).get("text") or ""
                )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(texts) if texts or not calls else None,
        }
        if calls:
            message["tool_calls"] = calls
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        return {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": FINISH.get(str(data.get("stopReason")), "stop"),
                }
            ],
            "usage": _usage(data.get("usage")),
        }

    def decoder(self, max_line: int, prepared: Prepared) -> StreamDecoder:
        return _Stream()

    def error(self, status: int, raw: bytes, headers: httpx.Headers) -> GatewayError:
        kind = headers.get("x-amzn-errortype", "").split(":")[0]
        if status == 403 or kind in ("AccessDeniedException", "UnrecognizedClientException"):
            return UpstreamStatusError(
                f"The upstream model refused the gateway's credentials for it (HTTP {status}, {kind or 'denied'}); "
                "this is a gateway configuration problem, not a problem with your API key",
                status,
                code="upstream_auth_failed",
            )
        return mapped_error(
            status,
            raw,
            headers,
            overloaded=lambda s, m: s == 503 or kind == "ServiceUnavailableException",
            too_long=lambda m: "too long" in m.lower() or ("context" in m.lower() and "exceed" in m.lower()),
        )


def _usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    fresh = raw.get("inputTokens") or 0
    read = raw.get("cacheReadInputTokens") or 0
    written = raw.get("cacheWriteInputTokens") or 0
    return openai_usage(
        prompt=fresh + read + written,
        completion=raw.get("outputTokens") or 0,
        cached=read,
        cache_write=written,
    )


def _cache(part: dict[str, Any], blocks: list[dict[str, Any]]) -> None:
    if isinstance(part.get("cache_control"), dict):
        blocks.append({"cachePoint": {"type": "default"}})


def _messages(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []

    for i, message in enumerate(raw):
        param = f"messages[{i}]"
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if isinstance(content, list):
                for part in content:
                    system.append({"text": text_of([part], f"{param}.content")})
                    _cache(part, system)
            else:
                system.append({"text": text_of(content, f"{param}.content")})
        elif role == "user":
            add_turn(out, "user", _user_blocks(content, f"{param}.content"))
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(content, f"{param}.content") if content else ""
            if text:
                blocks.append({"text": text})
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                blocks.append(
                    {
                        "toolUse": {
                            "toolUseId": call.get("id"),
                            "name": function.get("name"),
                            "input": arguments(
                                function.get("arguments"), f"{param}.tool_calls[{j}].function.arguments"
                            ),
                        }
                    }
                )
            if blocks:
                add_turn(out, "assistant", blocks)
        elif role == "tool":
            result = {
                "toolUseId": message.get("tool_call_id"),
                "content": [{"text": text_of(content, f"{param}.content")}],
            }
            add_turn(out, "user", [{"toolResult": result}])
        else:
            raise InvalidRequest(f"role '{role}' is not supported by {_NAME} models", param=f"{param}.role")
    return system, out


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for j, (kind, value, part) in enumerate(user_parts(content, param, _NAME)):
        if kind == "text":
            blocks.append({"text": value})
        else:
            where = f"{param}[{j}].image_url.url"
            inline = data_url(value, where)
            if inline is None or inline[0] not in _FORMATS:
                raise InvalidRequest(
                    f"{_NAME} models take images as png, jpeg, gif or webp data URLs", param=where
                )
            blocks.append({"image": {"format": _FORMATS[inline[0]], "source": {"bytes": inline[1]}}})
        _cache(part, blocks)
    return blocks


def _tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise refuse(f"tools[{i}].type", _NAME, "only function tools")
    function = tool.get("function") or {}
    spec: dict[str, Any] = {
        "name": function.get("name"),
        "inputSchema": {"json": function.get("parameters") or {"type": "object", "properties": {}}},
    }
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def _tool_choice(choice: Any) -> dict[str, Any]:
    if choice == "auto":
        return {"auto": {}}
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"tool": {"name": choice["function"].get("name")}}
    raise InvalidRequest("tool_choice is not one this gateway can translate", param="tool_choice")


class _Stream:
    """The event-stream frames of one ConverseStream answer, as OpenAI chunks."""

    __slots__ = ("_buffer", "_held", "tools")

    def __init__(self) -> None:
        from botocore.eventstream import EventStreamBuffer

        self._buffer = EventStreamBuffer()  # refuses a frame over 16 MiB
        self._held: GatewayError | None = None
        self.tools = ToolBlocks()

    def feed(self, raw: bytes) -> list[Any]:
        from botocore.eventstream import ParserError

        if self._held is not None:
            raise self._held
        self._buffer.add_data(raw)
        out: list[Any] = []
        try:
            for message in self._buffer:
                out.extend(self._event(message.headers, message.payload))
        except ParserError:
            raise UpstreamError("The upstream model sent a malformed event stream") from None
        except GatewayError as err:
            if not out:
                raise
            self._held = err
        return out

    def close(self) -> list[Any]:
        if self._held is not None:
            raise self._held
        return []

    def _event(self, headers: dict[str, Any], payload: bytes) -> list[dict[str, Any]]:
        kind = headers.get(":message-type")
        if kind != "event":
            name = headers.get(":exception-type") or headers.get(":error-code") or "error"
            try:
                message = (loads(payload) or {}).get("message")
            except (ValueError, AttributeError):
                message = None
            err = f"The upstream model failed mid-answer: {name}: {message or ''}"[:400]
            if name in ("throttlingException", "serviceUnavailableException"):
                raise UpstreamOverloaded(err, 503)
            raise UpstreamError(err)
        event = headers.get(":event-type")
        data = loads(payload) if payload else {}
        if event == "contentBlockDelta":
            delta = data.get("delta") or {}
            if "text" in delta:
                return [chunk({"content": delta["text"] or ""})]
            if "toolUse" in delta:
                return self.tools.arguments(
                    data.get("contentBlockIndex", 0), (delta["toolUse"] or {}).get("input") or ""
                )
            return []  # reasoningContent: not part of an OpenAI chunk
        if event == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if not use:
                return []
            return [self.tools.start(data.get("contentBlockIndex", 0), use.get("toolUseId"), use.get("name"))]
        if event == "messageStart":
            return [{"choices": []}]
        if event == "messageStop":
            finish = FINISH.get(str(data.get("stopReason")), "stop")
            return [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}]
        if event == "metadata":
            usage = _usage(data.get("usage"))
            return [{"choices": [], "usage": usage}] if usage else []
        return []
