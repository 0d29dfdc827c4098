"""Every provider adapter through one table of cases: the worker (real nats-server) calls the
simulator over HTTP in each provider's own wire format (OpenAI, Anthropic Messages, Gemini, Azure
OpenAI), and the client-facing answer is OpenAI's, the same for all of them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from aigw_contracts import ChatEnvelope, Prices, UpstreamTarget, UsageEvent, headers, skus
from aigw_contracts.ids import uuid7
from aigw_simulator.providers import THINKING

from .conftest import Harness, Sim, make_envelope, running, start_sim, worker_settings

KEYS = {"anthropic": "sk-ant-sim", "google": "g-sim", "azure": "az-sim", "bedrock": "AKIDSIM:sim-secret"}
PRICES = Prices(
    input=Decimal("0.000003"),
    output=Decimal("0.000015"),
    cached_input=Decimal("3E-7"),
    cache_write=Decimal("0.00000375"),
    cache_write_1h=Decimal("0.000006"),
)
# adapter -> (api, provider, path of the base URL under the simulator's root)
ADAPTERS = {
    "openai": (None, "sim", "/v1"),
    "anthropic": ("anthropic", "anthropic", "/v1"),
    "gemini": ("gemini", "google", "/v1beta"),
    "azure": ("azure", "azure", "/openai"),
    "bedrock": ("bedrock", "bedrock", ""),
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a thing up.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    }
]
PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


@pytest.fixture(params=list(ADAPTERS))
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with running(worker_settings(provider_keys=KEYS, upstream_max_retries=0)) as harness:
        yield harness


def envelope(
    sim: Sim,
    adapter: str,
    content: Any,
    *,
    stream: bool = False,
    body: dict[str, Any] | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> ChatEnvelope:
    api, provider, path = ADAPTERS[adapter]
    env = make_envelope(sim.root + path, "x", stream=stream, include_usage=stream, request_id=uuid7())
    assert env.route is not None
    env.route.upstream = UpstreamTarget(
        id=f"@{provider}/sim-model",
        kind="catalog",
        provider=provider,
        model="sim-model",
        base_url=sim.root + path,
        prices=PRICES,
        api=api,
    )
    env.route.body = {
        "messages": messages
        or [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}],
        **(body or {}),
    }
    return env


async def answer(h: Harness, env: ChatEnvelope) -> dict[str, Any]:
    """The client's answer, the same shape for a whole answer and a stream (its deltas joined)."""
    events = await h.run(env)
    last = events[-1]
    if last.kind == "error":
        return {
            "error": json.loads(last.body)["error"],
            "status": int(last.headers[headers.STATUS]),
            "events": events,
        }
    if not env.request.stream:
        return dict(json.loads(last.body))
    content, reasoning, finish, usage = "", "", None, None
    calls: dict[int, dict[str, Any]] = {}
    for event in events:
        for line in event.body.split(b"\n"):
            if not line.startswith(b"data: {"):
                line = line if line.startswith(b"{") else b""
            raw = line.removeprefix(b"data: ")
            if not raw:
                continue
            chunk = json.loads(raw)
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                for call in delta.get("tool_calls") or ():
                    into = calls.setdefault(
                        call["index"], {"id": None, "function": {"name": "", "arguments": ""}}
                    )
                    into["id"] = into["id"] or call.get("id")
                    function = call.get("function") or {}
                    into["function"]["name"] += function.get("name") or ""
                    into["function"]["arguments"] += function.get("arguments") or ""
                finish = choice.get("finish_reason") or finish
    message: dict[str, Any] = {"content": content, "tool_calls": [calls[i] for i in sorted(calls)]}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}


@pytest.mark.parametrize("stream", [False, True])
async def test_text(h: Harness, sim: Sim, adapter: str, stream: bool) -> None:
    got = await answer(h, envelope(sim, adapter, "hello there [sim tokens=3]", stream=stream))
    (choice,) = got["choices"]
    assert choice["message"]["content"] == "sim0 sim1 sim2"
    assert choice["finish_reason"] == "stop"
    usage = got["usage"]
    # the simulator's rule: words + 4 per message (system + user; directives count as words)
    assert usage["prompt_tokens"] == (2 + 4) + (4 + 4)
    assert usage["completion_tokens"] == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_max_tokens_is_a_length_finish(h: Harness, sim: Sim, adapter: str, stream: bool) -> None:
    env = envelope(sim, adapter, "long [sim tokens=9]", stream=stream, body={"max_completion_tokens": 2})
    (choice,) = (await answer(h, env))["choices"]
    assert choice["message"]["content"] == "sim0 sim1" and choice["finish_reason"] == "length"


