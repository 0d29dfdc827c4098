"""Response bodies as byte templates, in OpenAI's exact shapes and key order.

Why templates: the simulator is the zero-latency baseline of the gateway benchmarks, so a response
costs a few `bytes.join`s, not a dict build plus `json.dumps`. Only what varies per request (id,
created, model, content, counts) is formatted; everything else is a constant below.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

from aigw_simulator.generation import ToolCall

JSON_HEADERS = ((b"content-type", b"application/json"),)
SSE_HEADERS = ((b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"))

DONE = b"data: [DONE]\n\n"
FINISH_TOOL_CALLS = b"tool_calls"  # the finish_reason of a tool-call answer

_USAGE = (
    b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    b'"prompt_tokens_details":{"cached_tokens":%d,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)

_COMPLETION_HEAD = b'{"id":"'
_COMPLETION_CREATED = b'","object":"chat.completion","created":'
_MODEL = b',"model":'
_COMPLETION_CONTENT = b',"choices":[{"index":0,"message":{"role":"assistant","content":'
_TOOL_CALLS_MESSAGE = b',"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":'
_COMPLETION_FINISH = b',"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"'
_COMPLETION_USAGE = b'"}],"usage":'
_COMPLETION_TAIL = b',"service_tier":"default","system_fingerprint":"fp_sim"}'

_CHUNK_HEAD = b'data: {"id":"'
_CHUNK_CREATED = b'","object":"chat.completion.chunk","created":'
_CHUNK_CHOICES = b',"service_tier":"default","system_fingerprint":"fp_sim","choices":'
_ROLE_CHOICE = (
    b'[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},'
    b'"logprobs":null,"finish_reason":null}]'
)
_PIECE_OPEN = b'[{"index":0,"delta":{"content":'
_PIECE_CLOSE = b'},"logprobs":null,"finish_reason":null}]'
_DELTA_OPEN = b'[{"index":0,"delta":'
_DELTA_CLOSE = b',"logprobs":null,"finish_reason":null}]'
_TOOL_START_FIRST = b'{"role":"assistant","content":null,"tool_calls":[{"index":%d,"id":%s,"type":"function",'
_TOOL_START_NEXT = b'{"tool_calls":[{"index":%d,"id":%s,"type":"function",'
_TOOL_START_NAME = b'"function":{"name":%s,"arguments":""}}]'
_TOOL_ARGUMENTS = b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}'
_FINISH_OPEN = b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"'
_FINISH_CLOSE = b'"}]'
_TAIL_WITH_USAGE_NULL = b',"usage":null}\n\n'
_TAIL = b"}\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> bytes:
    """OpenAI semantics: prompt_tokens includes the cached ones, so cached is clamped to it."""
    cached = min(cached_tokens, prompt_tokens)
    return _USAGE % (prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, cached)


@lru_cache(maxsize=128)
def model_json(model: str) -> bytes:
    return json.dumps(model).encode()


def completion(
    completion_id: bytes, created: int, model: bytes, content: bytes, finish_reason: bytes, usage: bytes
) -> bytes:
    """A non-stream `chat.completion`; `model` and `content` are JSON literals already."""
    return _completion(completion_id, created, model, _COMPLETION_CONTENT + content, finish_reason, usage)


def tool_calls_completion(
    completion_id: bytes, created: int, model: bytes, calls: Sequence[ToolCall], usage: bytes
) -> bytes:
    """A non-stream `chat.completion` whose message is `calls` (content null, finish "tool_calls")."""
    message = _TOOL_CALLS_MESSAGE + _tool_calls_json(calls)
    return _completion(completion_id, created, model, message, FINISH_TOOL_CALLS, usage)


def _completion(
    completion_id: bytes, created: int, model: bytes, message: bytes, finish_reason: bytes, usage: bytes
) -> bytes:
    return b"".join(
        (
            _COMPLETION_HEAD,
            completion_id,
            _COMPLETION_CREATED,
            b"%d" % created,
            _MODEL,
            model,
            message,
            _COMPLETION_FINISH,
            finish_reason,
            _COMPLETION_USAGE,
            usage,
            _COMPLETION_TAIL,
        )
    )


def _literal(text: str) -> bytes:
    return json.dumps(text).encode()


def _tool_calls_json(calls: Sequence[ToolCall]) -> bytes:
    return json.dumps(
        [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in calls
        ],
        separators=(",", ":"),
    ).encode()


class ChunkFrames:
    """The SSE frames of one stream: the per-stream prefix is built once, each frame is a join.

    With `stream_options.include_usage`, OpenAI puts `"usage":null` on every chunk and then sends
    one last chunk with `"choices":[]` and the usage; without it, chunks carry no usage key at all.
    """

    __slots__ = ("_prefix", "_tail")

    def __init__(self, completion_id: bytes, created: int, model: bytes, include_usage: bool) -> None:
        self._prefix = b"".join(
            (_CHUNK_HEAD, completion_id, _CHUNK_CREATED, b"%d" % created, _MODEL, model, _CHUNK_CHOICES)
        )
        self._tail = _TAIL_WITH_USAGE_NULL if include_usage else _TAIL

    def role(self) -> bytes:
        return self._prefix + _ROLE_CHOICE + self._tail

    def piece(self, piece: bytes) -> bytes:
        return b"".join((self._prefix, _PIECE_OPEN, piece, _PIECE_CLOSE, self._tail))

    def tool_call_start(self, index: int, call: ToolCall) -> bytes:
        """Opens tool call `index` (id, name, empty arguments); the first one also carries the role."""
        template = _TOOL_START_FIRST if index == 0 else _TOOL_START_NEXT
        delta = template % (index, _literal(call.id)) + _TOOL_START_NAME % _literal(call.name)
        delta += b',"refusal":null}' if index == 0 else b"}"
        return b"".join((self._prefix, _DELTA_OPEN, delta, _DELTA_CLOSE, self._tail))

    def tool_arguments(self, index: int, fragment: bytes) -> bytes:
        """One `arguments` fragment (a JSON string literal) of tool call `index`."""
        delta = _TOOL_ARGUMENTS % (index, fragment)
        return b"".join((self._prefix, _DELTA_OPEN, delta, _DELTA_CLOSE, self._tail))

    def finish(self, finish_reason: bytes) -> bytes:
        return b"".join((self._prefix, _FINISH_OPEN, finish_reason, _FINISH_CLOSE, self._tail))

    def usage(self, usage: bytes) -> bytes:
        return b"".join((self._prefix, b'[],"usage":', usage, _TAIL))


def models_list(model_id: str) -> bytes:
    model = {"id": model_id, "object": "model", "created": 0, "owned_by": "aigw-simulator"}
    return json.dumps({"object": "list", "data": [model]}).encode()


HEALTHZ = b'{"status":"ok","service":"aigw-simulator"}'
