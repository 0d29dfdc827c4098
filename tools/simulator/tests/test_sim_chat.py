"""Chat completions through the official SDK: shapes, usage, streaming, caps, echo, overrides."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from conftest import SimProcess

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},  # 3 words + 4
    {"role": "user", "content": "Say hello to the simulator"},  # 5 words + 4
]
PROMPT_TOKENS = 16
DEFAULT_WORDS = " ".join(f"sim{i}" for i in range(16))


def sse_payloads(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]


def test_non_stream_answer_has_openai_shape_and_counted_usage(sim: SimProcess) -> None:
    completion = sim.client().chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.service_tier == "default"
    assert completion.system_fingerprint == "fp_sim"
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert choice.message.role == "assistant"
    assert choice.message.content == DEFAULT_WORDS
    assert choice.message.refusal is None
    assert choice.message.annotations == []
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT_TOKENS, 16, 32)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_stream_sends_role_then_one_word_per_chunk_then_finish_and_done(sim: SimProcess) -> None:
    chunks = list(
        sim.client().chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"x-sim-tokens": "4"}
        )
    )

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["sim0", " sim1", " sim2", " sim3"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1

    # Without include_usage, OpenAI sends no usage key at all (the SDK would show None either way).
    raw = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True},
        headers={"x-sim-tokens": "2"},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(raw)
    assert payloads[-1] == "[DONE]"
    assert all("usage" not in json.loads(p) for p in payloads[:-1])


def test_stream_with_include_usage_ends_with_a_usage_only_chunk(sim: SimProcess) -> None:
    chunks = list(
        sim.client().chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sim-tokens": "3"},
        )
    )

    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (PROMPT_TOKENS, 3)
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"

    raw = httpx.post(
        f"{sim.url}/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    )
    decoded = [json.loads(p) for p in sse_payloads(raw)[:-1]]
    assert all(d["usage"] is None for d in decoded[:-1])  # present and null, as OpenAI sends it


def test_cached_tokens_are_part_of_prompt_tokens_and_clamped_to_them(sim: SimProcess) -> None:
    client = sim.client()
    usage = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-cached-tokens": "10"}
    ).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (PROMPT_TOKENS, 10)

    usage = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-cached-tokens": "1000"}
    ).usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == PROMPT_TOKENS


def test_max_tokens_caps_the_answer_with_finish_reason_length(sim: SimProcess) -> None:
    client = sim.client()
    completion = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=3)
    assert completion.choices[0].message.content == "sim0 sim1 sim2"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3

    chunks = list(
        client.chat.completions.create(model="m", messages=MESSAGES, max_completion_tokens=2, stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "sim0 sim1"
    assert chunks[-1].choices[0].finish_reason == "length"

    uncapped = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=100)
    assert uncapped.choices[0].finish_reason == "stop"


def test_echo_answers_with_the_messages_it_received(sim: SimProcess) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Answer from the passages."},
        {"role": "assistant", "content": "Prefill"},
        {"role": "user", "content": [{"type": "text", "text": "Who wrote it? [sim echo]"}]},
    ]
    client = sim.client()
    completion = client.chat.completions.create(model="m", messages=messages)
    content = completion.choices[0].message.content
    assert content is not None
    assert json.loads(content) == messages

    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert all(len(piece) <= 8 for piece in pieces)
    assert len(pieces) > 1
    assert json.loads("".join(pieces)) == messages


def test_directive_in_last_user_message_wins_over_header(sim: SimProcess) -> None:
    messages: list[Any] = [
        {"role": "user", "content": "earlier turn [sim tokens=9]"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "please [sim tokens=2] thanks"},
    ]
    completion = sim.client().chat.completions.create(
        model="m", messages=messages, extra_headers={"x-sim-tokens": "7"}
    )
    assert completion.choices[0].message.content == "sim0 sim1"

    header_only = sim.client().chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-sim-tokens": "7"}
    )
    assert header_only.usage is not None and header_only.usage.completion_tokens == 7


def test_models_lists_the_simulated_model_and_healthz_answers(sim: SimProcess) -> None:
    assert [model.id for model in sim.client().models.list()] == ["sim-model"]
    health = httpx.get(f"{sim.url}/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_invalid_requests_get_openai_400_bodies(sim: SimProcess) -> None:
    url = f"{sim.url}/v1/chat/completions"
    bad_json = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["error"]["type"] == "invalid_request_error"

    missing = httpx.post(url, json={"model": "m"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "messages"
    assert missing.json()["error"]["code"] == "missing_required_parameter"

    with pytest.raises(openai.BadRequestError, match="tokens"):
        sim.client().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "[sim tokens=lots]"}]
        )
    with pytest.raises(openai.BadRequestError, match="unknown knob"):
        sim.client().chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"x-sim-colour": "blue"}
        )
    assert [r["outcome"] for r in sim.requests()] == ["400", "400", "400", "400"]


def test_requests_are_recorded_with_body_and_redacted_authorization(sim: SimProcess) -> None:
    client = sim.client(api_key="sk-live-1234567890abcdef")
    completion = client.chat.completions.create(
        model="m", messages=MESSAGES, temperature=0.2, extra_headers={"x-trace": "abc"}
    )

    [record] = sim.requests()
    assert record["id"] == completion.id
    assert record["outcome"] == "completed"
    assert record["body"]["messages"] == MESSAGES
    assert record["body"]["temperature"] == 0.2
    assert record["headers"]["authorization"] == "Bearer sk-liv…"
    assert "1234567890" not in json.dumps(record)
    assert record["headers"]["x-trace"] == "abc"
    assert isinstance(record["received_at"], float)

    deleted = httpx.delete(f"{sim.url}/sim/requests")
    assert deleted.json() == {"deleted": 1}
    assert sim.requests() == []


def test_reply_answers_exactly_the_given_text_stream_and_not(sim: SimProcess) -> None:
    messages: Any = [{"role": "user", "content": "rank these [sim reply=3,1,2]"}]
    whole = sim.client().chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert whole.choices[0].message.content == "3,1,2" and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 1
    chunks = sim.client().chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "3,1,2"
