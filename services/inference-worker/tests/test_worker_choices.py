"""Several choices (`n`) and logprobs: chunk templates per choice, the assembler keeping interleaved
choices apart, and the closing chunks of each choice."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import httpx
import pytest

from aigw_contracts import GenerationContext, Usage
from aigw_contracts.api import ChatCompletionChunk, ChunkChoice, ChunkDelta
from aigw_worker.assemble import StreamAssembler
from aigw_worker.chunks import ChunkWriter
from aigw_worker.sse import SSEParser

from .conftest import Sim


def _up(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
    """One upstream chunk of choice `index`, as an SSE event."""
    body = {
        "id": "up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp_up",
        "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _lp(*tokens: str) -> dict[str, Any]:
    return {
        "content": [
            {"token": t, "logprob": -0.1, "bytes": list(t.encode()), "top_logprobs": []} for t in tokens
        ]
    }


def _choices(payloads: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for payload in payloads:
        (choice,) = json.loads(payload)["choices"]
        out.append(choice)
    return out


@pytest.mark.parametrize("include_usage", [False, True])
def test_templates_of_other_choices_equal_the_models_json(include_usage: bool) -> None:
    writer = ChunkWriter("chatcmpl-r1", 1755876425, "@m", include_usage)
    writer.begin("fp")
    for index in (0, 1, 17):
        for text, delta in (
            ('a"b', ChunkDelta(role="assistant", content='a"b')),
            ("cd", ChunkDelta(content="cd")),
        ):
            extra: dict[str, Any] = {"usage": None} if include_usage else {}
            expected = ChatCompletionChunk(
                id="chatcmpl-r1",
                object="chat.completion.chunk",
                created=1755876425,
                model="@m",
                system_fingerprint="fp",
                choices=[ChunkChoice(index=index, delta=delta, logprobs=None, finish_reason=None)],
                **extra,
            ).model_dump_json(exclude_unset=True)
            made = writer.first(text, index) if delta.role else writer.content(text, index)
            assert made == expected.encode()


def test_interleaved_choices_become_one_event_per_choice_each_starting_with_the_prefill() -> None:
    asm = StreamAssembler(ChunkWriter("chatcmpl-r1", 1, "@m", False), "PRE:", n=2)
    parser = SSEParser()
    read = (
        _up(0, {"role": "assistant", "content": ""})
        + _up(1, {"role": "assistant", "content": ""})
        + _up(0, {"content": "a"})
        + _up(1, {"content": "x"})
        + _up(0, {"content": " b"})
        + _up(1, {"content": " y"})
    )
    first = _choices(asm.feed(parser.feed(read)))
    assert first == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "PRE:a b"},
            "logprobs": None,
            "finish_reason": None,
        },
        {
            "index": 1,
            "delta": {"role": "assistant", "content": "PRE:x y"},
            "logprobs": None,
            "finish_reason": None,
        },
    ]
    second = _choices(
        asm.feed(parser.feed(_up(1, {"content": "z"}) + _up(0, {}, "length") + _up(1, {}, "stop")))
    )
    assert second == [{"index": 1, "delta": {"content": "z"}, "logprobs": None, "finish_reason": None}]
    assert asm.finish_reasons() == {0: "length", 1: "stop"}
    assert asm.completion_chars == len("a b") + len("x yz")


def test_a_choice_the_upstream_never_sent_still_starts_with_the_prefill() -> None:
    asm = StreamAssembler(ChunkWriter("chatcmpl-r1", 1, "@m", False), "PRE:", n=3)
    asm.feed(SSEParser().feed(_up(0, {"role": "assistant", "content": "only"}) + _up(0, {}, "stop")))
    closing = _choices(asm.close())
    assert [(c["index"], c["delta"]) for c in closing] == [
        (1, {"role": "assistant", "content": "PRE:"}),
        (2, {"role": "assistant", "content": "PRE:"}),
    ]
    assert asm.finish_reasons() == {0: "stop", 1: "stop", 2: "stop"}


def test_logprobs_of_one_read_are_coalesced_per_choice_and_kept_with_their_text() -> None:
    asm = StreamAssembler(ChunkWriter("chatcmpl-r1", 1, "@m", True), None, n=2)
    read = (
        _up(0, {"role": "assistant", "content": ""})
        + _up(0, {"content": "a"}, logprobs=_lp("a"))
        + _up(1, {"content": "x"}, logprobs=_lp("x"))
        + _up(0, {"content": "b"}, logprobs=_lp("b"))
    )
    zero, one = (json.loads(p) for p in asm.feed(SSEParser().feed(read)))
    assert zero["usage"] is None and zero["choices"][0]["delta"] == {"role": "assistant", "content": "ab"}
    assert [e["token"] for e in zero["choices"][0]["logprobs"]["content"]] == ["a", "b"]
    assert one["choices"][0]["index"] == 1 and one["choices"][0]["delta"]["content"] == "x"
    assert [e["token"] for e in one["choices"][0]["logprobs"]["content"]] == ["x"]


def test_one_choice_stays_on_the_template_path() -> None:
    """n=1 without logprobs: the hot path's bytes are unchanged by the per-choice machinery."""
    writer = ChunkWriter("chatcmpl-r1", 1, "@m", False)
    asm = StreamAssembler(writer, None)
    (payload,) = asm.feed(SSEParser().feed(_up(0, {"role": "assistant", "content": "hi"})))
    assert payload == writer.first("hi")


