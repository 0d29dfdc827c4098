"""Clients speak OpenAI's chat completions (the official `openai` SDK); the worker speaks each
provider's own API. Through the real system to an Anthropic-format and a Gemini-format upstream
(the simulator's `/v1/messages` and `/v1beta/models/...` routes), catalog entries an operator adds."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from aigw_simulator.providers import THINKING
from tests.conftest import eventually

PRICES = {"input": "3E-6", "output": "0.000015", "cached_input": "3E-7", "cache_write": "0.00000375"}
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


@pytest.fixture(scope="module")
def models(stack: Stack) -> dict[str, str]:
    """A gateway on each provider format: catalog entries of the keyless `sim` provider that speak
    Anthropic's and Gemini's APIs (real catalog entries name `anthropic` / `google`, whose keys the
    workers hold), by gateway name."""
    assert stack.demo is not None
    out: dict[str, str] = {}
    with (
        httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.demo.operator_key}"}
        ) as op,
        httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.demo.key}"}) as admin,
    ):
        for api, path in (("anthropic", "/v1"), ("gemini", "/v1beta")):
            upstream = {
                "kind": "catalog",
                "id": f"@sim/{api}-sim",
                "provider": "sim",
                "api": api,
                "model": f"{api}-sim-model",
                "base_url": stack.sim_url + path,
                "prices": PRICES,
                "context_window": 200000,
            }
            made = op.post("/upstreams", json=upstream)
            assert made.status_code == 201, made.text
            assert made.json()["api"] == api
            gw = admin.post("/gateways", json={"name": f"on-{api}", "upstream": upstream["id"]})
            assert gw.status_code == 201, gw.text
            out[api] = gw.json()["id"]
    client = OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0)
    eventually(lambda: set(out.values()) <= {m.id for m in client.models.list()}, 5.0, "gateways visible")
    return out


@pytest.mark.parametrize("api", ["anthropic", "gemini"])
def test_text_whole_and_streamed_through_a_native_provider(
    client: OpenAI, models: dict[str, str], api: str
) -> None:
    reply = client.chat.completions.create(
        model=models[api], messages=[{"role": "user", "content": "hello [sim tokens=4]"}]
    )
    assert reply.choices[0].message.content == "sim0 sim1 sim2 sim3"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 4
    assert reply.model == f"@sim/{api}-sim"

    stream = client.chat.completions.create(
        model=models[api],
        messages=[{"role": "user", "content": "hello [sim tokens=4]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "sim0 sim1 sim2 sim3"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_the_models_list_carries_the_catalogs_metadata(client: OpenAI, models: dict[str, str]) -> None:
    listed = {m.id: m for m in client.models.list()}
    for mid in (models["anthropic"], "@sim/anthropic-sim"):  # a gateway shows its upstream's
        entry: Any = listed[mid]
        assert entry.object == "model" and entry.created > 0 and entry.owned_by in ("demo", "sim")
        assert entry.model_extra["provider"] == "sim" and entry.model_extra["context_window"] == 200000


@pytest.mark.parametrize("api", ["anthropic", "gemini"])
def test_thinking_reaches_the_sdk_as_reasoning_content_whole_and_streamed(
    client: OpenAI, models: dict[str, str], api: str
) -> None:
    ask: Any = {
        "model": models[api],
        "messages": [{"role": "user", "content": "think [sim tokens=2]"}],
        "reasoning_effort": "low",
        "max_completion_tokens": 4096,  # Anthropic's thinking budget must fit under it
    }
    whole: Any = client.chat.completions.create(**ask).choices[0].message
    assert whole.content == "sim0 sim1" and whole.model_extra["reasoning_content"] == THINKING
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas: Any = [c.choices[0].delta for c in chunks if c.choices]
    thought = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thought == THINKING  # the de-facto convention: DeepSeek's, vLLM's, OpenRouter's field
    assert "".join(d.content or "" for d in deltas) == "sim0 sim1"  # thoughts are not the answer


@pytest.mark.parametrize("api", ["anthropic", "gemini"])
def test_a_tool_round_through_a_native_provider(client: OpenAI, models: dict[str, str], api: str) -> None:
    ask: Any = [{"role": "user", "content": "find both [sim call=lookup calls=2]"}]
    first = client.chat.completions.create(model=models[api], messages=ask, tools=TOOLS)
    calls: Any = first.choices[0].message.tool_calls or []
    assert first.choices[0].finish_reason == "tool_calls"
    assert [json.loads(c.function.arguments)["query"] for c in calls] == ["find both (1)", "find both (2)"]
    results: Any = [
        *ask,
        first.choices[0].message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": c.id, "content": f"result {i}"} for i, c in enumerate(calls)),
    ]
    second = client.chat.completions.create(model=models[api], messages=results, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content


def test_anthropic_cache_writes_are_billed_as_their_own_sku(client: OpenAI, models: dict[str, str]) -> None:
    reply = client.chat.completions.create(
        model=models["anthropic"],
        messages=[{"role": "user", "content": "cache me [sim tokens=1 cached_tokens=2 cache_write=3]"}],
    )
    assert reply.usage is not None
    assert (
        reply.usage.prompt_tokens_details is not None and reply.usage.prompt_tokens_details.cached_tokens == 2
    )
    extra: Any = reply.model_extra
    lines = {line["sku"]: line for line in extra["generation_context"]["generated_usage"]}
    write = lines[skus.CHAT_IN_CACHE_WRITE]
    assert write["quantity"] == 3 and Decimal(repr(write["unit_price"])) == Decimal(PRICES["cache_write"])
    assert lines[skus.CHAT_IN_CACHED]["quantity"] == 2


def test_provider_errors_reach_the_sdk_as_openai_errors(client: OpenAI, models: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as blocked:
        client.chat.completions.create(
            model=models["gemini"], messages=[{"role": "user", "content": "x [sim fault=safety]"}]
        )
    assert blocked.value.code == "content_filter"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(
            model=models["anthropic"], messages=[{"role": "user", "content": "x [sim fault=context]"}]
        )
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=models["anthropic"], messages=[{"role": "user", "content": "hi"}], logprobs=True
        )
    assert refused.value.param == "logprobs"


def test_a_tenant_brings_its_own_key_for_a_catalog_model(
    stack: Stack, client: OpenAI, admin: httpx.Client, sim: httpx.Client, models: dict[str, str]
) -> None:
    """An own endpoint made from a catalog entry: its provider's URL and wire format, the tenant's
    key (sealed, sent only to that provider), tokens recorded at price 0."""
    made = admin.post("/upstreams", json={"from_catalog": "@sim/anthropic-sim", "api_key": "tenant-own-key"})
    assert made.status_code == 201, made.text
    own = made.json()
    assert (own["kind"], own["api"], own["model"], own["has_api_key"]) == (
        "own",
        "anthropic",
        "anthropic-sim-model",
        True,
    )
    assert own["base_url"] == stack.sim_url + "/v1" and own["prices"]["input"] in (0, "0")
    assert "tenant-own-key" not in made.text
    no_key = admin.post("/upstreams", json={"from_catalog": "@sim/anthropic-sim"})
    assert no_key.status_code == 400 and no_key.json()["error"]["param"] == "api_key"
    unknown = admin.post("/upstreams", json={"from_catalog": "@nope/x", "api_key": "k"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "from_catalog"

    gw = admin.post("/gateways", json={"name": "byo-anthropic", "upstream": own["id"]})
    assert gw.status_code == 201, gw.text
    eventually(lambda: gw.json()["id"] in {m.id for m in client.models.list()}, 5.0, "gateway visible")
    reply = client.chat.completions.create(
        model=gw.json()["id"], messages=[{"role": "user", "content": "mine [sim tokens=2]"}]
    )
    assert reply.choices[0].message.content == "sim0 sim1"
    extra: Any = reply.model_extra
    lines = extra["generation_context"]["generated_usage"]
    assert lines and all(Decimal(repr(line["amount"])) == 0 for line in lines)
    sent = [r for r in sim.get("/sim/requests").json() if "mine" in json.dumps(r.get("body"))]
    assert sent[-1]["headers"]["x-api-key"] == "tenant…"  # the tenant's key, redacted by the simulator
