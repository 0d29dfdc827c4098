"""Google Gemini's generateContent / streamGenerateContent (AI Studio, `x-goog-api-key`), both ways.

Request: system and developer messages become `systemInstruction`; user and assistant turns become
`contents` with role `user` / `model` (text parts, images as `inlineData` from data URLs), assistant
`tool_calls` `functionCall` parts and `tool` messages `functionResponse` parts (named after the call
they answer); tools become `functionDeclarations` and `tool_choice` the function-calling mode
(auto / any / none, a named function as `allowedFunctionNames`); sampling parameters go into
`generationConfig`; JSON mode is `responseMimeType: application/json` (with the schema when given);
`reasoning_effort` a thinking budget. Vertex AI serves the same body at its own URL with OAuth
credentials (not built: a service account's token needs refreshing, unlike a key).

Answer: `candidates` become choices (`n` is `candidateCount`); a function call part is a tool call
(ids are made up: Gemini has none), thought parts (asked for with `includeThoughts` when the request
sets `reasoning_effort`) are the message's `reasoning_content`, in streams
`delta.reasoning_content`, never the content; `finishReason` maps
to OpenAI's (`SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII` → `content_filter`),
and a prompt Gemini blocks outright (`promptFeedback.blockReason`, no candidates) is a 400 coded
`content_filter`. `usageMetadata`: prompt (cached included), candidates + thoughts as completion,
thoughts as reasoning tokens, `cachedContentTokenCount` as cached. Streams (`alt=sse`) carry
whole `GenerateContentResponse`s, each with the usage so far.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from aigw_contracts import UpstreamTarget
from aigw_contracts.errors import GatewayError, InvalidRequest, UpstreamError

from ..jsonio import loads
from ..sse import SSEvent
from ..upstream import UpstreamStatusError, upstream_message
from .base import (
    Prepared,
    SSEDecoder,
    StreamDecoder,
    add_turn,
    arguments,
    check_parameters,
    data_url,
    dumps,
    mapped_error,
    max_output,
    openai_usage,
    refuse,
    text_of,
    user_parts,
)

THINKING_BUDGET = {"minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
_REFUSED = ("logprobs", "top_logprobs", "logit_bias", "audio")
_NAME = "Gemini"
_CONFIG = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("seed", "seed"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)
_KNOWN = frozenset({"reasoning_effort", "response_format", "n", "parallel_tool_calls"})
# JSON Schema keywords Gemini's OpenAPI-subset `parameters` / `responseSchema` reject.
_SCHEMA_DROP = frozenset({"additionalProperties", "$schema", "strict", "$id", "$defs", "definitions"})


class Gemini:
    name = "gemini"

    def prepare(self, target: UpstreamTarget, body: dict[str, Any], stream: bool) -> Prepared:
        check_parameters(body, _NAME, _REFUSED, _KNOWN)
        if body.get("parallel_tool_calls") is False:
            raise refuse("parallel_tool_calls", _NAME, "parallel tool calls cannot be turned off")
        system, contents = _contents(body.get("messages") or [])
        data: dict[str, Any] = {"contents": contents}
        if system:
            data["systemInstruction"] = {"parts": [{"text": t} for t in system]}
        config: dict[str, Any] = {}
        for ours, theirs in _CONFIG:
            if body.get(ours) is not None:
                config[theirs] = body[ours]
        limit = max_output(body)
        if limit is not None:
            config["maxOutputTokens"] = limit
        stop = body.get("stop")
        if stop:
            config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
        n = body.get("n")
        if isinstance(n, int) and n > 1:
            config["candidateCount"] = n
        effort = body.get("reasoning_effort")
        if isinstance(effort, str) and effort in THINKING_BUDGET:
            config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGET[effort], "includeThoughts": True}
        fmt = body.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
            schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
            if schema:
                config["responseSchema"] = _schema(schema)
        if config:
            data["generationConfig"] = config
        tools = body.get("tools")
        if tools:
            data["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(tools)]}]
        choice = body.get("tool_choice")
        if choice is not None:
            data["toolConfig"] = {"functionCallingConfig": _calling(choice)}
        model = quote(target.model, safe="")
        path = (
            f"models/{model}:streamGenerateContent?alt=sse" if stream else f"models/{model}:generateContent"
        )
        return Prepared(path, dumps(data))

    def auth(self, key: str, url: str = "", prepared: Prepared | None = None) -> list[tuple[bytes, bytes]]:
        return [(b"x-goog-api-key", key.encode("latin-1"))]

    def parse(self, content: bytes, prepared: Prepared) -> Any:
        data = loads(content)
        if not isinstance(data, dict):
            raise UpstreamError("The upstream model sent an answer in an unexpected shape")
        _blocked(data)
        choices = []
        counter = [0]
        for position, candidate in enumerate(data.get("candidates") or ()):
            texts, thoughts, calls = _parts(candidate, counter)
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(texts) if texts or not calls else None,
            }
            if thoughts:
                message["reasoning_content"] = "".join(thoughts)
            if calls:
                message["tool_calls"] = calls
            choices.append(
                {
                    "index": candidate.get("index", position),
                    "message": message,
                    "finish_reason": _finish(candidate.get("finishReason"), bool(calls)),
                }
            )
        return {
            "id": data.get("responseId"),
            "object": "chat.completion",
            "choices": choices,
            "usage": _usage(data.get("usageMetadata")),
        }

    def decoder(self, max_line: int, prepared: Prepared) -> StreamDecoder:
        return SSEDecoder(max_line, _Stream().on_event)

    def error(self, status: int, raw: bytes, headers: httpx.Headers) -> GatewayError:
        message, _ = upstream_message(raw)
        if status == 400 and (
            "API_KEY_INVALID" in raw.decode("utf-8", "replace") or "API key not valid" in message
        ):
            # Google answers a wrong key with a 400: it is the gateway's credentials, not the request.
            return UpstreamStatusError(
                "The upstream model refused the gateway's credentials for it (HTTP 400, API key not valid); "
                "this is a gateway configuration problem, not a problem with your API key",
                401,
                code="upstream_auth_failed",
            )
        err = mapped_error(
            status,
            raw,
            headers,
            overloaded=lambda s, m: s == 503,
            too_long=lambda m: "exceeds the maximum number of tokens" in m or "too long" in m.lower(),
        )
        if status == 429 and err.retry_after is None:
            err.retry_after = _retry_delay(raw)  # Google says it in the body (RetryInfo), not a header
        return err


def _retry_delay(raw: bytes) -> float | None:
    """Seconds from a Google error's `RetryInfo` detail (`"retryDelay": "27s"`), if it has one."""
    try:
        details = loads(raw)["error"]["details"]
        for detail in details:
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if isinstance(delay, str) and delay.endswith("s"):
                return max(0.0, float(delay[:-1]))
    except (ValueError, KeyError, TypeError):
        return None
    return None


