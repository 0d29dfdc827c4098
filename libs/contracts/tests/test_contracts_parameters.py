"""Request parameters: one rule for each (in code and in the README alike), and what OpenAI requires
of each message role, reported where OpenAI reports it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from aigw_contracts import ChatCompletionRequest
from aigw_contracts.api import (
    DEFAULT_OVERRIDABLE,
    INFERENCE_PARAMETERS,
    PARAMETERS,
    PASS_THROUGH,
    PUBLIC_KEY_PARAMETERS,
    Parameter,
)
from aigw_contracts.config import Gateway

README = Path(__file__).resolve().parents[3] / "README.md"


def _label(rule: Parameter) -> str:
    if rule.handling == "policy":
        if rule.public:
            return "policy: overridable, public keys too"
        return "policy: overridable" if rule.overridable else "policy: locked"
    return {"pass": "passed through", "gateway": "gateway", "refused": "400"}[rule.handling]


def _readme_rules() -> dict[str, str]:
    text = README.read_text()
    section = text.split("### Request parameters", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+?) \|", section, flags=re.MULTILINE)
    assert len(rows) == len({name for name, _ in rows}), "a parameter is listed twice"
    return dict(rows)


def test_every_request_field_has_exactly_one_rule() -> None:
    assert set(PARAMETERS) == set(ChatCompletionRequest.model_fields)


def test_the_readme_table_states_each_parameters_rule_as_the_code_applies_it() -> None:
    assert _readme_rules() == {name: _label(rule) for name, rule in PARAMETERS.items()}


def test_the_policy_lists_derive_from_the_one_table() -> None:
    assert set(DEFAULT_OVERRIDABLE) <= set(INFERENCE_PARAMETERS)
    assert {"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop"} == PUBLIC_KEY_PARAMETERS
    assert {"n", "logprobs", "top_logprobs", "logit_bias"} <= DEFAULT_OVERRIDABLE
    assert set(PASS_THROUGH).isdisjoint(INFERENCE_PARAMETERS)
    gateway = Gateway(id="01990000-0000-7000-8000-000000000001", name="g", tenant="t", upstream="@x/y")
    assert {
        name for name in INFERENCE_PARAMETERS if gateway.rule(name).mode == "default"
    } == DEFAULT_OVERRIDABLE


def _error(body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as err:
        ChatCompletionRequest.model_validate({"model": "m", **body})
    first: dict[str, Any] = dict(err.value.errors()[0])
    return first


CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("messages", "loc", "kind"),
    [
        ([{"role": "user"}], ("messages", 0, "content"), "missing"),
        ([{"role": "system"}, {"role": "user", "content": "q"}], ("messages", 0, "content"), "missing"),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant"}],
            ("messages", 1, "content"),
            "invalid_value",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "content": "r"},
            ],
            ("messages", 2, "tool_call_id"),
            "missing",
        ),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f"}}]},
            ],
            ("messages", 1, "tool_calls", 0, "function", "arguments"),
            "missing",
        ),
        (
            [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": []}],
            ("messages", 1, "tool_calls"),
            "invalid_value",
        ),
        (
            [{"role": "user", "content": "q", "tool_calls": [CALL]}],
            ("messages", 0, "tool_calls"),
            "invalid_value",
        ),
        ([{"role": "user", "content": [{"type": "text"}]}], ("messages", 0, "content", 0, "text"), "missing"),
        (
            [{"role": "developer", "content": [{"type": "image_url"}]}],
            ("messages", 0, "content", 0, "type"),
            "invalid_value",
        ),
    ],
)
def test_each_role_gets_what_openai_requires_of_it(
    messages: list[dict[str, Any]], loc: tuple[Any, ...], kind: str
) -> None:
    error = _error({"messages": messages})
    assert (error["loc"], error["type"]) == (loc, kind)


def test_a_complete_tool_exchange_and_an_assistant_with_only_tool_calls_are_fine() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [CALL, {**CALL, "id": "c2"}]},
                {"role": "tool", "tool_call_id": "c2", "content": "r2"},
                {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r1"}]},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
        }
    )
    assert len(request.messages) == 6


@pytest.mark.parametrize(
    ("tools", "loc"),
    [
        ([{"type": "function"}], ("tools", 0, "function")),
        ([{"function": {"name": "f"}}], ("tools", 0, "type")),
        (
            [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {}}],
            ("tools", 1, "function", "name"),
        ),
        (
            [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
            ("tools", 0, "function", "parameters"),
        ),
        ([{"type": "retrieval"}], ("tools", 0, "type")),
    ],
)
def test_a_tool_without_what_makes_it_callable_is_named(tools: list[Any], loc: tuple[Any, ...]) -> None:
    assert _error({"messages": [{"role": "user", "content": "q"}], "tools": tools})["loc"] == loc


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"logit_bias": {"the": 1}}, "logit_bias"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"stream": True, "stream_options": {"include_usage": True, "chunk_size": 2}}, "stream_options"),
    ],
)
def test_parameters_the_gateway_cannot_honour_are_refused_by_name(extra: dict[str, Any], param: str) -> None:
    error = _error({"messages": [{"role": "user", "content": "q"}], **extra})
    assert error["loc"][0] == param


def test_accepted_values_of_the_gateways_own_rules() -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "q"}],
            "store": False,
            "service_tier": "auto",
            "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": True},
            "n": 128,
        }
    )
    assert request.include_usage and request.n == 128


def test_top_logprobs_needs_logprobs() -> None:
    error = _error({"messages": [{"role": "user", "content": "q"}], "top_logprobs": 2})
    assert "'top_logprobs' needs 'logprobs'" in error["msg"]
    _error({"messages": [{"role": "user", "content": "q"}], "top_logprobs": 2, "logprobs": False})
