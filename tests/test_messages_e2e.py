"""Anthropic's Messages API through the whole system: anthropic SDK -> edge -> NATS -> ... -> simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import pytest

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from tests.conftest import PREFILLED, eventually

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}


def _root(stack: Stack) -> str:
    return stack.base_url.removesuffix("/v1")


@pytest.fixture
def claude(stack: Stack) -> Iterator[anthropic.Anthropic]:
    assert stack.demo is not None
    with anthropic.Anthropic(base_url=_root(stack), api_key=stack.demo.key, max_retries=0, timeout=20) as c:
        yield c


def _echoed(text: str) -> list[dict[str, Any]]:
    """What the simulator received upstream, from an `echo` answer."""
    messages: list[dict[str, Any]] = json.loads(text)
    return messages


def test_non_stream_message_has_anthropic_shape_usage_and_priced_lines(
    claude: anthropic.Anthropic, stack: Stack
) -> None:
    raw = claude.messages.with_raw_response.create(
        model="demo", max_tokens=100, messages=[{"role": "user", "content": "Hello [sim tokens=5]"}]
    )
    message = raw.parse()
    assert message.id == f"msg_{raw.headers['x-request-id']}"
    assert message.type == "message" and message.role == "assistant"
    assert message.stop_reason == "end_turn"
    assert len(message.content) == 1 and message.content[0].type == "text"
    assert len(message.content[0].text.split()) == 5
    assert message.usage.output_tokens == 5 and message.usage.input_tokens > 0
    lines = (message.model_extra or {})["generation_context"]["generated_usage"]
    by_sku = {line["sku"]: line for line in lines}
    assert by_sku[skus.CHAT_OUT]["quantity"] == 5
    assert by_sku[skus.CHAT_IN]["quantity"] == message.usage.input_tokens
    for line in lines:
        assert Decimal(repr(line["amount"])) == Decimal(repr(line["unit_price"])) * line["quantity"]


def test_system_prompt_and_history_reach_the_upstream_after_the_gateway_instructions(
    claude: anthropic.Anthropic,
) -> None:
    message = claude.messages.create(
        model=PREFILLED.name,
        max_tokens=50,
        system="Be brief.",
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": [{"type": "text", "text": "an answer"}]},
            {"role": "user", "content": [{"type": "text", "text": "again [sim echo]"}]},
        ],
    )
    assert message.content[0].type == "text"
    text = message.content[0].text.removeprefix(PREFILLED.prefill or "")
    assert _echoed(text)[:5] == [
        {"role": "system", "content": "GATEWAY INSTRUCTIONS"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "text", "text": "again [sim echo]"}]},
    ]


def test_max_tokens_stops_with_max_tokens(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="demo", max_tokens=3, messages=[{"role": "user", "content": "long [sim tokens=20]"}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


def test_stream_has_anthropic_events_text_and_final_usage(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="demo", max_tokens=100, messages=[{"role": "user", "content": "stream [sim tokens=8]"}]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    for kind in ("content_block_start", "content_block_delta", "content_block_stop", "message_delta"):
        assert kind in kinds
    assert kinds[-1] == "message_stop"
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text" and len(final.content[0].text.split()) == 8
    assert final.usage.output_tokens == 8 and final.usage.input_tokens > 0


def test_stream_event_names_and_data_agree_on_the_wire(stack: Stack) -> None:
    """Every event's `event:` name is its data's `type`, a `ping` follows `message_start`."""
    assert stack.demo is not None
    body = {
        "model": "demo",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "s [sim tokens=4]"}],
    }
    with httpx.stream(
        "POST", f"{stack.base_url}/messages", json=body, headers={"x-api-key": stack.demo.key}, timeout=10
    ) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        text = reply.read().decode()
    events = [frame.split("\n") for frame in text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    for name, lines in zip(names, events, strict=True):
        assert json.loads(lines[1].removeprefix("data: "))["type"] == name
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    delta = json.loads(events[-2][1].removeprefix("data: "))
    assert delta["usage"]["output_tokens"] == 4
    assert delta["generation_context"]["generated_usage"]


def test_tool_use_round_trip_non_stream(claude: anthropic.Anthropic) -> None:
    asked = [{"role": "user", "content": "Lisbon [sim call=get_weather echo]"}]
    first = claude.messages.create(model="demo", max_tokens=200, tools=[WEATHER], messages=asked)  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    use = next(block for block in first.content if block.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"query": "Lisbon"}
    second = claude.messages.create(
        model="demo",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            *asked,  # type: ignore[list-item]
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    sent = _echoed(second.content[0].text)
    assert sent[-2]["tool_calls"][0]["id"] == use.id
    assert json.loads(sent[-2]["tool_calls"][0]["function"]["arguments"]) == {"query": "Lisbon"}
    assert sent[-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny, 21 C"}


def test_tool_use_streams_as_input_json_deltas(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="demo",
        max_tokens=200,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "Porto [sim call=get_weather calls=2]"}],
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert "input_json_delta" in deltas
    assert final.stop_reason == "tool_use"
    uses = [block for block in final.content if block.type == "tool_use"]
    assert [u.input for u in uses] == [{"query": "Porto (1)"}, {"query": "Porto (2)"}]
    assert len({u.id for u in uses}) == 2


def test_bearer_auth_works_too(stack: Stack) -> None:
    assert stack.demo is not None
    with anthropic.Anthropic(base_url=_root(stack), auth_token=stack.demo.key, max_retries=0) as c:
        message = c.messages.create(
            model="demo", max_tokens=10, messages=[{"role": "user", "content": "hi [sim tokens=2]"}]
        )
    assert message.usage.output_tokens == 2


def test_errors_have_anthropics_shape_and_status(claude: anthropic.Anthropic, stack: Stack) -> None:
    bad = anthropic.Anthropic(base_url=_root(stack), api_key="aigw_wrong", max_retries=0)
    with bad, pytest.raises(anthropic.AuthenticationError) as denied:
        bad.messages.create(model="demo", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert denied.value.body["type"] == "error"  # type: ignore[index]
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(
            model="no-such-gateway", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert missing.value.response.headers["x-request-id"]

    with pytest.raises(anthropic.BadRequestError) as invalid:
        claude.messages.create(model="demo", max_tokens=0, messages=[{"role": "user", "content": "x"}])
    assert invalid.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in invalid.value.body["error"]["message"]  # type: ignore[index]

    # Upstream faults keep their status, as Anthropic's error types
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(
            model="demo", max_tokens=5, messages=[{"role": "user", "content": "x [sim fault=429]"}]
        )
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_a_stream_refused_before_it_starts_is_a_plain_http_error(stack: Stack) -> None:
    assert stack.demo is not None
    body = {
        "model": "no-such-gateway",
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "x"}],
    }
    reply = httpx.post(
        f"{stack.base_url}/messages", json=body, headers={"x-api-key": stack.demo.key}, timeout=10
    )
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "not_found_error"


def test_an_upstream_drop_mid_stream_is_an_anthropic_error_event(claude: anthropic.Anthropic) -> None:
    got: list[str] = []
    dropped = [{"role": "user", "content": "x [sim fault=drop drop_after=3 tokens=20]"}]
    with (
        pytest.raises(anthropic.APIStatusError) as err,  # the SDK raises on `event: error`
        claude.messages.stream(model="demo", max_tokens=100, messages=dropped) as stream,  # type: ignore[arg-type]
    ):
        got.extend(stream.text_stream)
    assert got  # some text came before the drop
    assert err.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_a_client_that_leaves_a_message_stream_cancels_the_upstream_call(
    claude: anthropic.Anthropic, sim: httpx.Client
) -> None:
    with claude.messages.stream(
        model="demo",
        max_tokens=500,
        messages=[{"role": "user", "content": "slow [sim tokens=200 token_ms=50]"}],
    ) as stream:
        for i, _ in enumerate(stream.text_stream):
            if i == 2:
                break

    def cancelled() -> bool:
        records = sim.get("/sim/requests").json()
        return bool(records) and records[-1]["outcome"] == "client_disconnected"

    eventually(cancelled, 10.0, "the upstream call cancelled")
    record = sim.get("/sim/requests").json()[-1]
    assert record["outcome"] == "client_disconnected"  # not a stream that ran to its 200th token


def test_count_tokens_estimates_the_requests_own_content(claude: anthropic.Anthropic) -> None:
    short = claude.messages.count_tokens(model="demo", messages=[{"role": "user", "content": "hi"}])
    text = "word " * 400
    long = claude.messages.count_tokens(
        model="demo",
        system="Be brief.",
        tools=[WEATHER],
        messages=[{"role": "user", "content": text}],  # type: ignore[list-item]
    )
    assert 0 < short.input_tokens < 20
    assert long.input_tokens >= len(text) // 4
