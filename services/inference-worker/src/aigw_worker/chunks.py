"""The client's JSON for one request's events, serialized once.

Per-token chunks are the hot path, so a content delta is a byte template: the per-request prefix
(id, created, model, fingerprint) is built once and each delta is a join around the JSON-escaped
text. The tests prove every template equals `ChatCompletionChunk(...).model_dump_json(exclude_unset=True)`,
the shape the API models define. Everything else (tool-call deltas, the closing chunks, the
non-stream body) is rare, so it is built through the models themselves.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any

from aigw_contracts import GenerationContext, Usage
from aigw_contracts.api import ChatCompletionChunk, ChunkChoice, ChunkDelta

CHUNK = "chat.completion.chunk"

_ROLE_CONTENT = b'{"role":"assistant","content":'
_CONTENT = b'{"content":'
_CHOICE_TAIL = b'},"logprobs":null,"finish_reason":null}]'
_TAIL_USAGE_NULL = b',"usage":null}'
_TAIL = b"}"


def json_string(text: str) -> bytes:
    """`text` as a JSON string literal, escaped as pydantic escapes it (UTF-8, control chars only)."""
    try:
        return encode_basestring(text).encode()
    except UnicodeEncodeError:  # a lone surrogate from the upstream's own escapes: keep it escaped
        return encode_basestring_ascii(text).encode()


class ChunkWriter:
    """Builds one stream's chunks. `begin` fixes the prefix once the upstream's fingerprint is known."""

    __slots__ = ("_head", "_tail", "created", "fingerprint", "id", "include_usage", "model")

    def __init__(self, chunk_id: str, created: int, model: str, include_usage: bool) -> None:
        self.id = chunk_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.fingerprint: str | None = None
        self._head = b""
        self._tail = _CHOICE_TAIL + (_TAIL_USAGE_NULL if include_usage else _TAIL)

    def begin(self, fingerprint: str | None) -> None:
        self.fingerprint = fingerprint
        self._head = b"".join(
            (
                b'{"id":',
                json_string(self.id),
                b',"object":"chat.completion.chunk","created":',
                b"%d" % self.created,
                b',"model":',
                json_string(self.model),
                b',"system_fingerprint":',
                json_string(fingerprint) if fingerprint is not None else b"null",
                b',"choices":[{"index":0,"delta":',
            )
        )

    # ------------------------------------------------------------------ deltas (hot path)
    def first(self, text: str) -> bytes:
        """The first chunk: the assistant role and the text so far (which starts with the prefill)."""
        return b"".join((self._head, _ROLE_CONTENT, json_string(text), self._tail))

    def content(self, text: str) -> bytes:
        return b"".join((self._head, _CONTENT, json_string(text), self._tail))

    # ------------------------------------------------------------------ rarer chunks, through the models
    def _chunk(self, **fields: Any) -> ChatCompletionChunk:
        extra: dict[str, Any] = {"usage": None} if self.include_usage else {}
        extra.update(fields)
        return ChatCompletionChunk(
            id=self.id,
            object=CHUNK,
            created=self.created,
            model=self.model,
            system_fingerprint=self.fingerprint,
            **extra,
        )

    def delta(self, delta: dict[str, Any], logprobs: dict[str, Any] | None = None) -> bytes:
        """Any other delta (tool calls, refusal, logprobs): fields in the order the model declares."""
        choice = ChunkChoice(
            index=0, delta=ChunkDelta.model_validate(delta), logprobs=logprobs, finish_reason=None
        )
        return self._chunk(choices=[choice]).model_dump_json(exclude_unset=True).encode()

    def final(
        self,
        finish_reason: str,
        usage: Usage,
        context: GenerationContext,
        annotations: list[dict[str, Any]] | None = None,
    ) -> bytes:
        """The `final` event: OpenAI's closing chunks, one per line.

        With `include_usage`: the finish chunk (`usage: null`), then the usage chunk (`choices: []`)
        carrying usage and generation_context. Without: one finish chunk carrying both. Citation
        `annotations` of the whole answer come first, in a delta of their own.
        """
        head = self.delta({"annotations": annotations}).decode() + "\n" if annotations else ""
        finish = ChunkChoice(index=0, delta=ChunkDelta(), logprobs=None, finish_reason=finish_reason)
        if self.include_usage:
            closing = self._chunk(choices=[finish]).model_dump_json(exclude_unset=True)
            usage_chunk = self._chunk(choices=[], usage=usage, generation_context=context)
            return (head + closing + "\n" + usage_chunk.model_dump_json(exclude_unset=True)).encode()
        chunk = self._chunk(choices=[finish], usage=usage, generation_context=context)
        return (head + chunk.model_dump_json(exclude_unset=True)).encode()


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
