"""What the simulator does: process settings and the per-request behaviour knobs.

`Knobs` is the behaviour of one request. The process starts with a default set (CLI flags / env), and
each request may override any knob with an `x-sim-<name>` header or a `[sim name=value]` directive
in its last user message (see `directives.py`). The knob names are the same in all three places.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# The faults a request can ask for. Status-code faults are named by their status so the outcome
# recorded in /sim/requests reads the same as the response the client saw.
# `stall`: the answer starts (a stream's first `drop_after` tokens; a whole answer's headers), then
# nothing more comes until the client leaves. `malformed`: a 200 whose body is not what it should be
# (a stream's first event is not JSON; a whole answer is cut JSON).
# Provider faults (`providers.py` answers them in each provider's own shape; the OpenAI route too):
# `overloaded` (Anthropic's 529, Gemini's and OpenAI's 503), `context` (the prompt is longer than
# the context window: a 400), `safety` (the provider's filter blocks the prompt), `stream_error`
# (a stream sends `drop_after` tokens, then the provider's error event).
FAULTS = (
    "429",
    "500",
    "hang",
    "drop",
    "stall",
    "malformed",
    "overloaded",
    "context",
    "safety",
    "stream_error",
)

MODEL_ID = "sim-model"

# OpenAI's rule for a function tool's name.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Knobs:
    """Behaviour of one request; frozen so the process defaults can be shared by every request."""

    latency_ms: float = 0.0  # time to first byte (applies to errors and faults too)
    token_ms: float = 0.0  # time between streamed tokens; non-stream waits tokens * token_ms in total
    tokens: int = 16  # completion length in words, before max_tokens caps it
    cached_tokens: int = 0  # reported as prompt_tokens_details.cached_tokens, clamped to prompt_tokens
    # Prompt tokens reported as written to the provider's cache (Anthropic's cache_creation tokens;
    # `cache_write_1h` of them as one-hour writes), clamped to what is left of the prompt.
    cache_write: int = 0
    cache_write_1h: int = 0
    fault: str | None = None  # one of FAULTS, or None for a normal answer
    echo: bool = False  # answer with the JSON of the received messages instead of words
    reply: str | None = None  # answer with exactly this text (no whitespace: directives split on it)
    drop_after: int = 3  # with fault="drop": tokens streamed before the connection is cut
    retry_after: int = 1  # with fault="429": the Retry-After header, in seconds
    call: str | None = None  # answer with a call of this function tool until a tool result comes back
    calls: int = 1  # with call: how many parallel tool calls to emit
    # Scoping a fault (to test retries and fallbacks, whose requests carry the same prompt):
    fault_model: str | None = None  # the fault applies only to requests for this model
    fault_times: int = 0  # the fault applies to the first N requests with this last message; 0: all

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault must be one of {', '.join(FAULTS)} (or none), got {self.fault!r}")
        for name in (
            "latency_ms",
            "token_ms",
            "tokens",
            "cached_tokens",
            "cache_write",
            "cache_write_1h",
            "drop_after",
            "retry_after",
            "fault_times",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.call is not None and not FUNCTION_NAME.fullmatch(self.call):
            raise ValueError(
                f"call must be a function name (letters, digits, _ or -, at most 64), got {self.call!r}"
            )
        if self.calls < 1:
            raise ValueError("calls must be >= 1")


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Process settings. `defaults` is the behaviour of a request that overrides nothing."""

    host: str = "127.0.0.1"
    port: int = 8900  # 0 picks a free port; the ready log line reports the real one
    require_key: str | None = None  # when set, /v1/* answers 401 unless `Authorization: Bearer <key>`
    history_size: int = 1000  # requests kept for GET /sim/requests; 0 turns recording off
    model_id: str = MODEL_ID  # the one model GET /v1/models lists
    log_level: str = "warning"
    defaults: Knobs = field(default_factory=Knobs)

    def __post_init__(self) -> None:
        if self.history_size < 0:
            raise ValueError("history_size must be >= 0")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
