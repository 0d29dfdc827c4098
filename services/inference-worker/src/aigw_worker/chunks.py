"""The client's JSON for one request's events, serialized once.

Per-token chunks are the hot path, so a content delta is a byte template: the per-request prefix
(id, created, model, fingerprint) is built once and each delta is a join around the JSON-escaped
text. The tests prove every template equals `ChatCompletionChunk(...).model_dump_json(exclude_unset=True)`,
the shape the API models define. Everything else (tool-call deltas, the closing chunks, the
non-stream body) is rare, so it is built through the models themselves.

A request with `n` > 1 gets one chunk per choice, each naming its choice's `index` (as OpenAI
streams them); the prefix of a choice other than the first is built the first time it is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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

    __slots__ = (
        "_head",
        "_heads",
        "_prefix",
        "_tail",
        "created",
        "fingerprint",
        "id",
        "include_usage",
        "model",
    )

    def __init__(self, chunk_id: str, created: int, model: str, include_usage: bool) -> None:
        self.id = chunk_id
        self.created = created
        self.model = model
        self.include_usage = include_usage
        self.fingerprint: str | None = None
        self._prefix = b""
        self._head = b""  # the prefix of choice 0's chunks
        self._heads: dict[int, bytes] = {}  # of the other choices' (n > 1)
        self._tail = _CHOICE_TAIL + (_TAIL_USAGE_NULL if include_usage else _TAIL)

    def begin(self, fingerprint: str | None) -> None:
        self.fingerprint = fingerprint
        self._prefix = b"".join(
            (
                b'{"id":',
                json_string(self.id),
                b',"object":"chat.completion.chunk","created":',
                b"%d" % self.created,
                b',"model":',
                json_string(self.model),
                b',"system_fingerprint":',
                json_string(fingerprint) if fingerprint is not None else b"null",
                b',"choices":[{"index":',
            )
        )
        self._head = self._prefix + b'0,"delta":'
        self._heads = {}

    def _head_of(self, index: int) -> bytes:
        head = self._heads.get(index)
        if head is None:
            head = self._heads[index] = self._prefix + b'%d,"delta":' % index
        return head

    # ------------------------------------------------------------------ deltas (hot path)
    def first(self, text: str, index: int = 0) -> bytes:
        """A choice's first chunk: the assistant role and the text so far (which starts with the prefill)."""
        head = self._head if index == 0 else self._head_of(index)
        return b"".join((head, _ROLE_CONTENT, json_string(text), self._tail))

    def content(self, text: str, index: int = 0) -> bytes:
        head = self._head if index == 0 else self._head_of(index)
        return b"".join((head, _CONTENT, json_string(text), self._tail))

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

    def delta(self, delta: dict[str, Any], logprobs: dict[str, Any] | None = None, index: int = 0) -> bytes:
        """Any other delta (tool calls, refusal, logprobs): fields in the order the model declares."""
        choice = ChunkChoice(
            index=index, delta=ChunkDelta.model_validate(delta), logprobs=logprobs, finish_reason=None
        )
        return self._chunk(choices=[choice]).model_dump_json(exclude_unset=True).encode()

    def final(
        self,
        finish: str | Mapping[int, str],
        usage: Usage,
        context: GenerationContext,
        annotations: list[dict[str, Any]] | Mapping[int, list[dict[str, Any]]] | None = None,
    ) -> bytes:
        """The `final` event: OpenAI's closing chunks, one per line.

        `finish` is the finish reason of choice 0, or of each choice by index (`n` > 1): one finish
        chunk per choice, in index order. With `include_usage`, they carry `usage: null` and the
        usage chunk (`choices: []`) follows, carrying usage and generation_context; without, the
        last finish chunk carries both. Citation `annotations` of the whole answer (choice 0's, or
        each choice's by index) come first, in a delta of their own per choice.
        """
        finishes = {0: finish} if isinstance(finish, str) else dict(sorted(finish.items()))
        cited = {0: annotations} if isinstance(annotations, list) else dict(annotations or {})
        lines = [self.delta({"annotations": a}, index=i).decode() for i, a in sorted(cited.items()) if a]
        choices = [
            ChunkChoice(index=i, delta=ChunkDelta(), logprobs=None, finish_reason=reason)
            for i, reason in finishes.items()
        ]
        if self.include_usage:
            lines.extend(self._chunk(choices=[c]).model_dump_json(exclude_unset=True) for c in choices)
            usage_chunk = self._chunk(choices=[], usage=usage, generation_context=context)
            lines.append(usage_chunk.model_dump_json(exclude_unset=True))
        else:
            lines.extend(self._chunk(choices=[c]).model_dump_json(exclude_unset=True) for c in choices[:-1])
            closing = self._chunk(choices=choices[-1:], usage=usage, generation_context=context)
            lines.append(closing.model_dump_json(exclude_unset=True))
        return "\n".join(lines).encode()


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
