"""The worker service against a real nats-server (in-process, the production wiring), calling the real simulator
over HTTP: envelope in, numbered events out, then the usage event."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aigw_contracts import GeneratedUsage, UsageEvent, headers, skus, subjects
from aigw_contracts.ids import uuid7
from aigw_contracts.knowledge import Grounding

from .conftest import (
    GATEWAY_SLUG,
    INSTRUCTIONS,
    PARAMS,
    SIM_PRICES,
    Event,
    Harness,
    Sim,
    make_envelope,
    running,
    worker_settings,
)


def _json(event: Event) -> dict[str, Any]:
    return dict(json.loads(event.body))


def _assert_exact_lines(lines: list[dict[str, Any]], prompt: int, cached: int, completion: int) -> None:
    by_sku = {line["sku"]: line for line in lines}
    assert by_sku[skus.CHAT_IN]["quantity"] == prompt - cached
    assert by_sku[skus.CHAT_OUT]["quantity"] == completion
    assert (skus.CHAT_IN_CACHED in by_sku) == (cached > 0)
    for line in lines:
        assert Decimal(repr(line["amount"])) == Decimal(repr(line["unit_price"])) * line["quantity"]
    assert Decimal(repr(by_sku[skus.CHAT_IN]["unit_price"])) == SIM_PRICES.input
    assert Decimal(repr(by_sku[skus.CHAT_OUT]["unit_price"])) == SIM_PRICES.output


async def test_stream_events_are_numbered_and_the_last_chunk_carries_usage(
    harness: Harness, sim: Sim
) -> None:
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} [sim tokens=7 cached_tokens=3]", stream=True)
    events = await harness.run(env)
    assert [e.seq for e in events] == list(range(len(events)))
    assert [e.kind for e in events[:-1]] == ["delta"] * (len(events) - 1) and events[-1].kind == "final"
    first = events[0].headers
    assert first[headers.GATEWAY] == GATEWAY_SLUG and json.loads(first[headers.PARAMS]) == PARAMS
    assert all(headers.GATEWAY not in e.headers for e in events[1:])
    deltas = [_json(e) for e in events[:-1]]
    assert deltas[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(d["choices"][0]["delta"].get("content", "") for d in deltas)
    assert text.split() == [f"sim{i}" for i in range(7)]
    assert all("usage" not in d for d in deltas)
    (final,) = events[-1].body.split(b"\n")  # without include_usage: one closing chunk
    closing = json.loads(final)
    ids = {d["id"] for d in deltas} | {closing["id"]}
    assert ids == {f"chatcmpl-{env.request_id}"}
    assert {d["model"] for d in deltas} == {"@sim/sim-model"} and closing["system_fingerprint"] == "fp_sim"
    assert closing["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    usage = closing["usage"]
    assert usage["completion_tokens"] == 7 and usage["prompt_tokens_details"]["cached_tokens"] == 3
    _assert_exact_lines(closing["generation_context"]["generated_usage"], usage["prompt_tokens"], 3, 7)
    # what went upstream: the routed messages, the upstream's model name, and a stream that reports usage
    (record,) = sim.requests(marker)
    body = record["body"]
    assert body["model"] == "sim-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True} and body["temperature"] == 0.5
    assert body["messages"][0] == {"role": "system", "content": INSTRUCTIONS}


async def test_include_usage_gets_null_usage_on_every_chunk_and_a_usage_chunk(
    harness: Harness, sim: Sim
) -> None:
    env = make_envelope(sim.url, "count [sim tokens=4]", stream=True, include_usage=True)
    events = await harness.run(env)
    for delta in events[:-1]:
        assert _json(delta)["usage"] is None
    finish, usage_chunk = (json.loads(line) for line in events[-1].body.split(b"\n"))
    assert finish["usage"] is None and finish["choices"][0]["finish_reason"] == "stop"
    assert "generation_context" not in finish
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 4
    _assert_exact_lines(
        usage_chunk["generation_context"]["generated_usage"], usage_chunk["usage"]["prompt_tokens"], 0, 4
    )


async def test_non_stream_answer_is_a_chat_completion_with_exact_lines(harness: Harness, sim: Sim) -> None:
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} [sim tokens=6 cached_tokens=2]")
    (event,) = await harness.run(env)
    assert event.kind == "final" and event.seq == 0 and event.headers[headers.GATEWAY] == GATEWAY_SLUG
    body = _json(event)
    assert body["id"] == f"chatcmpl-{env.request_id}" and body["object"] == "chat.completion"
    assert body["model"] == "@sim/sim-model" and body["service_tier"] == "default"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and len(message["content"].split()) == 6
    assert message["refusal"] is None and message["annotations"] == [] and message["tool_calls"] == []
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    _assert_exact_lines(body["generation_context"]["generated_usage"], usage["prompt_tokens"], 2, 6)
    assert body["generation_context"]["runned_functions"] == []
    (record,) = sim.requests(marker)
    assert "stream" not in record["body"] and "stream_options" not in record["body"]


async def test_the_answer_contains_the_prefill_stream_and_not(harness: Harness, sim: Sim) -> None:
    (event,) = await harness.run(make_envelope(sim.url, "echo me [sim echo=1]", prefill="PREFILL:"))
    content = _json(event)["choices"][0]["message"]["content"]
    assert content.startswith("PREFILL:")
    received = json.loads(content.removeprefix("PREFILL:"))
    assert received[-1] == {"role": "assistant", "content": "PREFILL:"}  # the upstream continues it
    events = await harness.run(make_envelope(sim.url, "go [sim tokens=3]", prefill="PREFILL:", stream=True))
    first = _json(events[0])["choices"][0]["delta"]
    assert first["role"] == "assistant" and first["content"].startswith("PREFILL:")
    text = "".join(_json(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text.removeprefix("PREFILL:").split() == ["sim0", "sim1", "sim2"]


async def test_usage_event_follows_with_its_msg_id(harness: Harness, sim: Sim) -> None:
    env = make_envelope(sim.url, "bill me [sim tokens=5]", metadata={"foo": "bar"})
    (final,) = await harness.run(env)
    (event,) = await harness.usage_for(env.request_id)
    assert event.headers["Nats-Msg-Id"] == f"{env.request_id}:inference"
    usage = UsageEvent.model_validate_json(event.body)
    assert (usage.source, usage.status, usage.tenant, usage.key_id) == (
        "inference",
        "completed",
        "t-worker",
        "k-worker",
    )
    assert (
        usage.upstream == "@sim/sim-model" and usage.model == "sim-model" and usage.metadata == {"foo": "bar"}
    )
    answered = _json(final)["generation_context"]["generated_usage"]
    assert [json.loads(line.model_dump_json()) for line in usage.lines] == answered
    assert usage.latency_ms is not None and usage.ttft_ms is not None


async def test_upstream_429_is_a_429_error_event_with_retry_after(harness: Harness, sim: Sim) -> None:
    # a wait beyond `upstream_retry_after_max` is not retried: the client gets it at once
    env = make_envelope(sim.url, "x [sim fault=429 retry_after=30]", stream=True)
    (event,) = await harness.run(env)
    assert event.kind == "error" and event.seq == 0
    assert event.headers[headers.STATUS] == "429" and event.headers[headers.RETRY_AFTER] == "30"
    assert event.headers[headers.GATEWAY] == GATEWAY_SLUG  # the first event, even an error, says what ran
    error = _json(event)["error"]
    assert error["code"] == "rate_limit_exceeded" and "rate limited" in error["message"]
    assert not await _usage_events(harness, env.request_id)  # the upstream billed nothing


async def _usage_events(harness: Harness, request_id: str) -> list[Event]:
    return [e for e in harness.usage if request_id.encode() in e.body]


async def test_upstream_500_is_a_502(harness: Harness, sim: Sim) -> None:
    (event,) = await harness.run(make_envelope(sim.url, "x [sim fault=500]"))
    assert event.kind == "error" and event.headers[headers.STATUS] == "502"
    assert "500" in _json(event)["error"]["message"]


async def test_drop_mid_stream_sends_deltas_then_an_error_and_bills_what_was_made(
    harness: Harness, sim: Sim
) -> None:
    env = make_envelope(sim.url, "x [sim fault=drop drop_after=3 tokens=20]", stream=True)
    events = await harness.run(env)
    assert events[0].kind == "delta" and events[-1].kind == "error"
    assert events[-1].headers[headers.STATUS] == "502" and events[-1].seq == len(events) - 1
    text = "".join(_json(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text.split() == ["sim0", "sim1", "sim2"]
    (usage_msg,) = await harness.usage_for(env.request_id)
    usage = UsageEvent.model_validate_json(usage_msg.body)
    assert usage.status == "failed"
    out = next(line for line in usage.lines if line.sku == skus.CHAT_OUT)
    assert out.quantity > 0 and out.description.endswith("(estimated)")


async def test_cancel_closes_the_upstream_connection(harness: Harness, sim: Sim) -> None:
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} [sim fault=hang]", stream=True)
    await harness.send(env)
    await harness.wait_for(
        lambda: [r for r in sim.requests(marker) if r["outcome"] == "hang"], what="the hang"
    )
    await harness.cancel(env.request_id)
    (event,) = await harness.events(env.request_id)
    assert event.kind == "error" and event.headers[headers.STATUS] == "499"
    sim.wait_outcome(marker, "client_disconnected")
    assert env.request_id not in harness.worker.calls


async def test_cancel_mid_stream_stops_the_upstream(harness: Harness, sim: Sim) -> None:
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} [sim tokens=400 token_ms=20]", stream=True)
    await harness.send(env)
    await harness.wait_for(lambda: len(harness.replies.get(env.request_id, [])) >= 2, what="some deltas")
    await harness.cancel(env.request_id)
    events = await harness.events(env.request_id)
    assert events[-1].kind == "error" and events[-1].headers[headers.STATUS] == "499"
    sim.wait_outcome(marker, "client_disconnected")
    (usage_msg,) = await harness.usage_for(env.request_id)
    assert UsageEvent.model_validate_json(usage_msg.body).status == "cancelled"


async def test_a_cancel_that_arrives_first_stops_the_request_before_it_starts(
    harness: Harness, sim: Sim
) -> None:
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} [sim tokens=3]")
    await harness.cancel(env.request_id)
    (event,) = await harness.run(env)
    assert event.kind == "error" and event.headers[headers.STATUS] == "499"
    assert sim.requests(marker) == []


async def test_past_deadline_is_504_without_calling_upstream(harness: Harness, sim: Sim) -> None:
    marker = uuid7()
    (event,) = await harness.run(make_envelope(sim.url, f"{marker} [sim tokens=3]", deadline_in=-1))
    assert event.kind == "error" and event.headers[headers.STATUS] == "504"
    assert _json(event)["error"]["code"] == "deadline_exceeded"
    assert sim.requests(marker) == []


async def test_silent_upstream_is_504_after_the_idle_timeout(sim: Sim) -> None:
    async with running(worker_settings(upstream_idle_timeout=0.3)) as h:
        marker = uuid7()
        events = await h.run(make_envelope(sim.url, f"{marker} [sim tokens=50 token_ms=2000]", stream=True))
        assert events[0].kind == "delta" and events[-1].kind == "error"
        assert events[-1].headers[headers.STATUS] == "504"
        assert "idle" in _json(events[-1])["error"]["message"]
        sim.wait_outcome(marker, "client_disconnected")


async def test_deadline_bounds_a_hanging_non_stream_call(harness: Harness, sim: Sim) -> None:
    (event,) = await harness.run(make_envelope(sim.url, "x [sim fault=hang]", deadline_in=0.5))
    assert event.kind == "error" and event.headers[headers.STATUS] == "504"


async def test_rejected_gateway_credentials_are_a_502_that_does_not_blame_the_client(keyed_sim: Sim) -> None:
    async with running(worker_settings(provider_keys={"sim": "sk-sim-wrong"})) as h:
        (event,) = await h.run(make_envelope(keyed_sim.url, "x [sim tokens=2]"))
        assert event.kind == "error" and event.headers[headers.STATUS] == "502"
        assert "not a problem with your API key" in _json(event)["error"]["message"]
        assert event.headers[headers.SHOULD_RETRY] == "false"  # retrying cannot fix the gateway's key
    async with running(worker_settings(provider_keys={"sim": "sk-sim-right"})) as h:
        (event,) = await h.run(make_envelope(keyed_sim.url, "x [sim tokens=2]"))
        assert event.kind == "final"


async def test_catalog_provider_without_a_key_is_refused_without_calling(harness: Harness, sim: Sim) -> None:
    marker = uuid7()
    (event,) = await harness.run(make_envelope(sim.url, marker, provider="nokeyprovider"))
    assert event.headers[headers.STATUS] == "502" and "credentials" in _json(event)["error"]["message"]
    assert event.headers[headers.SHOULD_RETRY] == "false"
    assert sim.requests(marker) == []


async def test_own_endpoint_uses_its_key_and_is_checked_against_ssrf(keyed_sim: Sim) -> None:
    own = {"kind": "own", "provider": "custom", "api_key": "sk-sim-right"}
    async with running(worker_settings()) as h:
        (event,) = await h.run(make_envelope(keyed_sim.url, "x [sim tokens=2]", **own))
        assert event.kind == "error" and event.headers[headers.STATUS] == "400"
        assert _json(event)["error"]["param"] == "base_url"  # loopback is not a tenant's to reach
    async with running(worker_settings(upstream_allowlist=["127.0.0.0/8"])) as h:
        (event,) = await h.run(make_envelope(keyed_sim.url, "x [sim tokens=2]", **own))
        assert event.kind == "final"
        assert _json(event)["choices"][0]["message"]["content"] == "sim0 sim1"


async def test_over_capacity_is_refused_at_once_with_503(sim: Sim) -> None:
    async with running(worker_settings(max_inflight=1, max_queued=0)) as h:
        slow = make_envelope(sim.url, "x [sim tokens=100 token_ms=20]", stream=True)
        await h.send(slow)
        (event,) = await h.run(make_envelope(sim.url, "y [sim tokens=2]"))
        assert event.kind == "error" and event.headers[headers.STATUS] == "503"
        h.worker.calls[slow.request_id].cancel("client_disconnected")
        await h.events(slow.request_id)


async def test_shutdown_lets_short_requests_finish_and_ends_long_ones_with_503(sim: Sim) -> None:
    async with running(worker_settings(shutdown_grace=0.5)) as h:
        long = make_envelope(sim.url, "long [sim tokens=500 token_ms=20]", stream=True)
        short = make_envelope(sim.url, "short [sim tokens=5 token_ms=50]", stream=True)
        await h.send(long)
        await h.send(short)
        await h.wait_for(lambda: h.replies.get(long.request_id), what="the long stream to start")
    assert h.replies[short.request_id][-1].kind == "final"
    last = h.replies[long.request_id][-1]
    assert last.kind == "error" and last.headers[headers.STATUS] == "503"
    assert [e.seq for e in h.replies[long.request_id]] == list(range(len(h.replies[long.request_id])))
    assert any(UsageEvent.model_validate_json(e.body).request_id == long.request_id for e in h.usage)


async def test_malformed_envelopes_are_dropped_and_the_worker_keeps_going(harness: Harness, sim: Sim) -> None:
    await harness.publish(subjects.WORKER_CHAT, b"{not json")
    (event,) = await harness.run(make_envelope(sim.url, "still here [sim tokens=1]"))
    assert event.kind == "final"


async def test_a_cancel_during_a_publish_lets_that_event_out_first() -> None:
    """nats-py may suspend inside publish; cancelling there would leave a gap in the sequence."""
    import asyncio
    import contextlib

    from aigw_worker.call import Call
    from aigw_worker.worker import Worker

    gate = asyncio.Event()
    published: list[dict[str, str]] = []

    class GatedBus:
        async def publish(self, subject: str, payload: bytes, hdrs: dict[str, str]) -> None:
            await gate.wait()
            published.append(hdrs)

    worker = Worker(worker_settings())
    worker.bus = GatedBus()  # type: ignore[assignment]
    env = make_envelope("http://127.0.0.1:9/v1", "x")
    assert env.route is not None
    call = Call(worker, env, env.route)

    async def relay() -> None:
        await call.events.delta(b"{}")
        await asyncio.Event().wait()  # would run forever without the deferred cancel

    call.task = asyncio.create_task(relay())
    deadline = asyncio.get_running_loop().time() + 5
    while not call.events.busy:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)
    call.cancel("client_disconnected")
    assert not call.task.cancelled()
    gate.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(call.task, 5)
    assert call.task.cancelled()
    assert [h[headers.SEQ] for h in published] == ["0"]
    await worker.upstream.aclose()


async def test_grounding_and_prior_lines_are_reported_first(harness: Harness, sim: Sim) -> None:
    search_line = GeneratedUsage.priced(skus.KNOWLEDGE_SEARCH, Decimal("0.0001"), 1, "Knowledge search")
    for stream in (False, True):
        env = make_envelope(sim.url, "grounded [sim tokens=2]", stream=stream)
        assert env.route is not None
        env.route.grounding = [Grounding(id="faq#0", docid="faq", score=0.9, title="FAQ")]
        env.route.prior_usage = [search_line]
        events = await harness.run(env)
        last = json.loads(events[-1].body.split(b"\n")[-1])
        context = last["generation_context"]
        assert context["grounding"] == [{"id": "faq#0", "docid": "faq", "score": 0.9, "title": "FAQ"}]
        assert context["generated_usage"][0]["sku"] == skus.KNOWLEDGE_SEARCH
        assert {line["sku"] for line in context["generated_usage"][1:]} >= {skus.CHAT_IN, skus.CHAT_OUT}


async def test_an_answer_too_large_for_the_bus_ends_with_an_error_event_at_once(
    harness: Harness, sim: Sim
) -> None:
    """A whole answer over NATS' max_payload cannot be published: the request ends with a 502 under
    the same sequence number, instead of the client waiting for its deadline."""
    env = make_envelope(sim.url, "a very long answer [sim tokens=200000]")
    (event,) = await harness.run(env, within=30)
    assert event.kind == "error" and event.seq == 0 and event.headers[headers.STATUS] == "502"
    assert json.loads(event.body)["error"]["code"] == "response_too_large"
