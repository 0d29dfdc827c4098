"""Tool calls (the `call` knob): shapes through the official SDK, streaming, parallel calls, the loop."""

from __future__ import annotations

import json
import math
import re
import time
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall

from aigw_simulator.directives import strip_directives

if TYPE_CHECKING:
    from conftest import SimProcess

TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    {
        "type": "function",
        "function": {
            "name": "knowledge_search",
            "description": "Search the knowledge base.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    },
]
QUESTION = "What is the refund policy?"
PROMPT = f"{QUESTION} [sim call=knowledge_search]"
MESSAGES: list[Any] = [
    {"role": "system", "content": "Use the search tool."},  # 4 words + 4
    {"role": "user", "content": PROMPT},  # 7 words (the directive counts too) + 4
]
PROMPT_TOKENS = 19
CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def arguments_of(query: str) -> str:
    return json.dumps({"query": query}, separators=(",", ":"))


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, each checked to be a function call."""
    calls = message.tool_calls
    assert calls is not None, "the answer has no tool calls"
    functions = [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]
    assert len(functions) == len(calls)
    return functions


def sse_payloads(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]


def test_directive_text_is_removed_from_the_query() -> None:
    assert strip_directives(f"  {QUESTION} [sim call=knowledge_search calls=2]\n") == QUESTION
    assert strip_directives("[sim echo] a [simple] b [sim]") == "a [simple] b"
    assert strip_directives("no directive") == "no directive"


def test_non_stream_tool_call_has_openai_shape_arguments_and_usage(sim: SimProcess) -> None:
    completion = sim.client().chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, extra_headers={"x-sim-cached-tokens": "5"}
    )

    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "tool_calls")
    message = choice.message
    assert (message.role, message.content, message.refusal) == ("assistant", None, None)
    [call] = function_calls(message)
    assert CALL_ID.fullmatch(call.id)
    assert call.type == "function"
    assert call.function.name == "knowledge_search"
    assert call.function.arguments == arguments_of(QUESTION)
    assert json.loads(call.function.arguments) == {"query": QUESTION}
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    completion_tokens = len(arguments_of(QUESTION).split())  # {"query":"What is the refund policy?"}
    assert (usage.prompt_tokens, usage.completion_tokens) == (PROMPT_TOKENS, completion_tokens)
    assert usage.total_tokens == PROMPT_TOKENS + completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 5

    record = sim.last_request()
    assert (record["id"], record["outcome"]) == (completion.id, "tool_calls")
    assert record["body"]["tools"] == TOOLS


def test_call_header_works_like_the_directive_and_ids_differ(sim: SimProcess) -> None:
    client = sim.client()
    messages: list[Any] = [{"role": "user", "content": "  find the manual  "}]
    first, second = (
        client.chat.completions.create(
            model="m", messages=messages, tools=TOOLS, extra_headers={"x-sim-call": "get_time"}
        )
        for _ in range(2)
    )

    calls = [function_calls(c.choices[0].message) for c in (first, second)]
    assert [c[0].function.name for c in calls] == ["get_time", "get_time"]
    assert calls[0][0].function.arguments == arguments_of("find the manual")
    assert calls[0][0].id != calls[1][0].id


def test_stream_accumulates_with_the_sdk_into_the_tool_call(sim: SimProcess) -> None:
    with sim.client().chat.completions.stream(
        model="m", messages=MESSAGES, tools=TOOLS, stream_options={"include_usage": True}
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = function_calls(choice.message)
    assert CALL_ID.fullmatch(call.id)
    assert (call.function.name, call.function.arguments) == ("knowledge_search", arguments_of(QUESTION))
    deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    assert len(deltas) >= 2
    assert "".join(e.arguments_delta for e in deltas) == arguments_of(QUESTION)
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (
        PROMPT_TOKENS,
        len(arguments_of(QUESTION).split()),
    )
    assert sim.last_request()["outcome"] == "tool_calls"


def test_stream_chunks_have_openai_exact_shapes(sim: SimProcess) -> None:
    raw = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "tools": TOOLS, "stream": True},
    )
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all("usage" not in c for c in chunks)  # no include_usage: no usage key at all
    deltas = [c["choices"][0]["delta"] for c in chunks]

    call_id = deltas[0]["tool_calls"][0]["id"]
    assert CALL_ID.fullmatch(call_id)
    assert deltas[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "index": 0,
                "id": call_id,
                "type": "function",
                "function": {"name": "knowledge_search", "arguments": ""},
            }
        ],
        "refusal": None,
    }
    fragments = deltas[1:-1]
    assert len(fragments) >= 2
    assert all(
        set(d) == {"tool_calls"} and set(d["tool_calls"][0]) == {"index", "function"} for d in fragments
    )
    assert "".join(d["tool_calls"][0]["function"]["arguments"] for d in fragments) == arguments_of(QUESTION)
    assert deltas[-1] == {}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["tool_calls"]


def test_calls_2_emits_parallel_calls_with_distinct_queries(sim: SimProcess) -> None:
    messages: list[Any] = [{"role": "user", "content": f"{QUESTION} [sim call=knowledge_search calls=2]"}]
    client = sim.client()
    completion = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    calls = function_calls(completion.choices[0].message)
    expected = [arguments_of(f"{QUESTION} (1)"), arguments_of(f"{QUESTION} (2)")]
    assert [c.function.arguments for c in calls] == expected
    assert len({c.id for c in calls}) == 2
    assert completion.usage is not None
    assert completion.usage.completion_tokens == sum(len(a.split()) for a in expected)

    raw = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "m", "messages": messages, "tools": TOOLS, "stream": True},
    )
    chunks = [json.loads(p) for p in sse_payloads(raw)[:-1]]
    tool_deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    indexes = [d["index"] for d in tool_deltas]
    assert indexes == sorted(indexes) and set(indexes) == {0, 1}  # each call in turn
    opened = [(d["index"], d["function"]["name"]) for d in tool_deltas if "id" in d]
    assert opened == [(0, "knowledge_search"), (1, "knowledge_search")]
    for index, arguments in enumerate(expected):
        pieces = [d["function"]["arguments"] for d in tool_deltas if d["index"] == index and "id" not in d]
        assert len(pieces) >= 2
        assert "".join(pieces) == arguments

    with client.chat.completions.stream(model="m", messages=messages, tools=TOOLS) as stream:
        final = stream.get_final_completion()
    streamed = function_calls(final.choices[0].message)
    assert [c.function.arguments for c in streamed] == expected


def test_tool_result_as_last_message_gets_a_normal_answer(sim: SimProcess) -> None:
    client = sim.client()
    messages: list[Any] = [{"role": "user", "content": f"{QUESTION} [sim call=knowledge_search echo]"}]
    first = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = function_calls(first.choices[0].message)

    messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Refunds within 30 days."})
    second = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    content = second.choices[0].message.content
    assert content is not None
    echoed = json.loads(content)
    assert echoed == messages
    assert echoed[-1] == {"role": "tool", "tool_call_id": call.id, "content": "Refunds within 30 days."}
    assert echoed[1]["tool_calls"][0]["function"]["arguments"] == arguments_of(QUESTION)

    stream = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == messages

    words = client.chat.completions.create(
        model="m",
        messages=[
            {"role": "user", "content": "[sim call=get_time tokens=2]"},
            messages[1],
            {"role": "tool", "tool_call_id": call.id, "content": "12:00"},
        ],  # no tools offered: none are needed once the result is back
    )
    assert words.choices[0].message.content == "sim0 sim1"
    assert [r["outcome"] for r in sim.requests()] == ["tool_calls", "completed", "completed", "completed"]


def test_call_naming_a_tool_not_offered_is_a_400(sim: SimProcess) -> None:
    client = sim.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi [sim call=web_search]"}], tools=TOOLS
        )
    assert caught.value.status_code == 400
    assert caught.value.param == "tools"
    assert "web_search" in caught.value.message
    assert "offered: get_time, knowledge_search" in caught.value.message

    with pytest.raises(openai.BadRequestError, match="knowledge_search"):
        client.chat.completions.create(model="m", messages=MESSAGES)  # no tools at all
    assert [r["outcome"] for r in sim.requests()] == ["400", "400"]


def test_bad_call_knob_values_are_a_400(sim: SimProcess) -> None:
    client = sim.client()
    with pytest.raises(openai.BadRequestError, match="calls"):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[sim call=get_time calls=0]"}], tools=TOOLS
        )
    with pytest.raises(openai.BadRequestError, match="function name"):
        client.chat.completions.create(
            model="m", messages=MESSAGES, tools=TOOLS, extra_headers={"x-sim-call": "not a name!"}
        )


def test_tool_call_stream_is_paced_and_can_be_dropped(sim: SimProcess) -> None:
    client = sim.client()
    started = time.monotonic()
    with client.chat.completions.stream(
        model="m",
        messages=[{"role": "user", "content": f"{QUESTION} [sim call=knowledge_search token_ms=20]"}],
        tools=TOOLS,
    ) as stream:
        final = stream.get_final_completion()
    fragments = math.ceil(len(arguments_of(QUESTION)) / 8)  # each one waits token_ms
    assert time.monotonic() - started >= fragments * 0.02
    assert final.choices[0].finish_reason == "tool_calls"

    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": f"{QUESTION} [sim call=knowledge_search fault=drop drop_after=1]"}
        ],
        "tools": TOOLS,
        "stream": True,
    }
    lines: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{sim.url}/v1/chat/completions", json=body) as response,
    ):
        lines.extend(line for line in response.iter_lines() if line)
    assert len(lines) == 2  # the opening chunk and one arguments fragment
    assert '"arguments":"{\\"query' in lines[-1]
    assert sim.last_request()["outcome"] == "drop"