@pytest.mark.parametrize("calls", [1, 2])
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_and_parallel_tool_calls(
    h: Harness, sim: Sim, adapter: str, stream: bool, calls: int
) -> None:
    env = envelope(
        sim, adapter, f"find it [sim call=lookup calls={calls}]", stream=stream, body={"tools": TOOLS}
    )
    (choice,) = (await answer(h, env))["choices"]
    assert choice["finish_reason"] == "tool_calls"
    made = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in made] == ["lookup"] * calls
    queries = [json.loads(c["function"]["arguments"])["query"] for c in made]
    assert queries == (["find it"] if calls == 1 else ["find it (1)", "find it (2)"])
    assert len({c["id"] for c in made}) == calls and all(c["id"] for c in made)


async def test_tool_results_go_back_to_the_provider(h: Harness, sim: Sim, adapter: str) -> None:
    """A whole tool round in the conversation: the provider's rules (Anthropic: every tool_use
    answered by a tool_result in the next user turn; Gemini: functionResponse named after its call)
    are what the simulator checks."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather in two places"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"query":"Lisbon"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"query":"Porto"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "call_b", "content": "19 degrees"},
        {"role": "user", "content": "so? [sim echo]"},
    ]
    got = await answer(h, envelope(sim, adapter, None, body={"tools": TOOLS}, messages=messages))
    echoed = got["choices"][0]["message"]["content"]
    assert "Porto" in echoed and "19 degrees" in echoed
    if adapter == "anthropic":
        turns = json.loads(echoed)["messages"]
        assert [t["role"] for t in turns] == ["user", "assistant", "user"]
        results = [b for b in turns[2]["content"] if b["type"] == "tool_result"]
        assert [r["tool_use_id"] for r in results] == ["call_a", "call_b"]  # one turn, both results
    if adapter == "gemini":
        turns = json.loads(echoed)["contents"]
        responses = [p["functionResponse"] for p in turns[2]["parts"] if "functionResponse" in p]
        assert responses == [
            {"name": "lookup", "response": {"temp": 21}},
            {"name": "lookup", "response": {"content": "19 degrees"}},
        ]


async def test_images_reach_the_provider_in_its_form(h: Harness, sim: Sim, adapter: str) -> None:
    content = [
        {"type": "text", "text": "what is this? [sim echo]"},
        {"type": "image_url", "image_url": {"url": PIXEL}},
    ]
    got = await answer(h, envelope(sim, adapter, content))
    echoed = got["choices"][0]["message"]["content"]
    data = PIXEL.partition(",")[2]
    sent = json.loads(echoed)
    if adapter == "anthropic":
        image = sent["messages"][0]["content"][1]
        assert image == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": data},
        }
        assert sent["system"] == [{"type": "text", "text": "Be brief."}]
    elif adapter == "bedrock":
        assert sent["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": data}}}
        assert sent["system"] == [{"text": "Be brief."}]
    elif adapter == "gemini":
        assert sent["contents"][0]["parts"][1] == {"inlineData": {"mimeType": "image/png", "data": data}}
        assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    else:
        assert sent[1]["content"][1]["image_url"]["url"] == PIXEL


@pytest.mark.parametrize("stream", [False, True])
async def test_json_mode(h: Harness, sim: Sim, adapter: str, stream: bool) -> None:
    env = envelope(
        sim, adapter, "give json", stream=stream, body={"response_format": {"type": "json_object"}}
    )
    got = await answer(h, env)
    if adapter == "bedrock":  # Converse has no JSON mode: refused, naming it
        assert (got["status"], got["error"]["param"]) == (400, "response_format")
        return
    (choice,) = got["choices"]
    assert choice["finish_reason"] == "stop" and not choice["message"].get("tool_calls")
    if adapter in ("anthropic", "gemini"):  # JSON asked for in the provider's own way, JSON back
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:
        (record,) = [r for r in sim.requests("give json") if r["body"].get("response_format")][-1:]
        assert record["body"]["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("429", 429, "rate_limit_exceeded"),
        ("context", 400, "context_length_exceeded"),
        ("500", 502, "upstream_error"),
        ("malformed", 502, "upstream_error"),
    ],
)
async def test_errors_map_to_openai_status_and_code(
    h: Harness, sim: Sim, adapter: str, fault: str, status: int, code: str
) -> None:
    got = await answer(h, envelope(sim, adapter, f"fail [sim fault={fault}]"))
    assert (got["status"], got["error"]["code"]) == (status, code)


async def test_overloaded_is_a_retryable_503(h: Harness, sim: Sim, adapter: str) -> None:
    got = await answer(h, envelope(sim, adapter, "busy [sim fault=overloaded]"))
    if adapter in ("anthropic", "gemini", "bedrock"):  # Anthropic's 529, Gemini's and Bedrock's 503
        assert (got["status"], got["error"]["code"]) == (503, "upstream_overloaded")
    else:
        assert got["status"] == 502  # any other 5xx


async def test_a_failure_mid_stream_ends_with_an_error_event(h: Harness, sim: Sim, adapter: str) -> None:
    env = envelope(sim, adapter, "cut [sim fault=stream_error drop_after=3 tokens=8]", stream=True)
    got = await answer(h, env)
    assert got["error"]["code"] == "upstream_error"
    deltas = [e for e in got["events"] if e.kind == "delta"]
    assert b"sim0" in b"".join(d.body for d in deltas)  # part of the answer was out before the error


async def test_anthropic_cache_writes_and_reads_are_priced_as_their_own_lines(h: Harness, sim: Sim) -> None:
    env = envelope(sim, "anthropic", "cached [sim tokens=2 cached_tokens=4 cache_write=5 cache_write_1h=2]")
    got = await answer(h, env)
    details = got["usage"]["prompt_tokens_details"]
    assert details == {"cached_tokens": 4, "cache_write_tokens": 3, "cache_write_1h_tokens": 2}
    prompt = got["usage"]["prompt_tokens"]
    assert prompt == (2 + 4) + (6 + 4)  # everything the model read, as OpenAI counts it
    lines = {line["sku"]: line for line in got["generation_context"]["generated_usage"]}
    assert {sku: (line["quantity"], Decimal(str(line["unit_price"]))) for sku, line in lines.items()} == {
        skus.CHAT_IN: (prompt - 4 - 5, PRICES.input),
        skus.CHAT_OUT: (2, PRICES.output),
        skus.CHAT_IN_CACHED: (4, PRICES.cached_input),
        skus.CHAT_IN_CACHE_WRITE: (3, PRICES.cache_write),
        skus.CHAT_IN_CACHE_WRITE_1H: (2, PRICES.cache_write_1h),
    }
    (usage,) = await h.usage_for(env.request_id)
    billed = UsageEvent.model_validate_json(usage.body)
    assert {line.sku: line.amount for line in billed.lines}[skus.CHAT_IN_CACHE_WRITE_1H] == 2 * Decimal(
        "0.000006"
    )


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_is_billed_as_output_and_reported_as_reasoning(
    h: Harness, sim: Sim, stream: bool
) -> None:
    for adapter in ("anthropic", "gemini"):
        env = envelope(sim, adapter, "think [sim tokens=2]", stream=stream, body={"reasoning_effort": "low"})
        got = await answer(h, env)
        assert got["choices"][0]["message"]["content"] == "sim0 sim1"  # thoughts are not the answer
        # relayed apart: `message.reasoning_content`, in streams `delta.reasoning_content` chunks
        assert got["choices"][0]["message"]["reasoning_content"] == THINKING, adapter
        assert got["usage"]["completion_tokens"] == 2 + 6  # the simulator's thinking is 6 words
        if adapter == "gemini":
            assert got["usage"]["completion_tokens_details"]["reasoning_tokens"] == 6


async def test_thinking_is_not_asked_for_nor_relayed_without_reasoning_effort(h: Harness, sim: Sim) -> None:
    for stream in (False, True):
        got = await answer(h, envelope(sim, "gemini", "think [sim tokens=2]", stream=stream))
        assert "reasoning_content" not in got["choices"][0]["message"], stream


async def test_gemini_cached_tokens_are_cache_reads(h: Harness, sim: Sim) -> None:
    got = await answer(h, envelope(sim, "gemini", "again [sim cached_tokens=6]"))
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] == 6
    skus_billed = {line["sku"] for line in got["generation_context"]["generated_usage"]}
    assert skus.CHAT_IN_CACHED in skus_billed and skus.CHAT_IN_CACHE_WRITE not in skus_billed


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_gemini_blocks_is_a_content_filter_400(h: Harness, sim: Sim, stream: bool) -> None:
    got = await answer(h, envelope(sim, "gemini", "bad [sim fault=safety]", stream=stream))
    assert (got["status"], got["error"]["code"]) == (400, "content_filter")


async def test_an_anthropic_refusal_is_a_content_filter_finish(h: Harness, sim: Sim) -> None:
    (choice,) = (await answer(h, envelope(sim, "anthropic", "bad [sim fault=safety]")))["choices"]
    assert choice["finish_reason"] == "content_filter"


@pytest.mark.parametrize(("adapter_name", "param"), [("anthropic", "logprobs"), ("gemini", "logit_bias")])
async def test_a_parameter_the_provider_cannot_honour_is_a_400_naming_it(
    h: Harness, sim: Sim, adapter_name: str, param: str
) -> None:
    value: Any = True if param == "logprobs" else {"50256": -100}
    got = await answer(h, envelope(sim, adapter_name, "hi", body={param: value}))
    assert got["status"] == 400 and got["error"]["param"] == param


async def test_hints_without_an_equivalent_are_dropped(h: Harness, sim: Sim) -> None:
    env = envelope(
        sim, "anthropic", "hi [sim echo]", body={"seed": 7, "presence_penalty": 0.5, "user": "u-1"}
    )
    got = await answer(h, env)
    assert "seed" not in got["choices"][0]["message"]["content"]


async def test_the_provider_key_goes_in_the_providers_header(h: Harness, sim: Sim, keyed_sim: Sim) -> None:
    """A simulator that wants `sk-sim-right` refuses the worker's key for each provider the way
    that provider does (Gemini: a 400 `API key not valid`); the client sees the gateway's fault."""
    for adapter in ("anthropic", "gemini", "azure"):
        got = await answer(h, envelope(keyed_sim, adapter, "hi"))
        assert got["error"]["code"] == "upstream_auth_failed", adapter


