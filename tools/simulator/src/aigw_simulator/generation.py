"""The completion text: deterministic, so tests can assert it exactly.

Default mode answers `tokens` words `sim0 sim1 sim2 ...`; each streamed piece is one word with its
leading space (except the first), and `completion_tokens` is the number of words.

Echo mode answers the compact JSON of the received `messages`, so a test can `json.loads` the
reply and see exactly what the gateway sent upstream (instruction order, prefill, injected
passages). It streams in pieces of `ECHO_PIECE_CHARS` characters, and `completion_tokens` is the
number of pieces. Echo ignores max_tokens: truncated JSON would defeat its purpose, and a gateway
that adds a default max_tokens must not break its own tests.

The pieces are kept as JSON string literals (bytes), ready to be spliced into response templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

ECHO_PIECE_CHARS = 8
STOP = b"stop"
LENGTH = b"length"

# Word pieces are precomputed up to a length no sane test or benchmark exceeds; beyond it they are
# built on demand.
_PRECOMPUTED_WORDS = 4096
_WORD_PIECES = tuple(b'"sim0"' if i == 0 else b'" sim%d"' % i for i in range(_PRECOMPUTED_WORDS))


@dataclass(frozen=True, slots=True)
class Completion:
    pieces: tuple[bytes, ...]  # streamed pieces, each a JSON string literal
    content: bytes  # the whole content as one JSON string literal
    finish_reason: bytes
    completion_tokens: int


def word_pieces(count: int) -> tuple[bytes, ...]:
    if count <= _PRECOMPUTED_WORDS:
        return _WORD_PIECES[:count]
    return _WORD_PIECES + tuple(b'" sim%d"' % i for i in range(_PRECOMPUTED_WORDS, count))


@lru_cache(maxsize=256)
def _word_completion(count: int, finish_reason: bytes) -> Completion:
    # Cached: a benchmark sends the same shape over and over, so its bytes are built once.
    content = b'"' + b" ".join(b"sim%d" % i for i in range(count)) + b'"'
    return Completion(word_pieces(count), content, finish_reason, count)


def words(tokens: int, max_tokens: int | None) -> Completion:
    """`tokens` words, capped by the request's max_tokens (then finish_reason is "length")."""
    if max_tokens is not None and max_tokens < tokens:
        return _word_completion(max_tokens, LENGTH)
    return _word_completion(tokens, STOP)


def echo(messages: list[dict[str, Any]]) -> Completion:
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    pieces = tuple(
        json.dumps(text[i : i + ECHO_PIECE_CHARS]).encode() for i in range(0, len(text), ECHO_PIECE_CHARS)
    )
    return Completion(pieces, json.dumps(text).encode(), STOP, len(pieces))
