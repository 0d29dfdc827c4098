"""Answers with several choices (`n`) or token logprobs: the general path, built with `json.dumps`.

The byte templates of `responses.py` stay the hot path (one choice, no logprobs: what benchmarks
send); this path is for tests of what a gateway does with `n` and `logprobs`, so it favours being
obviously OpenAI's shape over speed.

Shapes, as OpenAI sends them:
- non-stream: `choices` holds one entry per choice (`index` 0..n-1), each with its own message,
  `finish_reason` and, when asked for, `logprobs: {"content": [...], "refusal": null}`; `usage`
  counts every choice's completion tokens.
- stream: each choice's role chunk first (in index order), then the choices' pieces interleaved
  (piece 0 of every choice, then piece 1, ...: a gateway must keep them apart by `index`), then a
  finish chunk per choice, the usage chunk (with `include_usage`) and `[DONE]`. With logprobs, each
  content chunk carries the logprobs of its one token.

Logprobs are plausible, not meaningful: each streamed piece is a token, its probability is between
0.5 and 0.9 (derived from the token and its position, so the same answer gets the same numbers),
and the `top_logprobs` alternatives (the token itself first, then `<token>~1`, `<token>~2`, ...)
share the rest of the probability mass, decreasing, never summing above 1.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aigw_simulator.generation import Completion, ToolCall

_FINGERPRINT = "fp_sim"


@dataclass(frozen=True, slots=True)
class SimChoice:
    """One choice's answer: text (`completion`) or tool calls (`calls`)."""

    index: int
    completion: Completion | None = None
    calls: tuple[ToolCall, ...] = ()
    tokens: int = 0

    @property
    def finish_reason(self) -> str:
        return self.completion.finish_reason.decode() if self.completion is not None else "tool_calls"


def _top(token: str, logprob: float, alternatives: int) -> list[dict[str, Any]]:
    """The token itself, then `alternatives - 1` others sharing what probability is left, halving."""
    if alternatives <= 0:
        return []
    rest = 1.0 - math.exp(logprob)
    out = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    for j in range(1, alternatives):
        alt = f"{token}~{j}"
        out.append({"token": alt, "logprob": math.log(rest / 2**j), "bytes": list(alt.encode())})
    return out


def token_logprob(token: str, position: int, alternatives: int) -> dict[str, Any]:
    """One token's logprobs entry, as OpenAI reports it."""
    probability = 0.5 + (zlib.crc32(f"{position}:{token}".encode()) % 400) / 1000
    logprob = math.log(probability)
    return {
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
        "top_logprobs": _top(token, logprob, alternatives),
    }


def _pieces_text(completion: Completion) -> list[str]:
    return [json.loads(piece) for piece in completion.pieces]


def _logprobs(completion: Completion | None, top: int | None) -> dict[str, Any] | None:
    if top is None:
        return None
    tokens = _pieces_text(completion) if completion is not None else []
    return {"content": [token_logprob(t, i, top) for i, t in enumerate(tokens)], "refusal": None}


def _calls_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _message(choice: SimChoice) -> dict[str, Any]:
    if choice.completion is not None:
        content: Any = json.loads(choice.completion.content)
        return {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": _calls_json(choice.calls),
        "refusal": None,
        "annotations": [],
    }


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def completion_body(
    completion_id: str, created: int, model: str, choices: Sequence[SimChoice], usage: bytes, top: int | None
) -> bytes:
    """A non-stream `chat.completion` with every choice (and its logprobs when `top` is not None)."""
    return _dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": c.index,
                    "message": _message(c),
                    "logprobs": _logprobs(c.completion, top),
                    "finish_reason": c.finish_reason,
                }
                for c in choices
            ],
            "usage": json.loads(usage),
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
    )


class StreamFrames:
    """The SSE frames of a general stream; `frames` gives (first, body, end) as `app._stream` sends them."""

    def __init__(
        self, completion_id: str, created: int, model: str, include_usage: bool, top: int | None
    ) -> None:
        self._head = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
        self.include_usage = include_usage
        self.top = top

    def _frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk: dict[str, Any] = {**self._head, "choices": choices}
        if self.include_usage:
            chunk["usage"] = None
        chunk.update(extra)
        return b"data: " + _dumps(chunk) + b"\n\n"

    def _choice(
        self, index: int, delta: dict[str, Any], logprobs: Any = None, finish: str | None = None
    ) -> bytes:
        return self._frame([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])

    def _text(self, choice: SimChoice) -> tuple[bytes, list[bytes]]:
        assert choice.completion is not None
        first = self._choice(choice.index, {"role": "assistant", "content": "", "refusal": None})
        body = []
        for position, token in enumerate(_pieces_text(choice.completion)):
            logprobs = None
            if self.top is not None:
                logprobs = {"content": [token_logprob(token, position, self.top)], "refusal": None}
            body.append(self._choice(choice.index, {"content": token}, logprobs))
        return first, body

    def _calls(self, choice: SimChoice) -> tuple[bytes, list[bytes]]:
        def opened(i: int, call: ToolCall) -> dict[str, Any]:
            fn = {"name": call.name, "arguments": ""}
            return {"index": i, "id": call.id, "type": "function", "function": fn}

        calls = choice.calls
        first_delta = {
            "role": "assistant",
            "content": None,
            "tool_calls": [opened(0, calls[0])],
            "refusal": None,
        }
        first = self._choice(choice.index, first_delta)
        body: list[bytes] = []
        for i, call in enumerate(calls):
            if i:
                body.append(self._choice(choice.index, {"tool_calls": [opened(i, call)]}))
            for fragment in call.fragments():
                delta = {"tool_calls": [{"index": i, "function": {"arguments": json.loads(fragment)}}]}
                body.append(self._choice(choice.index, delta))
        return first, body

    def frames(self, choices: Sequence[SimChoice], usage: bytes) -> tuple[bytes, list[bytes], list[bytes]]:
        firsts: list[bytes] = []
        bodies: list[list[bytes]] = []
        for choice in choices:
            first, body = self._text(choice) if choice.completion is not None else self._calls(choice)
            firsts.append(first)
            bodies.append(body)
        interleaved = [b for step in _round_robin(bodies) for b in step]
        end = [self._choice(c.index, {}, None, c.finish_reason) for c in choices]
        if self.include_usage:
            end.append(
                b"data: " + _dumps({**self._head, "choices": [], "usage": json.loads(usage)}) + b"\n\n"
            )
        end.append(b"data: [DONE]\n\n")
        return b"".join(firsts), interleaved, end


def _round_robin(bodies: list[list[bytes]]) -> list[list[bytes]]:
    """Piece 0 of every choice, then piece 1 of every choice that has one, and so on."""
    longest = max((len(b) for b in bodies), default=0)
    return [[b[i] for b in bodies if i < len(b)] for i in range(longest)]