def _final(finish: Any, include_usage: bool, annotations: Any = None) -> list[dict[str, Any]]:
    writer = ChunkWriter("chatcmpl-r1", 1, "m", include_usage)
    writer.begin(None)
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    payload = writer.final(finish, usage, GenerationContext(), annotations)
    return [json.loads(line) for line in payload.split(b"\n")]


def test_final_has_a_finish_chunk_per_choice_and_usage_once() -> None:
    first, last = _final({1: "length", 0: "stop"}, False)
    assert first["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert "usage" not in first and "generation_context" not in first
    assert last["choices"] == [{"index": 1, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    assert last["usage"]["completion_tokens"] == 4 and "generation_context" in last
    zero, one, usage = _final({0: "stop", 1: "stop"}, True)
    assert zero["usage"] is None and one["usage"] is None and one["choices"][0]["index"] == 1
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == 7


def test_final_annotations_go_to_their_choice() -> None:
    cite = [
        {"type": "url_citation", "url_citation": {"start_index": 0, "end_index": 3, "title": "t", "url": "u"}}
    ]
    lines = _final({0: "stop", 1: "stop"}, False, {0: [], 1: cite})
    assert lines[0]["choices"][0]["index"] == 1 and lines[0]["choices"][0]["delta"]["annotations"] == cite
    assert [line["choices"][0]["finish_reason"] for line in lines[1:]] == ["stop", "stop"]


@pytest.mark.parametrize("read_size", [7, 64, 100_000])
def test_a_real_upstreams_n2_logprobs_stream_accumulates_to_its_whole_answer(
    sim: Sim, read_size: int
) -> None:
    """The simulator's interleaved stream, cut into reads of any size, gives the client the same
    texts and logprobs per choice as the simulator's non-stream answer to the same request."""
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "same [sim tokens=5]"}],
        "n": 2,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = httpx.post(f"{sim.url}/chat/completions", json=body, timeout=5).json()
    raw = httpx.post(f"{sim.url}/chat/completions", json={**body, "stream": True}, timeout=5).content
    asm = StreamAssembler(ChunkWriter("chatcmpl-r1", 1, "@m", False), "P:", n=2)
    parser = SSEParser()
    payloads = []
    for start in range(0, len(raw), read_size):
        payloads += asm.feed(parser.feed(raw[start : start + read_size]))
    payloads += asm.feed(parser.close()) + asm.close()
    texts: dict[int, str] = defaultdict(str)
    tokens: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for choice in _choices(payloads):
        texts[choice["index"]] += choice["delta"].get("content") or ""
        tokens[choice["index"]] += (choice["logprobs"] or {}).get("content") or []
    for choice in whole["choices"]:
        assert texts[choice["index"]] == "P:" + choice["message"]["content"]
        assert tokens[choice["index"]] == choice["logprobs"]["content"]
    assert asm.finish_reasons() == {0: "stop", 1: "stop"} and asm.done


def test_reasoning_content_of_an_openai_compatible_upstream_is_relayed_coalesced_and_not_said() -> None:
    """DeepSeek, vLLM and OpenRouter stream thinking as `delta.reasoning_content`: it reaches the
    client in its own field (one event per read, like content), never as the answer's text."""
    asm = StreamAssembler(ChunkWriter("chatcmpl-r1", 1, "@m", False), "PRE:", keep=True)
    parser = SSEParser()
    read = (
        _up(0, {"role": "assistant", "content": ""})
        + _up(0, {"reasoning_content": "Let me "})
        + _up(0, {"reasoning_content": "think."})
    )
    (first,) = _choices(asm.feed(parser.feed(read)))
    assert first["delta"] == {"role": "assistant", "content": "PRE:", "reasoning_content": "Let me think."}
    (more,) = _choices(asm.feed(parser.feed(_up(0, {"reasoning_content": "More."}))))
    assert more["delta"] == {"reasoning_content": "More."}
    (text,) = _choices(asm.feed(parser.feed(_up(0, {"content": "answer"}))))
    assert text["delta"] == {"content": "answer"}
    assert asm.said == ["answer"]  # a tool loop's next round or citations see the answer only
    assert asm.completion_chars == len("Let me think.More.answer")
