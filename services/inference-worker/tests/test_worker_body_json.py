"""The OpenAI adapter writes upstream bodies with pydantic-core (`providers.base.body_json`): the
upstream must receive exactly the JSON value the stdlib's `dumps` gave, and what `dumps` refused
must still be refused the same way."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from aigw_contracts import Prices, UpstreamTarget
from aigw_worker.providers import ADAPTERS
from aigw_worker.providers.base import body_json, dumps

TARGET = UpstreamTarget(
    id="@p/m",
    kind="catalog",
    provider="p",
    model="m",
    base_url="https://h/v1",
    prices=Prices(input=Decimal("0.000003"), output=Decimal("0.000015")),
    api="openai",
)

BODIES: list[Any] = [
    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16},
    {
        "messages": [{"role": "user", "content": 'é ü 中文 🙂 \u2028 " \\ \n \t \x00 </script>'}],
        "temperature": 1e-05,
        "top_p": 0.30000000000000004,
        "frequency_penalty": -0.0,
        "presence_penalty": 2.0,
        "seed": 2**70,
        "logit_bias": {"1234": -100, "99": 1e20},
        "stop": ["\n\n", ""],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "metadata": {"nested": [[], {}, None, True, False, [1, [2, [3]]]]},
        "user": "x" * 10_000,
    },
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("stream", [False, True])
def test_the_upstream_gets_the_json_value_dumps_gave(body: dict[str, Any], stream: bool) -> None:
    prepared = ADAPTERS["openai"].prepare(TARGET, body, stream)
    expected = {**body, "model": "m"}
    if stream:
        expected |= {"stream": True, "stream_options": {"include_usage": True}}
    assert json.loads(prepared.body) == json.loads(dumps(expected))
    assert json.loads(prepared.body) == expected
    assert b" " not in body_json({"a": [1, 2], "b": {"c": None}})  # compact, as `dumps`
    assert "é".encode() in body_json({"a": "é"})  # UTF-8, not \u escapes, as `dumps`


def test_what_dumps_refused_is_refused_the_same_way() -> None:
    lone = json.loads('"a\\ud800b"')  # json.loads accepts a lone surrogate's escape
    with pytest.raises(UnicodeEncodeError):
        dumps({"content": lone})
    with pytest.raises(UnicodeEncodeError):
        body_json({"content": lone})
    with pytest.raises(UnicodeEncodeError):
        ADAPTERS["openai"].prepare(TARGET, {"messages": [{"role": "user", "content": lone}]}, False)
    assert body_json({"x": float("inf")}) == dumps({"x": float("inf")}) == b'{"x":Infinity}'
