"""`n`, `logprobs`/`top_logprobs` and `logit_bias` through the official SDK, stream and not."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import openai
import pytest

if TYPE_CHECKING:
    from conftest import SimProcess

MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the simulator"}]  # 5 words + 4
PROMPT_TOKENS = 9


def _words(count: int, choice: int) -> str:
    return " ".join(f"sim{i}" if choice == 0 else f"sim{i}.{choice}" for i in range(count))


def test_n_gives_n_choices_each_with_its_own_text_and_summed_usage(sim: SimProcess) -> None:
    reply = sim.client().chat.completions.create(
        model="m", messages=MESSAGES, n=3, extra_headers={"x-sim-tokens": "4"}
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [_words(4, 0), _words(4, 1), _words(4, 2)]
    assert all(c.finish_reason == "stop" and c.logprobs is None for c in reply.choices)
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (PROMPT_TOKENS, 12)


def test_n_streams_interleaved_choices_that_accumulate_by_index(sim: SimProcess) -> None:
    chunks = list(
        sim.client().chat.completions.create(
            model="m",
            messages=MESSAGES,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-sim-tokens": "3"},
        )
    )
    order = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.content]
    assert order == [0, 1, 0, 1, 0, 1]  # interleaved, as a real upstream may send them
    texts: dict[int, str] = defaultdict(str)
    finishes = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert dict(texts) == {0: _words(3, 0), 1: _words(3, 1)}
    assert finishes == {0: "stop", 1: "stop"}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_max_tokens_caps_each_choice(sim: SimProcess) -> None:
    reply = sim.client().chat.completions.create(model="m", messages=MESSAGES, n=2, max_tokens=2)
    assert [c.message.content for c in reply.choices] == [_words(2, 0), _words(2, 1)]
    assert {c.finish_reason for c in reply.choices} == {"length"}
    assert reply.usage is not None and reply.usage.completion_tokens == 4


def _check_logprobs(content: list[Any], text: str, top: int) -> None:
    assert "".join(entry.token for entry in content) == text
    for entry in content:
        assert 0.5 <= math.exp(entry.logprob) < 0.9
        assert entry.bytes == list(entry.token.encode())
        assert len(entry.top_logprobs) == top
        if top:
            assert entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[0].logprob == entry.logprob
            probabilities = [math.exp(t.logprob) for t in entry.top_logprobs]
            assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1


def test_logprobs_cover_every_token_with_the_alternatives_asked_for(sim: SimProcess) -> None:
    reply = sim.client().chat.completions.create(
        model="m", messages=MESSAGES, logprobs=True, top_logprobs=3, extra_headers={"x-sim-tokens": "5"}
    )
    (choice,) = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert choice.message.content == _words(5, 0)
    _check_logprobs(choice.logprobs.content, _words(5, 0), 3)
    bare = sim.client().chat.completions.create(model="m", messages=MESSAGES, logprobs=True)
    assert bare.choices[0].logprobs is not None and bare.choices[0].logprobs.content
    assert all(entry.top_logprobs == [] for entry in bare.choices[0].logprobs.content)


def test_streamed_logprobs_come_with_each_token(sim: SimProcess) -> None:
    chunks = list(
        sim.client().chat.completions.create(
            model="m",
            messages=MESSAGES,
            n=2,
            logprobs=True,
            top_logprobs=1,
            stream=True,
            extra_headers={"x-sim-tokens": "3"},
        )
    )
    for index in (0, 1):
        content = [
            entry
            for chunk in chunks
            for choice in chunk.choices
            if choice.index == index and choice.logprobs and choice.logprobs.content
            for entry in choice.logprobs.content
        ]
        _check_logprobs(content, _words(3, index), 1)
    same = sim.client().chat.completions.create(
        model="m", messages=MESSAGES, n=2, logprobs=True, top_logprobs=1, extra_headers={"x-sim-tokens": "3"}
    )
    streamed = [
        c.choices[0].logprobs.content[0].logprob for c in chunks if c.choices and c.choices[0].logprobs
    ]
    whole = [e.logprob for ch in same.choices for e in (ch.logprobs.content or [])]  # type: ignore[union-attr]
    assert sorted(streamed) == sorted(whole)  # the same answer, the same numbers


def test_n_with_tool_calls_gives_each_choice_its_own_calls(sim: SimProcess) -> None:
    tools: list[Any] = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    reply = sim.client().chat.completions.create(
        model="m", messages=[{"role": "user", "content": "find it [sim call=lookup]"}], tools=tools, n=2
    )
    ids = [c.message.tool_calls[0].id for c in reply.choices if c.message.tool_calls]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert {c.finish_reason for c in reply.choices} == {"tool_calls"}


def test_logit_bias_is_accepted_and_recorded(sim: SimProcess) -> None:
    sim.client().chat.completions.create(model="m", messages=MESSAGES, logit_bias={"50256": -100})
    assert sim.last_request()["body"]["logit_bias"] == {"50256": -100}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 0}, "n"),
        ({"n": "2"}, "n"),
        ({"logit_bias": {"hello": 1}}, "logit_bias"),
        ({"logit_bias": {"42": 101}}, "logit_bias"),
    ],
)
def test_bad_values_are_a_400_naming_the_parameter(
    sim: SimProcess, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        sim.client().chat.completions.create(model="m", messages=MESSAGES, extra_body=extra)
    assert err.value.param == param