async def test_bedrock_requests_are_signed_with_sigv4(tmp_path: Any) -> None:
    """A simulator that checks SigV4 signatures (computed from the specification, not by botocore)
    takes the worker's, and refuses one made with another secret as Bedrock does (403)."""
    signing, proc = start_sim(tmp_path, "--require-key", "AKIDSIM:sim-secret")
    try:
        async with running(worker_settings(provider_keys=KEYS)) as right:
            for stream in (False, True):
                env = envelope(signing, "bedrock", "signed [sim tokens=2]", stream=stream)
                got = await answer(right, env)
                assert got["choices"][0]["message"]["content"] == "sim0 sim1"
        async with running(worker_settings(provider_keys={"bedrock": "AKIDSIM:wrong-secret"})) as wrong:
            got = await answer(wrong, envelope(signing, "bedrock", "signed"))
        assert got["error"]["code"] == "upstream_auth_failed"
    finally:
        proc.stop()


async def test_a_malformed_stream_is_an_upstream_error(h: Harness, sim: Sim, adapter: str) -> None:
    got = await answer(h, envelope(sim, adapter, "junk [sim fault=malformed]", stream=True))
    assert (got["status"], got["error"]["code"]) == (502, "upstream_error")


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prefill_is_continued_and_the_answer_starts_with_it(
    h: Harness, sim: Sim, adapter: str, stream: bool
) -> None:
    messages = [
        {"role": "user", "content": "go on [sim tokens=2]"},
        {"role": "assistant", "content": "PREFILL:"},
    ]
    env = envelope(sim, adapter, None, stream=stream, messages=messages)
    assert env.route is not None
    env.route.prefill = "PREFILL:"
    (choice,) = (await answer(h, env))["choices"]
    assert choice["message"]["content"] == "PREFILL:sim0 sim1"


async def test_a_rate_limit_keeps_the_providers_retry_after(h: Harness, sim: Sim, adapter: str) -> None:
    """Anthropic and OpenAI say it in a header, Gemini in its error body's RetryInfo; the client
    gets it as Retry-After either way (here past the worker's wait, so it is not retried)."""
    got = await answer(h, envelope(sim, adapter, "slow down [sim fault=429 retry_after=42]"))
    assert got["status"] == 429
    if adapter != "bedrock":  # Bedrock's throttling says no time
        assert got["events"][-1].headers[headers.RETRY_AFTER] == "42"
