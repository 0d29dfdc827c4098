"""The `QueryFunction` tool loop in the worker: the real simulator calls the offered function, a
stand-in for the retrieval service answers `RETRIEVAL_TOOL` on a real nats-server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from nats.aio.msg import Msg

from aigw_contracts import ChatEnvelope, GeneratedUsage, UsageEvent, errors, headers, skus, subjects
from aigw_contracts.knowledge import (
    KNOWLEDGE_TOOL_NAME,
    KNOWLEDGE_UPSTREAM,
    Grounding,
    KnowledgeTool,
    ToolSearch,
    ToolSearchResult,
)
from aigw_worker.knowledge_tool import BAD_ARGUMENTS, KnowledgeLoop, split_calls

from .conftest import Harness, Sim, make_envelope, worker_settings

SEARCH = GeneratedUsage.priced(skus.KNOWLEDGE_SEARCH, Decimal("0.001"), 1, "Knowledge search")
TOOL_DEF = {"type": "function", "function": {"name": KNOWLEDGE_TOOL_NAME, "parameters": {"type": "object"}}}
CLIENT_TOOL = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}


class Retrieval:
    """What the worker asked, and what it answers: one passage per query, or an error."""

    def __init__(self) -> None:
        self.asked: list[ToolSearch] = []
        self.fail: errors.GatewayError | None = None

    def answer(self, body: bytes) -> tuple[bytes, dict[str, str] | None]:
        request = ToolSearch.model_validate_json(body)
        self.asked.append(request)
        if self.fail is not None:
            return self.fail.to_json(), {headers.STATUS: str(self.fail.status)}
        found = ToolSearchResult(
            content=f"<<<passage>>> about {request.query}",
            grounding=[Grounding(id=f"doc#{len(self.asked)}", docid="doc", score=0.5)],
            lines=[SEARCH],
        )
        return found.model_dump_json().encode(), None


@asynccontextmanager
async def running_with_retrieval() -> AsyncIterator[tuple[Harness, Retrieval]]:
    h = Harness(worker_settings())
    retrieval = Retrieval()
    await h.start()
    assert h.nc is not None
    nc = h.nc

    async def on_tool(msg: Msg) -> None:
        payload, hdrs = retrieval.answer(msg.data)
        await nc.publish(msg.reply, payload, headers=hdrs)

    await nc.subscribe(subjects.RETRIEVAL_TOOL, cb=on_tool)
    await nc.flush()
    try:
        yield h, retrieval
    finally:
        await h.stop()


@pytest.fixture
async def loop_harness() -> AsyncIterator[tuple[Harness, Retrieval]]:
    async with running_with_retrieval() as pair:
        yield pair


def tool_envelope(
    sim: Sim, content: str, *, stream: bool = False, tools: list[Any] | None = None
) -> ChatEnvelope:
    env = make_envelope(sim.url, content, stream=stream, include_usage=stream)
    assert env.route is not None
    env.route.body["tools"] = [*(tools or []), TOOL_DEF]
    env.route.knowledge_tool = KnowledgeTool(collection="kb-1", top=2)
    return env


def _last(events: list[Any]) -> dict[str, Any]:
    return dict(json.loads(events[-1].body.split(b"\n")[-1]))


async def test_the_loop_searches_then_answers_once_and_meters_the_searches_apart(
    loop_harness: tuple[Harness, Retrieval], sim: Sim
) -> None:
    harness, retrieval = loop_harness
    env = tool_envelope(sim, "find refunds [sim call=knowledge_search calls=2 echo]")
    events = await harness.run(env)
    assert [e.kind for e in events] == ["final"]
    answer = _last(events)
    received = json.loads(answer["choices"][0]["message"]["content"])
    turn, *results = received[-3:]
    assert [c["function"]["name"] for c in turn["tool_calls"]] == [KNOWLEDGE_TOOL_NAME] * 2
    assert [r["content"] for r in results] == [
        "<<<passage>>> about find refunds (1)",
        "<<<passage>>> about find refunds (2)",
    ]
    assert [r["tool_call_id"] for r in results] == [c["id"] for c in turn["tool_calls"]]
    # the caller's tenant and the gateway's collection, never anything from the model's arguments
    assert {(a.tenant, a.collection, a.top) for a in retrieval.asked} == {("t-worker", "kb-1", 2)}
    assert answer["choices"][0]["finish_reason"] == "stop"
    context = answer["generation_context"]
    ran = context["runned_functions"]
    assert [f["id"] for f in ran] == [c["id"] for c in turn["tool_calls"]]
    assert sorted(p for f in ran for p in f["passages"]) == ["doc#1", "doc#2"]
    assert {g["id"] for g in context["grounding"]} == {"doc#1", "doc#2"}
    search = next(line for line in context["generated_usage"] if line["sku"] == skus.KNOWLEDGE_SEARCH)
    assert search["quantity"] == 2 and Decimal(str(search["amount"])) == Decimal("0.002")

    events_by_source = {}
    for event in await harness.wait_for(lambda: len(harness.usage) >= 2 and harness.usage, what="usage"):
        usage = UsageEvent.model_validate_json(event.body)
        events_by_source[usage.source] = usage
    knowledge = events_by_source["retrieval"]
    assert knowledge.upstream == KNOWLEDGE_UPSTREAM and knowledge.request_id == env.request_id
    assert [(line.sku, line.quantity) for line in knowledge.lines] == [(skus.KNOWLEDGE_SEARCH, 2)]
    assert {line.sku for line in events_by_source["inference"].lines} >= {skus.CHAT_IN, skus.CHAT_OUT}


async def test_a_streamed_loop_hides_the_calls_and_continues_one_stream(
    loop_harness: tuple[Harness, Retrieval], sim: Sim
) -> None:
    harness, retrieval = loop_harness
    events = await harness.run(
        tool_envelope(sim, "find refunds [sim call=knowledge_search echo]", stream=True)
    )
    assert [e.seq for e in events] == list(range(len(events)))
    chunks = [json.loads(line) for e in events for line in e.body.split(b"\n")]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert not any("tool_calls" in d for d in deltas)
    assert [d.get("role") for d in deltas if d.get("role")] == ["assistant"]
    text = "".join(d.get("content") or "" for d in deltas)
    assert json.loads(text)[-1]["content"] == "<<<passage>>> about find refunds"
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == ["stop"] and len(retrieval.asked) == 1
    assert chunks[-1]["generation_context"]["runned_functions"][0]["name"] == KNOWLEDGE_TOOL_NAME


async def test_the_clients_own_tool_calls_go_to_the_client(
    loop_harness: tuple[Harness, Retrieval], sim: Sim
) -> None:
    harness, retrieval = loop_harness
    for stream in (False, True):
        env = tool_envelope(
            sim, "where is order 7 [sim call=lookup_order]", stream=stream, tools=[CLIENT_TOOL]
        )
        events = await harness.run(env)
        if stream:
            chunks = [json.loads(line) for e in events for line in e.body.split(b"\n")]
            calls = [
                t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls") or []
            ]
            assert calls[0]["function"]["name"] == "lookup_order"
            finish = next(
                c["choices"][0]["finish_reason"]
                for c in chunks
                if c["choices"] and c["choices"][0]["finish_reason"]
            )
        else:
            choice = _last(events)["choices"][0]
            assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["lookup_order"]
            finish = choice["finish_reason"]
        assert finish == "tool_calls"
    assert retrieval.asked == []


async def test_a_failing_search_fails_the_request_with_its_error(
    loop_harness: tuple[Harness, Retrieval], sim: Sim
) -> None:
    harness, retrieval = loop_harness
    retrieval.fail = errors.NotFound(
        "This gateway's knowledge collection does not exist.", code="collection_not_found"
    )
    events = await harness.run(tool_envelope(sim, "find refunds [sim call=knowledge_search]"))
    assert events[-1].kind == "error" and events[-1].headers[headers.STATUS] == "404"
    assert json.loads(events[-1].body)["error"]["code"] == "collection_not_found"


class _NoBus:
    async def request(self, subject: str, payload: bytes, within: float) -> tuple[dict[str, str], bytes]:
        raise AssertionError("no search expected")


async def test_unusable_arguments_are_told_to_the_model_and_rounds_are_bounded(sim: Sim) -> None:
    env = tool_envelope(sim, "hi")
    assert env.route is not None
    loop = KnowledgeLoop(KnowledgeTool(collection="kb", max_rounds=1), env, _NoBus(), None)  # type: ignore[arg-type]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL_DEF]}
    bad = {"id": "c1", "type": "function", "function": {"name": KNOWLEDGE_TOOL_NAME, "arguments": "{oops"}}
    assert loop.calls_to_run([bad]) == [bad]
    await loop.run(body, None, [bad])
    assert body["messages"][-1] == {"role": "tool", "tool_call_id": "c1", "content": BAD_ARGUMENTS}
    assert loop.functions[0]["error"] == "invalid_arguments"
    # one round allowed: the next call may not search again
    assert body["tool_choice"] == "none" and loop.calls_to_run([bad]) == []
    with_client = {"messages": [], "tools": [CLIENT_TOOL, TOOL_DEF]}
    loop._withdraw(with_client)
    assert with_client["tools"] == [CLIENT_TOOL] and "tool_choice" not in with_client


def test_calls_split_into_the_knowledge_ones_and_the_clients() -> None:
    ours = {"id": "a", "function": {"name": KNOWLEDGE_TOOL_NAME}}
    theirs = {"id": "b", "function": {"name": "lookup_order"}}
    assert split_calls([theirs, ours], KNOWLEDGE_TOOL_NAME) == ([ours], [theirs])


class FoundBus:
    """Answers every knowledge search with one passage (the loop's message handling, without NATS)."""

    async def request(self, subject: str, payload: bytes, within: float, service: str, doing: str) -> Any:
        return SimpleNamespace(data=ToolSearchResult(content="found").model_dump_json().encode())


async def test_the_prefill_stays_last_across_rounds(sim: Sim) -> None:
    env = tool_envelope(sim, "hi")

    loop = KnowledgeLoop(KnowledgeTool(collection="kb"), env, FoundBus(), "Sure:")  # type: ignore[arg-type]
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure:"}]
    }
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": KNOWLEDGE_TOOL_NAME, "arguments": '{"query":"x"}'},
    }
    await loop.run(body, None, [call])
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert body["messages"][-1]["content"] == "Sure:" and "tool_choice" not in body


async def test_calls_without_ids_get_one_so_results_can_name_them(sim: Sim) -> None:
    loop = KnowledgeLoop(KnowledgeTool(collection="kb"), tool_envelope(sim, "hi"), FoundBus(), None)  # type: ignore[arg-type]
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    call = {"type": "function", "function": {"name": KNOWLEDGE_TOOL_NAME, "arguments": '{"query":"x"}'}}
    await loop.run(body, None, [call])
    turn, result = body["messages"][-2:]
    assert turn["tool_calls"][0]["id"] == result["tool_call_id"] == "call_aigw_0_0"
