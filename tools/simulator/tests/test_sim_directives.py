"""The `[sim ...]` directive and the knob overrides, as pure functions."""

from __future__ import annotations

import pytest

from aigw_simulator.config import Knobs
from aigw_simulator.directives import parse_directive, resolve_knobs
from aigw_simulator.errors import SimError
from aigw_simulator.prompt import count_prompt_tokens


def test_directive_pairs_and_bare_flags_are_parsed() -> None:
    assert parse_directive("x [sim fault=429 tokens=5 echo] y") == {
        "fault": "429",
        "tokens": "5",
        "echo": "1",
    }
    assert parse_directive("[sim]") == {}


def test_text_that_merely_starts_like_a_directive_is_not_one() -> None:
    assert parse_directive("a [simple] note") is None
    assert parse_directive("unclosed [sim tokens=3") is None
    assert parse_directive("[simple] then [sim tokens=3]") == {"tokens": "3"}


def test_overrides_apply_defaults_then_headers_then_directive() -> None:
    defaults = Knobs(tokens=16, latency_ms=5)
    headers = [(b"x-sim-tokens", b"7"), (b"x-sim-latency-ms", b"10"), (b"x-other", b"1")]
    messages = [
        {"role": "user", "content": "[sim tokens=2 echo=yes]"},
        {"role": "assistant", "content": "ok"},
    ]

    knobs = resolve_knobs(defaults, headers, messages)

    assert (knobs.tokens, knobs.latency_ms, knobs.echo) == (2, 10.0, True)


def test_bad_override_is_a_400_naming_where_it_came_from() -> None:
    with pytest.raises(SimError) as caught:
        resolve_knobs(Knobs(), [(b"x-sim-token-ms", b"-1")], [{"role": "user", "content": "hi"}])
    assert (caught.value.status, caught.value.param) == (400, "x-sim-*")


def test_prompt_tokens_are_words_plus_four_per_message() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two three"}, {"type": "image_url"}]},
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    assert count_prompt_tokens(messages) == (2 + 4) + (3 + 4) + (0 + 4)
