"""Chat completions through the whole system: openai SDK -> edge -> NATS -> router -> worker -> simulator."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import SIM_PRICES, Stack
from tests.conftest import POLICY, PREFILLED


def _lines(extra: dict[str, Any] | None) -> list[dict[str, Any]]:
    assert extra is not None
    return list(extra["generation_context"]["generated_usage"])


def _assert_lines_exact(lines: list[dict[str, Any]], prompt: int, cached: int, completion: int) -> None:
    by_sku = {line["sku"]: line for line in lines}
    assert by_sku[skus.CHAT_IN]["quantity"] == prompt - cached
    assert by_sku[skus.CHAT_OUT]["quantity"] == completion
    for line in lines:
        # amounts are exact: unit_price × quantity, read back from JSON as decimals
        assert Decimal(repr(line["amount"])) == Decimal(repr(line["unit_price"])) * line["quantity"]
    assert Decimal(repr(by_sku[skus.CHAT_IN]["unit_price"])) == SIM_PRICES.input
    assert Decimal(repr(by_sku[skus.CHAT_OUT]["unit_price"])) == SIM_PRICES.output


def test_non_stream_completion_has_openai_shape_and_exact_usage_lines(client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="demo", messages=[{"role": "user", "content": "Hello there [sim tokens=6]"}]
    )
    reply = raw.parse()
    assert raw.headers["x-request-id"]
    assert reply.object == "chat.completion" and reply.model == "@sim/sim-model"
    assert reply.id == f"chatcmpl-{raw.headers['x-request-id']}"
    assert reply.choices[0].finish_reason == "stop"
    assert len((reply.choices[0].message.content or "").split()) == 6
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    _assert_lines_exact(_lines(reply.model_extra), reply.usage.prompt_tokens, 0, 6)


def test_cached_tokens_are_billed_on_their_own_sku(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "one two three four five [sim cached_tokens=4]"}]
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 4
    lines = _lines(reply.model_extra)
    cached = next(line for line in lines if line["sku"] == skus.CHAT_IN_CACHED)
    assert cached["quantity"] == 4
    assert Decimal(repr(cached["unit_price"])) == SIM_PRICES.cached_input
    _assert_lines_exact(lines, reply.usage.prompt_tokens, 4, reply.usage.completion_tokens)


def test_stream_ends_with_usage_and_generation_context_then_done(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "stream please [sim tokens=12]"}], stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 12
    last = chunks[-1]
    assert last.choices and last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == 12
    _assert_lines_exact(_lines(last.model_extra), last.usage.prompt_tokens, 0, 12)
    assert all(c.usage is None for c in chunks[:-1])


def test_include_usage_gets_openais_usage_chunk(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "count [sim tokens=5]"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 5
    assert _lines(usage_chunk.model_extra)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_raw_sse_stream_ends_with_done(http: httpx.Client) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi [sim tokens=3]"}], "stream": True}
    with http.stream("POST", "/chat/completions", json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line for line in resp.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["usage"]["completion_tokens"] == 3 and last["generation_context"]["generated_usage"]


def test_instructions_come_first_and_the_answer_contains_the_prefill(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=PREFILLED.slug,
        messages=[
            {"role": "system", "content": "client system"},
            {"role": "user", "content": "what did you get? [sim echo=1]"},
        ],
    )
    content = reply.choices[0].message.content or ""
    assert content.startswith("PREFILL:")
    received = json.loads(content.removeprefix("PREFILL:"))
    assert [(m["role"], m["content"]) for m in received][:2] == [
        ("system", "GATEWAY INSTRUCTIONS"),
        ("system", "client system"),
    ]
    assert received[-1] == {"role": "assistant", "content": "PREFILL:"}


def test_stream_with_prefill_starts_with_it(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=PREFILLED.id, messages=[{"role": "user", "content": "go [sim tokens=3]"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("PREFILL:") and len(text.removeprefix("PREFILL:").split()) == 3


def test_override_policy_locked_clamped_default(client: OpenAI, sim: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=POLICY.slug,
        messages=[{"role": "user", "content": "params [sim tokens=2]"}],
        temperature=1.9,  # locked at 0.3: ignored
        top_p=0.95,  # clamped into [0.2, 0.6]
        seed=42,  # default: the request wins
        presence_penalty=-1.0,  # not overridable by default: the gateway's 0.25 holds
    )
    used = json.loads(raw.headers["x-aigw-params"])
    expected = {"temperature": 0.3, "top_p": 0.6, "seed": 42, "presence_penalty": 0.25}
    assert {k: used[k] for k in expected} == expected
    upstream = sim.get("/sim/requests").json()[-1]["body"]
    assert {k: upstream[k] for k in expected} == expected
    assert raw.headers["x-aigw-gateway"] == POLICY.slug


def test_models_lists_the_tenants_gateways(client: OpenAI, stack: Stack) -> None:
    assert stack.demo is not None
    ids = {m.id for m in client.models.list()}
    assert {stack.demo.gateway_id, stack.demo.gateway_slug, PREFILLED.id, "@sim/sim-model"} <= ids
