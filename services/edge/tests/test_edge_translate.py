"""Requests of the other APIs as chat completions requests (the answers are proven end to end)."""

from __future__ import annotations

import pytest

from aigw_contracts.errors import InvalidRequest
from aigw_edge.routes import messages, responses


def _anthropic(**fields: object) -> messages.MessagesRequest:
    return messages.MessagesRequest.model_validate({"model": "g", "max_tokens": 10, **fields})


def test_tool_results_come_first_in_their_user_turn_and_errors_say_so() -> None:
    chat = messages.to_chat(
        _anthropic(
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "t1", "name": "w", "input": {"city": "Lisbon"}},
                        {"type": "tool_use", "id": "t2", "name": "w", "input": {"city": "Porto"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "and thanks"},
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "text", "text": "sun"}],
                        },
                        {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True},
                    ],
                },
            ]
        )
    )
    assistant, first, second, rest = chat["messages"][1:]
    assert assistant["content"] == "Checking."
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == [
        '{"city":"Lisbon"}',
        '{"city":"Porto"}',
    ]
    assert first == {"role": "tool", "tool_call_id": "t1", "content": "sun"}
    assert second == {"role": "tool", "tool_call_id": "t2", "content": "Error: boom"}
    assert rest == {"role": "user", "content": [{"type": "text", "text": "and thanks"}]}


def test_anthropic_parameters_map_to_chats() -> None:
    chat = messages.to_chat(
        _anthropic(
            system=[{"type": "text", "text": "Be brief."}],
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        }
                    ],
                }
            ],
            stop_sequences=["END"],
            temperature=0.2,
            tools=[{"name": "w", "description": "weather", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            metadata={"user_id": "u1"},
        )
    )
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["messages"][1]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,AAAA"},
    }
    assert (chat["stop"], chat["temperature"], chat["max_tokens"], chat["user"]) == (["END"], 0.2, 10, "u1")
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "w", "parameters": {"type": "object"}, "description": "weather"},
        }
    ]
    assert (chat["tool_choice"], chat["parallel_tool_calls"]) == ("required", False)


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"name": "web_search", "type": "web_search_20250305"}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
        {"tool_choice": {"type": "tool"}},
    ],
)
def test_what_chat_completions_cannot_carry_is_refused(fields: dict[str, object]) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], **fields}
    with pytest.raises(InvalidRequest):
        messages.to_chat(_anthropic(**body))


def test_response_items_become_messages_with_calls_on_the_assistant_turn() -> None:
    chat = responses.input_messages(
        [
            {"role": "user", "content": "weather?"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Checking."}],
            },
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sun"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
            {"type": "reasoning", "summary": []},
        ]
    )
    assert [m["role"] for m in chat] == ["user", "assistant", "tool", "tool"]
    assert chat[1]["content"] == "Checking." and [c["id"] for c in chat[1]["tool_calls"]] == ["c1", "c2"]
    assert chat[3] == {"role": "tool", "tool_call_id": "c2", "content": "rain"}


def test_responses_parameters_map_to_chats() -> None:
    request = responses.ResponsesRequest.model_validate(
        {
            "model": "g",
            "instructions": "Be brief.",
            "input": "hi",
            "max_output_tokens": 5,
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"},
        }
    )
    chat, conversation = responses.to_chat(request, [{"role": "user", "content": "before"}])
    assert conversation == [{"role": "user", "content": "before"}, {"role": "user", "content": "hi"}]
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["max_tokens"] == 5 and chat["reasoning_effort"] == "low"
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "w"}}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": {"type": "object"}},
    }
    with pytest.raises(InvalidRequest):
        responses.to_chat(request.model_copy(update={"tools": [{"type": "file_search"}]}), [])
