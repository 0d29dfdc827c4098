"""The interface every provider module implements, and what they share.

The rest of the worker speaks OpenAI's chat completions: the router hands it an OpenAI-shaped body,
and the stream assembler, the tool loop and pricing read OpenAI-shaped answers and usage. A provider
module translates, and nothing else (TensorZero's `providers/` layout):

* `prepare`: the OpenAI-shaped body → the provider's HTTP request (path, headers, body bytes);
* `auth`: the credential → the provider's auth headers (given the URL, as its Host header names
  it, and the prepared request: a signature covers them, Bedrock's SigV4);
* `parse`: a whole answer → an OpenAI `chat.completion` dict with an OpenAI `usage`;
* `decoder`: a stream decoder fed one network read at a time → OpenAI `chat.completion.chunk`
  dicts (usage on a chunk of its own), or, for OpenAI itself, the SSE events as they came;
* `error`: an HTTP error answer → the `GatewayError` whose status and code the retry rules and the
  client understand (429 with Retry-After, overloaded as a retryable 503, context too long as a 400).

A parameter the provider cannot honour follows one rule (`refuse`/`DROPPED`): when it changes what
comes back (`n` > 1, `logprobs`, `logit_bias`, ...), a 400 naming it; when it is only a hint
(`seed`, penalties, `user`, cache keys), it is dropped.

Usage follows OpenAI's semantics: `prompt_tokens` counts every prompt token, cached ones and those
written to the provider's cache included; `prompt_tokens_details.cached_tokens` the cache reads,
`prompt_tokens_details.cache_write_tokens` / `cache_write_1h_tokens` the cache writes (priced as
their own SKU lines), `completion_tokens_details.reasoning_tokens` the thinking tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from pydantic_core import to_json

from aigw_contracts import UpstreamTarget
from aigw_contracts.errors import GatewayError, InvalidRequest

from ..sse import SSEvent
from ..upstream import UpstreamStatusError, retry_after, status_error, upstream_message

JSON = b"application/json"


@dataclass(slots=True)
class Prepared:
    """One upstream HTTP request, as the provider wants it, and what parsing its answer needs."""

    path: str  # appended to the base URL (after a "/"); may carry a query
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    base: str | None = None  # the base URL to use instead of the target's (Azure: its query removed)
    # What the request asked for that the answer's translation must know (e.g. JSON mode by a tool).
    context: dict[str, Any] = field(default_factory=dict)


class StreamDecoder(Protocol):
    def feed(self, raw: bytes) -> list[Any]:
        """OpenAI chunks (dicts) or OpenAI SSE events for the bytes of one network read."""

    def close(self) -> list[Any]:
        """What is left once the upstream closed the stream."""


class Adapter(Protocol):
    name: str

    def prepare(self, target: UpstreamTarget, body: dict[str, Any], stream: bool) -> Prepared: ...

    def auth(
        self, key: str, url: str = "", prepared: Prepared | None = None
    ) -> list[tuple[bytes, bytes]]: ...

    def parse(self, content: bytes, prepared: Prepared) -> Any: ...

    def decoder(self, max_line: int, prepared: Prepared) -> StreamDecoder: ...

    def error(self, status: int, raw: bytes, headers: httpx.Headers) -> GatewayError: ...


class UpstreamOverloaded(UpstreamStatusError):
    """The provider says it is overloaded (Anthropic's 529, Gemini's 503 UNAVAILABLE): a 503 the
    SDKs retry, and one `retry.py` retries and falls back on like any 5xx."""

    status, type, code = 503, "server_error", "upstream_overloaded"


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def body_json(data: Any) -> bytes:
    """An upstream request's body: the JSON `dumps` gives, written by pydantic-core (Rust) in a
    fraction of the time (measured: 1.4 µs against 8.7 µs for a small chat body, the gap growing
    with the prompt). The same JSON value; only a float's spelling may differ (`1e-05` is written
    `0.00001`), which is why texts a client reads (tool arguments) keep `dumps`. What pydantic-core
    refuses (a lone surrogate) goes through `dumps`, so it fails as it always did."""
    try:
        return to_json(data, inf_nan_mode="constants")
    except ValueError:
        return dumps(data)


# Parameters with no equivalent that only hint (dropped), per the rule above; what the router never
# sends upstream (`metadata`, `idempotency_key`, ...) is not listed.
HINTS = frozenset(
    {
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "verbosity",
        "service_tier",
        "store",
        "prediction",
        "modalities",
        "stream_options",
    }
)


def refuse(param: str, provider: str, why: str = "") -> InvalidRequest:
    return InvalidRequest(
        f"'{param}' is not supported by {provider} models{': ' + why if why else ''}", param=param
    )


# What every adapter translates, beside what each adds.
TRANSLATED = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "stream",
    }
)


def check_parameters(
    body: dict[str, Any], provider: str, refused: tuple[str, ...], known: frozenset[str]
) -> None:
    """The rule for what a provider cannot honour: a 400 for the first parameter in `refused` the
    body sets to something meaningful, and for any parameter neither translated (`TRANSLATED`,
    `known`) nor a hint (`HINTS`, dropped)."""
    for name in refused:
        value = body.get(name)
        if value is None or value is False:
            continue
        if name == "n" and value == 1:
            continue
        if name == "top_logprobs" and value == 0:
            continue
        raise refuse(name, provider)
    for name in body:
        if name not in TRANSLATED and name not in known and name not in HINTS and name not in refused:
            raise refuse(name, provider)


def text_of(content: Any, param: str) -> str:
    """The text of a system/developer/tool message's content (a string, or `text` parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for position, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                out.append(str(part.get("text") or ""))
            else:
                raise InvalidRequest("only text parts are supported here", param=f"{param}[{position}]")
        return "".join(out)
    raise InvalidRequest("content must be a string or a list of parts", param=param)


