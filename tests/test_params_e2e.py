"""Request parameters through the whole system and the official openai SDK: `n` choices (each with
the gateway's prefill, all of them billed), logprobs, logit_bias, and requests refused by name
before anything reaches the upstream."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts import skus
from aigw_contracts.ids import uuid7
from aigw_devstack.stack import Stack
from tests.conftest import PREFILLED, eventually


def _out_quantity(extra: dict[str, Any] | None) -> int:
    assert extra is not None
    lines = extra["generation_context"]["generated_usage"]
    return int(next(line["quantity"] for line in lines if line["sku"] == skus.CHAT_OUT))


def _words(count: int, choice: int) -> str:
    return " ".join(f"sim{i}" if choice == 0 else f"sim{i}.{choice}" for i in range(count))


def test_n_choices_each_start_with_the_prefill_and_are_all_billed(client: OpenAI, sim: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=PREFILLED.name, messages=[{"role": "user", "content": "two please [sim tokens=3]"}], n=2
    )
    reply = raw.parse()
    assert json.loads(raw.headers["x-aigw-params"])["n"] == 2
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == [
        f"PREFILL:{_words(3, 0)}",
        f"PREFILL:{_words(3, 1)}",
    ]
    assert reply.usage is not None and reply.usage.completion_tokens == 6
    assert _out_quantity(reply.model_extra) == 6
    assert sim.get("/sim/requests").json()[-1]["body"]["n"] == 2


def test_n_choices_stream_apart_by_index_each_with_the_prefill(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=PREFILLED.name,
            messages=[{"role": "user", "content": "stream two [sim tokens=4]"}],
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = defaultdict(str)
    roles: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert dict(texts) == {0: f"PREFILL:{_words(4, 0)}", 1: f"PREFILL:{_words(4, 1)}"}
    assert roles == {0: "assistant", 1: "assistant"} and finishes == {0: "stop", 1: "stop"}
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens == 8
    assert _out_quantity(last.model_extra) == 8


def test_logprobs_come_back_for_every_token_stream_and_not(client: OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "probabilities [sim tokens=5]"}]
    reply = client.chat.completions.create(model="demo", messages=messages, logprobs=True, top_logprobs=2)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert "".join(t.token for t in logprobs.content) == reply.choices[0].message.content == _words(5, 0)
    assert all(len(t.top_logprobs) == 2 and t.logprob < 0 for t in logprobs.content)

    chunks = list(
        client.chat.completions.create(
            model="demo", messages=messages, logprobs=True, top_logprobs=2, n=2, stream=True
        )
    )
    streamed: dict[int, list[Any]] = defaultdict(list)
    for chunk in chunks:
        for choice in chunk.choices:
            if choice.logprobs and choice.logprobs.content:
                streamed[choice.index] += choice.logprobs.content
    assert ["".join(t.token for t in streamed[i]) for i in (0, 1)] == [_words(5, 0), _words(5, 1)]
    # the same answer gets the same numbers, streamed or not
    assert [t.logprob for t in streamed[0]] == [t.logprob for t in logprobs.content]


def test_logit_bias_reaches_the_upstream(client: OpenAI, sim: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="demo",
        messages=[{"role": "user", "content": "bias [sim tokens=1]"}],
        logit_bias={"50256": -100},
    )
    assert json.loads(raw.headers["x-aigw-params"])["logit_bias"] == {"50256": -100}
    assert sim.get("/sim/requests").json()[-1]["body"]["logit_bias"] == {"50256": -100}


CALL: Any = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"messages": [{"role": "system", "content": "s"}, {"role": "user"}]}, "messages[1].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "tool_calls": [CALL]},
                    {"role": "tool", "content": "r"},
                ]
            },
            "messages[2].tool_call_id",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}], "tools": [{"type": "function"}]},
            "tools[0].function",
        ),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}, "messages[1].content"),
        ({"messages": [{"role": "user", "content": "q"}], "store": True}, "store"),
        ({"messages": [{"role": "user", "content": "q"}], "service_tier": "priority"}, "service_tier"),
        ({"messages": [{"role": "user", "content": "q"}], "top_logprobs": 3}, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "q"}], "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_requests_openai_would_refuse_are_a_400_naming_the_field_and_never_go_upstream(
    client: OpenAI, sim: httpx.Client, kwargs: dict[str, Any], param: str
) -> None:
    marker = uuid7()
    kwargs["messages"][0]["content"] = f"{kwargs['messages'][0].get('content', '')} {marker}"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="demo", **kwargs)
    assert err.value.param == param
    assert marker not in json.dumps(sim.get("/sim/requests").json())


def test_public_keys_cannot_ask_for_more_choices(stack: Stack, http: httpx.Client, client: OpenAI) -> None:
    created = http.post("/keys", json={"name": f"pub-{uuid7()[-6:]}", "kind": "public"})
    assert created.status_code == 201, created.text
    gateway = http.post(
        "/gateways", json={"name": f"choices-{uuid7()[-6:]}", "upstream": "@sim/sim-model"}
    ).json()
    public = OpenAI(base_url=stack.base_url, api_key=created.json()["secret"], max_retries=0, timeout=20)

    def visible() -> bool:
        try:
            return gateway["id"] in {m.id for m in public.models.list()}
        except openai.AuthenticationError:
            return False  # the key has not reached the edge yet

    eventually(visible, 2.0, "key and gateway visible")
    raw = public.chat.completions.with_raw_response.create(
        model=gateway["id"], messages=[{"role": "user", "content": "hi [sim tokens=2]"}], n=3, logprobs=True
    )
    reply = raw.parse()
    assert len(reply.choices) == 1 and reply.choices[0].logprobs is None
    assert not {"n", "logprobs"} & set(json.loads(raw.headers["x-aigw-params"]))
