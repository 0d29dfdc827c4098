"""Per-request overrides of the behaviour knobs, from headers and from the prompt itself.

Two forms, later winning over earlier:

1. a request header `x-sim-<knob>: <value>` (`-` and `_` are interchangeable in the name), e.g.
   `x-sim-fault: 429`, `x-sim-latency-ms: 10`;
2. a directive anywhere in the text of the LAST user message:
   `[sim fault=429 tokens=5 echo=1 latency_ms=10 token_ms=2 drop_after=3]` (a bare `echo` means
   `echo=1`).

Tool calls: `[sim call=knowledge_search calls=2]` answers with `calls` parallel calls of the function
tool `knowledge_search` (the request must offer it in `tools`, else 400), each with the arguments
`{"query":"<the last user message without its directives> (<i>)"}` (no ` (<i>)` when calls=1). Once
the last message is a `tool` result, the same directive answers normally (words, or `echo`), so
`[sim call=knowledge_search echo]` gives a tool call, then the echo of what came back.

Why the second form: the gateway forwards message text upstream but not arbitrary client headers,
so end-to-end tests steer the simulator through the prompt. Unknown knobs and bad values are a 400,
so a typo in a test fails loudly instead of silently testing the default behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from aigw_simulator.config import FAULTS, FUNCTION_NAME, Knobs
from aigw_simulator.errors import bad_request
from aigw_simulator.prompt import last_user_text

_HEADER_PREFIX = b"x-sim-"
_OPEN = "[sim"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# A whole directive, for removal: "[sim" followed by whitespace or "]", up to the first "]".
_DIRECTIVE = re.compile(r"\[sim(?=[\s\]])[^\]]*\]")


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be >= 0")
    return number


def _millis(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also rejects nan
        raise ValueError("must be >= 0")
    return number


def _fault(value: str) -> str | None:
    lowered = value.strip().lower()
    if lowered in ("", "none", "0", "off"):
        return None
    if lowered not in FAULTS:
        raise ValueError(f"expected one of {', '.join(FAULTS)} or none")
    return lowered


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError("must be >= 1")
    return number


def _text(value: str) -> str | None:
    return value or None


def _function(value: str) -> str | None:
    name = value.strip()
    if name.lower() in ("", "none"):
        return None
    if not FUNCTION_NAME.fullmatch(name):
        raise ValueError("expected a function name (letters, digits, _ or -, at most 64) or none")
    return name


# One parser per knob; also used for env vars and CLI flags so every source accepts the same values.
PARSERS: dict[str, Callable[[str], Any]] = {
    "latency_ms": _millis,
    "token_ms": _millis,
    "tokens": _count,
    "cached_tokens": _count,
    "cache_write": _count,
    "cache_write_1h": _count,
    "fault": _fault,
    "echo": _flag,
    "reply": _text,
    "drop_after": _count,
    "retry_after": _count,
    "call": _function,
    "calls": _positive,
    "fault_model": _text,
    "fault_times": _count,
}


def parse_knob(name: str, value: str) -> Any:
    """Parse one knob value; raises ValueError naming the knob."""
    parser = PARSERS.get(name)
    if parser is None:
        raise ValueError(f"unknown knob {name!r} (known: {', '.join(PARSERS)})")
    try:
        return parser(value)
    except ValueError as exc:
        raise ValueError(f"bad value {value!r} for {name}: {exc}") from None


def apply_overrides(knobs: Knobs, overrides: Mapping[str, str], param: str) -> Knobs:
    """`knobs` with `overrides` applied; a bad override is a 400 naming `param`."""
    try:
        changes = {name: parse_knob(name, value) for name, value in overrides.items()}
    except ValueError as exc:
        raise bad_request(f"Invalid simulator override: {exc}.", param=param) from None
    return replace(knobs, **changes)


def parse_directive(text: str) -> dict[str, str] | None:
    """The `name=value` pairs of the first `[sim ...]` directive in `text`, or None if there is none."""
    start = text.find(_OPEN)
    while start != -1:
        body_start = start + len(_OPEN)
        end = text.find("]", body_start)
        if end == -1:
            return None
        body = text[body_start:end]
        if not body or body[0].isspace():  # "[sim" must be a whole word: not "[simple]"
            pairs: dict[str, str] = {}
            for item in body.split():
                name, sep, value = item.partition("=")
                pairs[name] = value if sep else "1"
            return pairs
        start = text.find(_OPEN, body_start)
    return None


def strip_directives(text: str) -> str:
    """`text` with every `[sim ...]` directive removed and the ends stripped of whitespace."""
    return _DIRECTIVE.sub("", text).strip()


def header_overrides(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {
        name[len(_HEADER_PREFIX) :].decode("latin-1").replace("-", "_"): value.decode("latin-1")
        for name, value in headers
        if name.startswith(_HEADER_PREFIX)
    }


def resolve_knobs(
    defaults: Knobs, headers: Iterable[tuple[bytes, bytes]], messages: list[dict[str, Any]]
) -> Knobs:
    """The knobs for one request: process defaults, then headers, then the prompt directive."""
    return knobs_for_text(defaults, headers, last_user_text(messages), "messages")


def knobs_for_text(defaults: Knobs, headers: Iterable[tuple[bytes, bytes]], text: str, param: str) -> Knobs:
    """Process defaults, then headers, then the directive in `text` (a bad one a 400 on `param`)."""
    knobs = defaults
    from_headers = header_overrides(headers)
    if from_headers:
        knobs = apply_overrides(knobs, from_headers, "x-sim-*")
    if _OPEN in text:  # the cheap test first: most prompts carry no directive
        directive = parse_directive(text)
        if directive:
            knobs = apply_overrides(knobs, directive, param)
    return knobs
