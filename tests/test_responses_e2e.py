"""OpenAI's Responses API through the whole system, driven by the openai SDK's `client.responses`."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
from openai import APIError, NotFoundError, OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}


def _echoed(text: str) -> list[dict[str, Any]]:
    """What the simulator received upstream, from an `echo` answer."""
    messages: list[dict[str, Any]] = json.loads(text)
    return messages


def test_text_input_gets_a_completed_response_with_usage_and_priced_lines(client: OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="demo", input="Hello [sim tokens=5]")
    response = raw.parse()
    assert response.id == f"resp_{raw.headers['x-request-id']}"
    assert response.object == "response" and response.status == "completed"
    assert len(response.output_text.split()) == 5
    assert response.output[0].type == "message"
    assert response.usage is not None and response.usage.output_tokens == 5
    assert response.usage.total_tokens == response.usage.input_tokens + 5
    lines = (response.model_extra or {})["generation_context"]["generated_usage"]
    by_sku = {line["sku"]: line for line in lines}
    assert by_sku[skus.CHAT_OUT]["quantity"] == 5
    for line in lines:
        assert Decimal(repr(line["amount"])) == Decimal(repr(line["unit_price"])) * line["quantity"]


def test_instructions_and_items_become_the_upstream_messages(client: OpenAI) -> None:
    response = client.responses.create(
        model="demo",
        instructions="Answer in French.",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "look [sim echo]"}]},
        ],
    )
    sent = _echoed(response.output_text)[1:]  # after the gateway's instructions
    assert sent == [
        {"role": "system", "content": "Answer in French."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "look [sim echo]"},
    ]


def test_previous_response_id_continues_the_stored_conversation(client: OpenAI) -> None:
    first = client.responses.create(model="demo", instructions="FIRST ONLY", input="one [sim tokens=3]")
    second = client.responses.create(model="demo", previous_response_id=first.id, input="two [sim tokens=2]")
    assert second.previous_response_id == first.id
    third = client.responses.create(model="demo", previous_response_id=second.id, input="three [sim echo]")
    assert _echoed(third.output_text)[
        1:
    ] == [  # after the gateway's; the request's are not carried over, as at OpenAI
        {"role": "user", "content": "one [sim tokens=3]"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "two [sim tokens=2]"},
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "three [sim echo]"},
    ]
    assert client.responses.retrieve(first.id).output_text == first.output_text
    items = list(client.responses.input_items.list(third.id, order="asc"))
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
    ]
    assert items[1].content[0].text == first.output_text  # type: ignore[union-attr]


def test_store_false_is_not_kept_and_other_tenants_never_see_a_response(client: OpenAI, stack: Stack) -> None:
    unstored = client.responses.create(model="demo", input="x [sim tokens=1]", store=False)
    assert unstored.store is False
    with pytest.raises(NotFoundError):
        client.responses.create(model="demo", previous_response_id=unstored.id, input="y")
    with pytest.raises(NotFoundError):
        client.responses.retrieve(unstored.id)

    kept = client.responses.create(model="demo", input="x [sim tokens=1]")
    assert stack.demo is not None
    other = OpenAI(
        base_url=stack.base_url, api_key=stack.demo.operator_key, max_retries=0
    )  # tenant "operator"
    with pytest.raises(NotFoundError):
        other.responses.retrieve(kept.id)
    with pytest.raises(NotFoundError):
        other.responses.create(model="demo", previous_response_id=kept.id, input="y")
    client.responses.delete(kept.id)
    with pytest.raises(NotFoundError):
        client.responses.retrieve(kept.id)


def test_function_call_round_trip(client: OpenAI) -> None:
    first = client.responses.create(model="demo", tools=[WEATHER], input="Lisbon [sim call=get_weather echo]")
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"query": "Lisbon"}
    second = client.responses.create(
        model="demo",
        tools=[WEATHER],
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}],
    )
    sent = _echoed(second.output_text)
    assert sent[-2]["tool_calls"][0]["id"] == calls[0].call_id
    assert sent[-1] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 21 C"}
    items = list(client.responses.input_items.list(second.id))  # newest first
    assert [i.type for i in items] == ["function_call_output", "function_call", "message"]
    assert items[1].call_id == items[0].call_id == calls[0].call_id  # type: ignore[union-attr]


def test_stream_has_typed_events_in_order_and_a_completed_response(client: OpenAI) -> None:
    events = list(client.responses.create(model="demo", input="stream [sim tokens=6]", stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text.split()) == 6
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == text
    assert done.response.usage is not None and done.response.usage.output_tokens == 6
    assert (done.response.model_extra or {})["generation_context"]["generated_usage"]
    # Stored before the stream's last bytes: continuing it right away works.
    follow = client.responses.create(model="demo", previous_response_id=done.response.id, input="[sim echo]")
    assert _echoed(follow.output_text)[2] == {"role": "assistant", "content": text}


def test_stream_helper_accumulates_function_calls(client: OpenAI) -> None:
    with client.responses.stream(
        model="demo", tools=[WEATHER], input="Porto [sim call=get_weather calls=2]"
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    calls = [item for item in final.output if item.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"query": "Porto (1)"}, {"query": "Porto (2)"}]


def test_max_output_tokens_makes_it_incomplete(client: OpenAI) -> None:
    response = client.responses.create(model="demo", input="long [sim tokens=20]", max_output_tokens=4)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_bad_requests_get_openai_errors(stack: Stack) -> None:
    assert stack.demo is not None
    auth = {"Authorization": f"Bearer {stack.demo.key}"}
    url = f"{stack.base_url}/responses"
    reply = httpx.post(
        url, json={"model": "demo", "input": "x", "tools": [{"type": "web_search"}]}, headers=auth
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "tools[0]"
    reply = httpx.post(url, json={"model": "demo", "input": "x", "bogus": 1}, headers=auth)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "bogus"
    reply = httpx.post(url, json={"model": "demo", "input": "x"}, headers={"Authorization": "Bearer nope"})
    assert reply.status_code == 401 and reply.json()["error"]["message"] == "Incorrect API key provided."


def test_an_upstream_drop_mid_stream_raises_in_the_sdk(client: OpenAI) -> None:
    events: list[Any] = []
    with pytest.raises(APIError):  # the SDK raises on the `error` event
        for event in client.responses.create(
            model="demo", input="x [sim fault=drop drop_after=3 tokens=20]", stream=True
        ):
            events.append(event)
    assert events[0].type == "response.created"
    assert any(e.type == "response.output_text.delta" for e in events)
