"""The completion text: deterministic, so tests can assert it exactly.

Default mode answers `tokens` words `sim0 sim1 sim2 ...`; each streamed piece is one word with its
leading space (except the first), and `completion_tokens` is the number of words. With `n` > 1,
choice `i` > 0 answers the same number of words suffixed `.i` (`sim0.1 sim1.1 ...`), so every
choice has its own text; echo, reply and tool-call modes give each choice the same kind of answer.

Reply mode (`reply`) answers exactly the given text, in pieces like echo.

Echo mode answers the compact JSON of the received `messages`, so a test can `json.loads` the
reply and see exactly what the gateway sent upstream (instruction order, prefill, injected
passages). It streams in pieces of `ECHO_PIECE_CHARS` characters, and `completion_tokens` is the
number of pieces. Echo ignores max_tokens: truncated JSON would defeat its purpose, and a gateway
that adds a default max_tokens must not break its own tests.

Tool-call mode (the `call` knob) answers with calls of one function tool instead of text. Each call's
`arguments` is the compact JSON `{"query":"<text>"}`; it streams in fragments of up to
`ECHO_PIECE_CHARS` characters (at least 2 per call), and `completion_tokens` is the number of
whitespace-separated words in all the argument strings, like `prompt_tokens` counts the prompt.

The pieces are kept as JSON string literals (bytes), ready to be spliced into response templates.
"""

from __future__ import annotations

import json
import secrets
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


def words(tokens: int, max_tokens: int | None, choice: int = 0) -> Completion:
    """`tokens` words, capped by the request's max_tokens (then finish_reason is "length");
    choice `choice` > 0 of an `n` > 1 answer gets words of its own (`sim0.<choice>` ...)."""
    count, finish = (max_tokens, LENGTH) if max_tokens is not None and max_tokens < tokens else (tokens, STOP)
    if choice == 0:
        return _word_completion(count, finish)
    texts = [f"sim{i}.{choice}" for i in range(count)]
    pieces = tuple(json.dumps(t if i == 0 else " " + t).encode() for i, t in enumerate(texts))
    return Completion(pieces, json.dumps(" ".join(texts)).encode(), finish, count)


def echo(messages: list[dict[str, Any]]) -> Completion:
    text = json.dumps(messages, ensure_ascii=False, separators=(",", ":"))
    pieces = _pieces(text, ECHO_PIECE_CHARS)
    return Completion(pieces, json.dumps(text).encode(), STOP, len(pieces))


def fixed(text: str) -> Completion:
    """Exactly `text` (the `reply` knob), e.g. a ranking a test wants a resolver model to give."""
    pieces = _pieces(text, ECHO_PIECE_CHARS)
    return Completion(pieces, json.dumps(text).encode(), STOP, max(1, len(text.split())))


def _pieces(text: str, size: int) -> tuple[bytes, ...]:
    return tuple(json.dumps(text[i : i + size]).encode() for i in range(0, len(text), size))


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str  # "call_" and 24 random hex digits, like OpenAI's
    name: str
    arguments: str  # JSON text: OpenAI sends the arguments as a string holding JSON

    def fragments(self) -> tuple[bytes, ...]:
        """The streamed `arguments` fragments, JSON string literals; at least 2, like a real model's."""
        return _pieces(self.arguments, max(1, min(ECHO_PIECE_CHARS, len(self.arguments) // 2)))


def tool_calls(name: str, query: str, count: int) -> tuple[ToolCall, ...]:
    """`count` calls of `name` asking for `query`; with count > 1 the i-th query ends in " (i)"."""
    queries = [query] if count == 1 else [f"{query} ({i})".lstrip() for i in range(1, count + 1)]
    return tuple(
        ToolCall(
            "call_" + secrets.token_hex(12),
            name,
            json.dumps({"query": text}, ensure_ascii=False, separators=(",", ":")),
        )
        for text in queries
    )


def tool_call_tokens(calls: tuple[ToolCall, ...]) -> int:
    return sum(len(call.arguments.split()) for call in calls)
