"""Unit tests: pricing, chunk templates, SSE parsing and coalescing, upstream error mapping."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from aigw_contracts import GenerationContext, Prices, Usage, skus
from aigw_contracts.api import ChatCompletionChunk, ChunkChoice, ChunkDelta
from aigw_contracts.errors import DeadlineExceeded, InvalidRequest, RateLimited, UpstreamError
from aigw_worker.assemble import StreamAssembler
from aigw_worker.chunks import ChunkWriter, json_string
from aigw_worker.pricing import estimate_tokens, estimated_usage, normalized_usage, price_lines, prompt_chars
from aigw_worker.settings import WorkerSettings
from aigw_worker.sse import SSEParser, SSEvent
from aigw_worker.upstream import retry_after, status_error, transport_error

SEED_PRICES = Prices(input=Decimal("2.5E-7"), output=Decimal("0.000002"), cached_input=Decimal("2.5E-8"))


# ---------------------------------------------------------------- pricing
def test_seed_lines_are_exact_decimals() -> None:
    # The seed: 84 uncached + 1792 cached prompt tokens (OpenAI semantics: prompt_tokens = 1876), 16 out.
    usage = Usage.model_validate(
        {"prompt_tokens": 1876, "completion_tokens": 16, "prompt_tokens_details": {"cached_tokens": 1792}}
    )
    lines = {line.sku: line for line in price_lines(usage, SEED_PRICES, "@openai/gpt-5-mini")}
    assert [*lines] == [skus.CHAT_IN, skus.CHAT_OUT, skus.CHAT_IN_CACHED]
    assert (lines[skus.CHAT_IN].quantity, lines[skus.CHAT_IN].amount) == (84, Decimal("0.000021"))
    assert (lines[skus.CHAT_OUT].quantity, lines[skus.CHAT_OUT].amount) == (16, Decimal("0.000032"))
    assert (lines[skus.CHAT_IN_CACHED].quantity, lines[skus.CHAT_IN_CACHED].amount) == (
        1792,
        Decimal("0.0000448"),
    )
    assert all(line.description == "Inference for AI model '@openai/gpt-5-mini'" for line in lines.values())
    # As JSON the amounts are the seed's numbers exactly.
    dumped = {d["sku"]: d for d in (json.loads(line.model_dump_json()) for line in lines.values())}
    assert dumped[skus.CHAT_IN]["amount"] == 0.000021 and dumped[skus.CHAT_OUT]["amount"] == 0.000032
    assert dumped[skus.CHAT_IN_CACHED]["amount"] == 0.0000448


def test_no_cached_line_without_cached_tokens_and_own_endpoints_price_zero() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=3, total_tokens=13)
    lines = price_lines(usage, Prices(), "own/x")
    assert [line.sku for line in lines] == [skus.CHAT_IN, skus.CHAT_OUT]
    assert [line.quantity for line in lines] == [10, 3]
    assert all(line.amount == 0 for line in lines)


def test_estimates_say_so_and_never_bill_zero_for_text() -> None:
    assert (
        estimate_tokens(0) == 0
        and estimate_tokens(1) == 1
        and estimate_tokens(8) == 2
        and estimate_tokens(9) == 3
    )
    body = {
        "messages": [
            {"role": "user", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 8}]},
        ]
    }
    assert prompt_chars(body) == 48
    usage = estimated_usage(prompt_chars(body), 21)
    assert (usage.prompt_tokens, usage.completion_tokens) == (12, 6)
    lines = price_lines(usage, SEED_PRICES, "@sim/sim-model", estimated=True)
    assert all(line.description.endswith(" (estimated)") for line in lines)
    assert sum(line.amount for line in lines) == Decimal("2.5E-7") * 12 + Decimal("0.000002") * 6


def test_upstream_usage_is_normalized_keeping_details() -> None:
    usage = normalized_usage(
        {"prompt_tokens": 5, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 1}}
    )
    assert usage is not None
    assert usage.total_tokens == 7 and usage.cached_tokens == 0
    assert json.loads(usage.model_dump_json())["completion_tokens_details"] == {"reasoning_tokens": 1}
    assert normalized_usage(None) is None and normalized_usage({"prompt_tokens": "x"}) is None


# ---------------------------------------------------------------- chunk templates
TEXTS = [
    "",
    "hello",
    'quote " backslash \\ slash /',
    "line\nbreak\ttab\r\x00\x1f\x7f",
    "ünïcødé 日本 🎉",
    "\u2028\u2029",
]


def _model_chunk(fingerprint: str | None, include_usage: bool, delta: ChunkDelta) -> bytes:
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    chunk = ChatCompletionChunk(
        id="chatcmpl-r1",
        object="chat.completion.chunk",
        created=1755876425,
        model="@openai/gpt-5-mini",
        system_fingerprint=fingerprint,
        choices=[ChunkChoice(index=0, delta=delta, logprobs=None, finish_reason=None)],
        **extra,
    )
    return chunk.model_dump_json(exclude_unset=True).encode()


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("fingerprint", [None, "fp_2su4hm"])
@pytest.mark.parametrize("text", TEXTS)
def test_delta_templates_equal_the_models_json(
    include_usage: bool, fingerprint: str | None, text: str
) -> None:
    writer = ChunkWriter("chatcmpl-r1", 1755876425, "@openai/gpt-5-mini", include_usage)
    writer.begin(fingerprint)
    assert writer.first(text) == _model_chunk(
        fingerprint, include_usage, ChunkDelta(role="assistant", content=text)
    )
    assert writer.content(text) == _model_chunk(fingerprint, include_usage, ChunkDelta(content=text))
    assert json_string(text) == ChunkDelta(content=text).model_dump_json(exclude_unset=True).encode()[11:-1]


def test_lone_surrogates_stay_valid_json() -> None:
    assert json.loads(json_string("a\ud800b")) == "a\ud800b"


def _final_lines(include_usage: bool) -> list[dict[str, Any]]:
    writer = ChunkWriter("chatcmpl-r1", 1, "m", include_usage)
    writer.begin("fp")
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    context = GenerationContext(generated_usage=price_lines(usage, SEED_PRICES, "m"), runned_functions=[])
    return [json.loads(line) for line in writer.final("stop", usage, context).split(b"\n")]


def test_final_without_include_usage_is_one_finish_chunk_with_usage() -> None:
    (only,) = _final_lines(False)
    assert only["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert only["usage"]["total_tokens"] == 5 and only["generation_context"]["runned_functions"] == []
    assert [line["sku"] for line in only["generation_context"]["generated_usage"]] == [
        skus.CHAT_IN,
        skus.CHAT_OUT,
    ]


def test_final_with_include_usage_is_openais_two_chunks() -> None:
    finish, usage = _final_lines(True)
    assert finish["usage"] is None and finish["choices"][0]["finish_reason"] == "stop"
    assert "generation_context" not in finish
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    assert usage["generation_context"]["generated_usage"]
    assert finish["id"] == usage["id"] == "chatcmpl-r1" and usage["object"] == "chat.completion.chunk"


# ---------------------------------------------------------------- SSE parsing
def _data(events: list[SSEvent]) -> list[bytes]:
    return [e.data for e in events]


def test_sse_lines_split_across_reads_are_joined() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"a":') == []
    assert parser.feed(b"1}\n") == []
    assert _data(parser.feed(b"\ndata: [DO")) == [b'{"a":1}']
    assert _data(parser.feed(b"NE]\n\n")) == [b"[DONE]"]


def test_sse_crlf_split_between_reads_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n") == []  # the rest of "\r\n", not an empty line
    assert _data(parser.feed(b"\r\n")) == [b"x"]


def test_sse_comments_multiline_data_and_event_names() -> None:
    parser = SSEParser()
    events = parser.feed(b": keep-alive\n\ndata: one\ndata:two\n\nevent: error\ndata: {}\n\n")
    assert events == [SSEvent(b"one\ntwo"), SSEvent(b"{}", "error")]


def test_sse_close_flushes_an_event_without_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert _data(parser.close()) == [b"[DONE]"]


# ---------------------------------------------------------------- coalescing
def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": "up",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp_up",
    }
    body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    body.update(extra)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _assembler(prefill: str | None = None, include_usage: bool = False) -> StreamAssembler:
    return StreamAssembler(ChunkWriter("chatcmpl-r1", 1, "@m", include_usage), prefill)


def test_all_tokens_of_one_read_become_one_delta_starting_with_the_prefill() -> None:
    parser, asm = SSEParser(), _assembler(prefill="PRE:")
    read = _chunk({"role": "assistant", "content": ""}) + _chunk({"content": "a"}) + _chunk({"content": " b"})
    (first,) = asm.feed(parser.feed(read))
    chunk = json.loads(first)
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": "PRE:a b"}
    assert chunk["system_fingerprint"] == "fp_up" and chunk["id"] == "chatcmpl-r1" and "usage" not in chunk
    # the next read: one more delta, without the role
    (second,) = asm.feed(parser.feed(_chunk({"content": "c"}) + _chunk({"content": "d"})))
    assert json.loads(second)["choices"][0]["delta"] == {"content": "cd"}
    # finish, usage and [DONE] in one read: nothing more to send as a delta
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    tail = (
        _chunk({}, "stop")
        + b'data: {"choices":[],"usage":'
        + json.dumps(usage).encode()
        + b"}\n\ndata: [DONE]\n\n"
    )
    assert asm.feed(parser.feed(tail)) == []
    assert asm.done and asm.finish_reason == "stop" and asm.usage == usage and asm.completion_chars == 5


def test_a_role_only_first_read_still_starts_the_stream() -> None:
    asm = _assembler(include_usage=True)
    (first,) = asm.feed(SSEParser().feed(_chunk({"role": "assistant", "content": ""})))
    chunk = json.loads(first)
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": ""} and chunk["usage"] is None


def test_tool_call_fragments_merge_per_index_and_split_across_indices() -> None:
    parser, asm = SSEParser(), _assembler()
    call0 = {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}
    read = (
        _chunk({"role": "assistant", "content": None, "tool_calls": [call0]})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]})
        + _chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "g", "arguments": "{}"},
                    }
                ]
            }
        )
    )
    first, second = (json.loads(p)["choices"][0]["delta"] for p in asm.feed(parser.feed(read)))
    assert first["role"] == "assistant"
    assert first["tool_calls"] == [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}}
    ]
    assert second["tool_calls"] == [
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}}
    ]
    assert "role" not in second


def test_logprobs_of_coalesced_tokens_are_concatenated() -> None:
    asm = _assembler()
    lp = lambda t: {"content": [{"token": t, "logprob": -0.1, "bytes": None, "top_logprobs": []}]}  # noqa: E731
    read = b"".join(
        b"data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"content": t}, "logprobs": lp(t)}]}).encode()
        + b"\n\n"
        for t in ("a", "b")
    )
    (payload,) = asm.feed(SSEParser().feed(read))
    choice = json.loads(payload)["choices"][0]
    assert choice["delta"]["content"] == "ab"
    assert [t["token"] for t in choice["logprobs"]["content"]] == ["a", "b"]


def test_error_chunk_and_malformed_json_are_upstream_errors() -> None:
    with pytest.raises(UpstreamError, match="overloaded"):
        _assembler().feed(SSEParser().feed(b'data: {"error": {"message": "overloaded"}}\n\n'))
    with pytest.raises(UpstreamError, match="malformed"):
        _assembler().feed(SSEParser().feed(b"data: {not json\n\n"))


# ---------------------------------------------------------------- upstream errors
def test_429_keeps_retry_after() -> None:
    err = status_error(429, b'{"error": {"message": "slow down"}}', httpx.Headers({"retry-after": "7"}))
    assert isinstance(err, RateLimited) and err.retry_after == 7 and "slow down" in err.message
    assert retry_after(httpx.Headers({"retry-after-ms": "1500", "retry-after": "9"})) == 1.5
    assert 55 <= (retry_after(httpx.Headers({"retry-after": _http_date(60)})) or 0) <= 60


def _http_date(seconds_ahead: float) -> str:
    import email.utils
    import time

    return email.utils.formatdate(time.time() + seconds_ahead, usegmt=True)


def test_400_and_422_carry_the_upstreams_message_and_param() -> None:
    for status in (400, 422):
        err = status_error(
            status, b'{"error": {"message": "bad temperature", "param": "temperature"}}', httpx.Headers()
        )
        assert isinstance(err, InvalidRequest) and err.status == 400
        assert (err.message, err.param) == ("bad temperature", "temperature")


def test_401_blames_the_gateways_credentials_not_the_clients_key() -> None:
    for status in (401, 403):
        err = status_error(status, b'{"error": {"message": "Incorrect API key"}}', httpx.Headers())
        assert isinstance(err, UpstreamError) and err.status == 502
        assert "gateway" in err.message and "not a problem with your API key" in err.message


def test_other_statuses_are_502_with_the_status_and_timeouts_are_504() -> None:
    err = status_error(503, b"<html>down</html>", httpx.Headers())
    assert err.status == 502 and "503" in err.message
    assert isinstance(transport_error(httpx.ReadTimeout("x")), DeadlineExceeded)
    assert isinstance(transport_error(httpx.ConnectTimeout("x")), DeadlineExceeded)
    connect = transport_error(httpx.ConnectError("x"), before_response=True)
    assert isinstance(connect, UpstreamError) and connect.status == 502
    assert transport_error(httpx.RemoteProtocolError("x")).status == 502


def test_provider_keys_from_env_with_openai_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_PROVIDER_KEYS", '{"anthropic": "sk-ant-1"}')
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-2")
    settings = WorkerSettings()
    assert settings.provider_key("anthropic") == "sk-ant-1"
    assert settings.provider_key("openai") == "sk-openai-2"
    assert settings.provider_key("mistral") is None
    assert "sk-ant-1" not in repr(settings) and "sk-openai-2" not in repr(settings)


def test_query_rewrite_calls_are_priced_under_their_own_skus() -> None:
    from decimal import Decimal

    from aigw_contracts import Prices, Usage, skus
    from aigw_worker.pricing import price_lines

    usage = Usage(prompt_tokens=10, completion_tokens=4, total_tokens=14)
    prices = Prices(input=Decimal("2.5E-7"), output=Decimal("0.000002"))
    lines = price_lines(usage, prices, "@openai/gpt-5-nano", purpose="query_rewrite")
    assert [(line.sku, line.quantity) for line in lines] == [(skus.REWRITE_IN, 10), (skus.REWRITE_OUT, 4)]
    assert lines[0].amount == Decimal("0.0000025") and "rewriting" in lines[0].description
