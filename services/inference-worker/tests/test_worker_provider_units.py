"""Provider adapters and the new SKU lines, without I/O: what each rule produces."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from aigw_contracts import Prices, UpstreamTarget, skus
from aigw_contracts.errors import InvalidRequest
from aigw_worker.pricing import add_usage, checked_usage, price_lines
from aigw_worker.providers import ADAPTERS

P = Prices(input=Decimal("0.000003"), output=Decimal("0.000015"), cached_input=Decimal("3E-7"))


def _usage(**details: int) -> Any:
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 20, **details},
    }
    return checked_usage(raw)[0]


def _lines(usage: Any, prices: Prices) -> dict[str, tuple[int, Decimal]]:
    return {line.sku: (line.quantity, line.unit_price) for line in price_lines(usage, prices, "@x/y")}


def test_cache_writes_are_their_own_lines_at_their_price() -> None:
    prices = P.model_copy(
        update={"cache_write": Decimal("0.00000375"), "cache_write_1h": Decimal("0.000006")}
    )
    lines = _lines(_usage(cache_write_tokens=30, cache_write_1h_tokens=5), prices)
    assert lines == {
        skus.CHAT_IN: (100 - 20 - 30 - 5, P.input),
        skus.CHAT_OUT: (10, P.output),
        skus.CHAT_IN_CACHED: (20, P.cached_input),
        skus.CHAT_IN_CACHE_WRITE: (30, Decimal("0.00000375")),
        skus.CHAT_IN_CACHE_WRITE_1H: (5, Decimal("0.000006")),
    }


def test_a_cache_write_without_a_price_of_its_own_is_billed_as_input_never_free() -> None:
    lines = _lines(_usage(cache_write_tokens=30, cache_write_1h_tokens=5), P)
    assert lines[skus.CHAT_IN] == (80, P.input)
    assert skus.CHAT_IN_CACHE_WRITE not in lines and skus.CHAT_IN_CACHE_WRITE_1H not in lines
    # a one-hour write without its own price is priced as a five-minute write
    only_5m = P.model_copy(update={"cache_write": Decimal("0.00000375")})
    assert _lines(_usage(cache_write_1h_tokens=5), only_5m)[skus.CHAT_IN_CACHE_WRITE] == (
        5,
        Decimal("0.00000375"),
    )


def test_reasoning_is_output_unless_the_provider_prices_it_apart() -> None:
    raw = {"prompt_tokens": 5, "completion_tokens": 10, "completion_tokens_details": {"reasoning_tokens": 4}}
    usage = checked_usage(raw)[0]
    assert _lines(usage, P)[skus.CHAT_OUT] == (10, P.output)
    apart = _lines(usage, P.model_copy(update={"reasoning": Decimal("0.00001")}))
    assert apart[skus.CHAT_OUT] == (6, P.output) and apart[skus.CHAT_OUT_REASONING] == (4, Decimal("0.00001"))


def test_a_tool_loops_rounds_add_their_cache_writes_and_reasoning() -> None:
    a = checked_usage(
        {
            "prompt_tokens": 50,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 40},
            "completion_tokens_details": {"reasoning_tokens": 2},
        }
    )[0]
    b = _usage(cache_write_tokens=3)
    assert a is not None and b is not None
    both = add_usage(a, b)
    assert both.prompt_tokens_details.model_extra == {"cache_write_tokens": 43}
    assert both.model_extra is not None and both.model_extra["completion_tokens_details"] == {
        "reasoning_tokens": 2
    }


def _target(api: str) -> UpstreamTarget:
    return UpstreamTarget(
        id="@p/m", kind="catalog", provider="p", model="m", base_url="https://h/v1", prices=P, api=api
    )


def _anthropic(body: dict[str, Any]) -> dict[str, Any]:
    prepared = ADAPTERS["anthropic"].prepare(_target("anthropic"), body, False)
    return dict(json.loads(prepared.body))


MESSAGES = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
    ],
)
def test_anthropic_tool_choice(choice: Any, parallel: Any, expected: dict[str, Any]) -> None:
    body: dict[str, Any] = {"messages": MESSAGES, "tools": [TOOL], "tool_choice": choice}
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert _anthropic(body)["tool_choice"] == expected


def test_anthropic_max_tokens_is_always_sent_and_thinking_fits_inside_it() -> None:
    assert _anthropic({"messages": MESSAGES})["max_tokens"] == 4096
    assert _anthropic({"messages": MESSAGES, "max_completion_tokens": 77})["max_tokens"] == 77
    thinking = _anthropic({"messages": MESSAGES, "reasoning_effort": "medium", "temperature": 0.2})
    assert thinking["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert thinking["max_tokens"] > 4096 and "temperature" not in thinking  # Anthropic requires it
    small = _anthropic({"messages": MESSAGES, "reasoning_effort": "high", "max_tokens": 3000})
    assert small["thinking"]["budget_tokens"] < small["max_tokens"]
    with pytest.raises(InvalidRequest) as refused:
        _anthropic({"messages": MESSAGES, "reasoning_effort": "low", "max_tokens": 500})
    assert refused.value.param == "reasoning_effort"


def test_anthropic_keeps_cache_control_marks_and_joins_system_messages() -> None:
    body = _anthropic(
        {
            "messages": [
                {
                    "role": "system",
                    "content": [{"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}],
                },
                {"role": "developer", "content": "more"},
                {"role": "user", "content": "hi"},
                {"role": "user", "content": "again"},
            ]
        }
    )
    assert body["system"] == [
        {"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "more"},
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "again"}]}
    ]


@pytest.mark.parametrize("api", ["anthropic", "gemini"])
def test_an_unknown_parameter_is_a_400_naming_it_never_silently_sent(api: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        ADAPTERS[api].prepare(_target(api), {"messages": MESSAGES, "web_search": True}, False)
    assert refused.value.param == "web_search"


def test_gemini_request_shape() -> None:
    prepared = ADAPTERS["gemini"].prepare(
        _target("gemini"),
        {
            "messages": [{"role": "system", "content": "be brief"}, *MESSAGES],
            "temperature": 0.1,
            "max_tokens": 9,
            "stop": "END",
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "response_format": {
                "type": "json_schema",
                "json_schema": {"schema": {"type": "object", "additionalProperties": False}},
            },
        },
        True,
    )
    assert prepared.path == "models/m:streamGenerateContent?alt=sse"
    body = json.loads(prepared.body)
    assert body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    assert body["generationConfig"] == {
        "temperature": 0.1,
        "maxOutputTokens": 9,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseSchema": {"type": "object"},
    }
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}}


def test_azure_url_and_key_header() -> None:
    target = _target("azure").model_copy(
        update={"base_url": "https://r.openai.azure.com/openai?api-version=2025-01-01-preview"}
    )
    prepared = ADAPTERS["azure"].prepare(target, {"messages": MESSAGES}, False)
    assert prepared.base == "https://r.openai.azure.com/openai"
    assert prepared.path == "deployments/m/chat/completions?api-version=2025-01-01-preview"
    assert ADAPTERS["azure"].auth("k") == [(b"api-key", b"k")]


@pytest.mark.parametrize("api", ["gemini", "bedrock"])
def test_parallel_tool_calls_off_is_refused_where_it_cannot_be_turned_off(api: str) -> None:
    body = {"messages": MESSAGES, "tools": [TOOL], "parallel_tool_calls": False}
    with pytest.raises(InvalidRequest) as refused:
        ADAPTERS[api].prepare(_target(api), body, False)
    assert refused.value.param == "parallel_tool_calls"
    ADAPTERS[api].prepare(_target(api), {**body, "parallel_tool_calls": True}, False)  # their default


def test_anthropic_thinks_no_more_on_a_call_continuing_a_tool_turn() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    turn = [
        *MESSAGES,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]
    continuing = _anthropic({"messages": turn, "tools": [TOOL], "reasoning_effort": "low"})
    assert "thinking" not in continuing
    fresh = _anthropic(
        {
            "messages": [
                *turn,
                {"role": "assistant", "content": "done"},
                {"role": "user", "content": "more"},
            ],
            "tools": [TOOL],
            "reasoning_effort": "low",
        }
    )
    assert fresh["thinking"]["budget_tokens"] == 1024