def _blocked(data: dict[str, Any]) -> None:
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if reason and not data.get("candidates"):
        raise InvalidRequest(
            f"The provider's safety filter blocked the prompt ({reason})",
            code="content_filter",
            param="messages",
        )


def _finish(reason: Any, calls: bool) -> str:
    if calls and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH.get(str(reason), "stop")


def _parts(
    candidate: dict[str, Any], counter: list[int]
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """A candidate's text, thought summaries and function calls."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            if part.get("text"):
                thoughts.append(part["text"])
            continue
        if "text" in part:
            texts.append(part["text"] or "")
        elif "functionCall" in part:
            call = part["functionCall"] or {}
            calls.append(
                {
                    "id": call.get("id") or f"call_{counter[0]}",
                    "type": "function",
                    "function": {
                        "name": call.get("name"),
                        "arguments": dumps(call.get("args") or {}).decode(),
                    },
                }
            )
            counter[0] += 1
    return texts, thoughts, calls


def _usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    prompt = (raw.get("promptTokenCount") or 0) + (raw.get("toolUsePromptTokenCount") or 0)
    thoughts = raw.get("thoughtsTokenCount") or 0
    completion = (raw.get("candidatesTokenCount") or 0) + thoughts
    return openai_usage(
        prompt=prompt,
        completion=completion,
        cached=raw.get("cachedContentTokenCount") or 0,
        reasoning=thoughts,
    )


def _contents(raw: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name (functionResponse needs the name)

    for i, message in enumerate(raw):
        param = f"messages[{i}]"
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(text_of(content, f"{param}.content"))
        elif role == "user":
            add_turn(out, "user", _user_parts(content, f"{param}.content"), "parts")
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            if content:
                text = text_of(content, f"{param}.content")
                if text:
                    parts.append({"text": text})
            for j, call in enumerate(message.get("tool_calls") or ()):
                function = call.get("function") or {}
                names[str(call.get("id"))] = str(function.get("name"))
                parts.append(
                    {
                        "functionCall": {
                            "name": function.get("name"),
                            "args": arguments(
                                function.get("arguments"), f"{param}.tool_calls[{j}].function.arguments"
                            ),
                        }
                    }
                )
            if parts:
                add_turn(out, "model", parts, "parts")
        elif role == "tool":
            text = text_of(content, f"{param}.content")
            try:
                value = loads(text.encode())
            except ValueError:
                value = None
            response = value if isinstance(value, dict) else {"content": text}
            name = names.get(str(message.get("tool_call_id")), "")
            add_turn(out, "user", [{"functionResponse": {"name": name, "response": response}}], "parts")
        else:
            raise InvalidRequest(f"role '{role}' is not supported by {_NAME} models", param=f"{param}.role")
    return system, out


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, (kind, value, _part) in enumerate(user_parts(content, param, _NAME)):
        if kind == "text":
            parts.append({"text": value})
            continue
        where = f"{param}[{j}].image_url.url"
        inline = data_url(value, where)
        if inline is None:
            raise InvalidRequest(f"{_NAME} models take images as data URLs (base64)", param=where)
        parts.append({"inlineData": {"mimeType": inline[0], "data": inline[1]}})
    return parts


def _schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _schema(v) for k, v in schema.items() if k not in _SCHEMA_DROP}
    if isinstance(schema, list):
        return [_schema(v) for v in schema]
    return schema


def _declaration(tool: dict[str, Any], i: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise refuse(f"tools[{i}].type", _NAME, "only function tools")
    function = tool.get("function") or {}
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        out["parameters"] = _schema(function["parameters"])
    return out


def _calling(choice: Any) -> dict[str, Any]:
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "required":
        return {"mode": "ANY"}
    if choice == "none":
        return {"mode": "NONE"}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        return {"mode": "ANY", "allowedFunctionNames": [choice["function"].get("name")]}
    raise InvalidRequest("tool_choice is not one this gateway can translate", param="tool_choice")


class _Stream:
    __slots__ = ("counter", "tools")

    def __init__(self) -> None:
        self.counter = [0]
        self.tools: dict[int, int] = {}  # candidate index -> tool calls sent so far

    def on_event(self, event: SSEvent) -> list[dict[str, Any]]:
        try:
            data = loads(event.data)
        except ValueError:
            raise UpstreamError("The upstream model sent a malformed stream event") from None
        if not isinstance(data, dict):
            raise UpstreamError("The upstream model sent a malformed stream event")
        if data.get("error"):
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"The upstream model failed mid-answer: {message}"[:400])
        _blocked(data)
        out: list[dict[str, Any]] = []
        choices = []
        for position, candidate in enumerate(data.get("candidates") or ()):
            index = candidate.get("index", position)
            texts, thoughts, calls = _parts(candidate, self.counter)
            delta: dict[str, Any] = {}
            if thoughts:
                delta["reasoning_content"] = "".join(thoughts)
            if texts:
                delta["content"] = "".join(texts)
            if calls:
                first = self.tools.get(index, 0)
                delta["tool_calls"] = [{"index": first + k, **call} for k, call in enumerate(calls)]
                self.tools[index] = first + len(calls)
            choice: dict[str, Any] = {"index": index, "delta": delta}
            reason = candidate.get("finishReason")
            if reason:
                choice["finish_reason"] = _finish(reason, self.tools.get(index, 0) > 0)
            choices.append(choice)
        out.append({"choices": choices})
        usage = _usage(data.get("usageMetadata"))
        if usage is not None:
            out.append({"choices": [], "usage": usage})
        return out