def arguments(raw: Any, param: str) -> Any:
    """A tool call's `arguments` (a JSON string) as the object providers take."""
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        raise InvalidRequest("a tool call's arguments must be a JSON object", param=param) from None
    if not isinstance(value, dict):
        raise InvalidRequest("a tool call's arguments must be a JSON object", param=param)
    return value


def data_url(url: str, param: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a `data:` URL; None for any other URL."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise InvalidRequest("image data URLs must be base64 (data:<type>;base64,<data>)", param=param)
    return head[5:-7] or "application/octet-stream", data


def max_output(body: dict[str, Any]) -> int | None:
    value = body.get("max_completion_tokens")
    if value is None:
        value = body.get("max_tokens")
    return value if isinstance(value, int) else None


def openai_usage(
    prompt: int,
    completion: int,
    cached: int = 0,
    cache_write: int = 0,
    cache_write_1h: int = 0,
    reasoning: int = 0,
) -> dict[str, Any]:
    """An OpenAI usage object (details only where there is something to say)."""
    details: dict[str, int] = {"cached_tokens": cached}
    if cache_write:
        details["cache_write_tokens"] = cache_write
    if cache_write_1h:
        details["cache_write_1h_tokens"] = cache_write_1h
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def context_too_long(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="context_length_exceeded", param="messages")


def mapped_error(
    status: int,
    raw: bytes,
    headers: httpx.Headers,
    overloaded: Callable[[int, str], bool],
    too_long: Callable[[str], bool],
) -> GatewayError:
    """A provider's error answer: overloaded → a retryable 503, context too long → a 400 coded
    `context_length_exceeded`, anything else as OpenAI's own (`upstream.status_error`)."""
    message, _ = upstream_message(raw)
    if overloaded(status, message):
        return UpstreamOverloaded(
            f"The upstream model is overloaded{': ' + message if message else ''}",
            status,
            retry_after=retry_after(headers),
        )
    if status in (400, 413) and too_long(message):
        return context_too_long(message)
    return status_error(status, raw, headers)


class SSEDecoder:
    """SSE events of a provider stream, each handed to `on_event` (which returns OpenAI chunks).

    An error event (`on_event` raises) that comes in the same network read as chunks before it is
    held back until the next call: those chunks reach the client first, as they would have had
    the error come a read later."""

    __slots__ = ("_held", "_on", "_parser")

    def __init__(self, max_line: int, on_event: Callable[[SSEvent], list[dict[str, Any]]]) -> None:
        from ..sse import SSEParser

        self._parser = SSEParser(max_line)
        self._on = on_event
        self._held: GatewayError | None = None

    def feed(self, raw: bytes) -> list[Any]:
        return self._decode(self._parser.feed(raw))

    def close(self) -> list[Any]:
        return self._decode(self._parser.close())

    def _decode(self, events: list[SSEvent]) -> list[Any]:
        if self._held is not None:
            raise self._held
        out: list[Any] = []
        for event in events:
            try:
                out.extend(self._on(event))
            except GatewayError as err:
                if not out:
                    raise
                self._held = err
                break
        return out


def chunk(delta: dict[str, Any], index: int = 0) -> dict[str, Any]:
    """An OpenAI stream chunk carrying `delta` for choice `index`."""
    return {"choices": [{"index": index, "delta": delta}]}


def add_turn(
    turns: list[dict[str, Any]], role: str, items: list[dict[str, Any]], key: str = "content"
) -> None:
    """Append a turn, joining it to the last one when the role is the same: Anthropic, Gemini and
    Bedrock want roles to alternate (consecutive tool results, or user messages, become one turn)."""
    if turns and turns[-1]["role"] == role:
        turns[-1][key].extend(items)
    else:
        turns.append({"role": role, key: items})


def user_parts(content: Any, param: str, provider: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """A user message's parts as ("text", text, part) or ("image", its URL, part); any other kind
    of part is a 400 naming it (what a provider cannot take, it refuses by name)."""
    if isinstance(content, str):
        yield "text", content, {}
        return
    for j, part in enumerate(content or ()):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            yield "text", part.get("text") or "", part
        elif kind == "image_url":
            yield "image", (part.get("image_url") or {}).get("url") or "", part
        else:
            raise InvalidRequest(
                f"'{kind}' parts are not supported by {provider} models", param=f"{param}[{j}]"
            )


class ToolBlocks:
    """Which streamed content block is which tool call: providers number content blocks (text and
    tool calls alike), OpenAI numbers tool calls from 0."""

    __slots__ = ("blocks", "count")

    def __init__(self) -> None:
        self.blocks: dict[int, int] = {}
        self.count = 0

    def start(self, block: int, call_id: Any, name: Any) -> dict[str, Any]:
        """The chunk opening a tool call in content block `block`."""
        index = self.blocks[block] = self.count
        self.count += 1
        call = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return chunk({"tool_calls": [call]})

    def arguments(self, block: int, text: str) -> list[dict[str, Any]]:
        """The chunk adding `text` to the arguments of the call in `block` (none for another block)."""
        index = self.blocks.get(block)
        if index is None or index < 0:
            return []
        return [chunk({"tool_calls": [{"index": index, "function": {"arguments": text}}]})]
