"""The response cache's entry keys and its test of a completed stream (the e2e tests drive the rest)."""

from __future__ import annotations

import json
from decimal import Decimal

from aigw_contracts import ApiKey, Gateway
from aigw_contracts.config import ResponseCache
from aigw_edge.respcache import answer_cost, completed_stream, entry_key
from aigw_edge.semcache import conversation_text, shape_key

GATEWAY = Gateway(id="g1", name="cached", tenant="acme", upstream="@sim/sim-model", cache=ResponseCache())
KEY = ApiKey(id="k1", tenant="acme", hash="h")
REQUEST = {"model": "cached", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}


def test_entries_are_per_tenant_key_kind_and_gateway_version() -> None:
    mine = entry_key(KEY, GATEWAY, REQUEST)
    assert entry_key(KEY.model_copy(update={"tenant": "other"}), GATEWAY, REQUEST) != mine
    assert entry_key(KEY.model_copy(update={"kind": "public"}), GATEWAY, REQUEST) != mine
    assert entry_key(KEY, GATEWAY.model_copy(update={"version": 2}), REQUEST) != mine
    assert entry_key(KEY, GATEWAY, {**REQUEST, "temperature": 0.3}) != mine
    assert entry_key(KEY, GATEWAY, {**REQUEST, "stream": True}) != mine


def test_what_does_not_change_the_answer_does_not_change_the_entry() -> None:
    mine = entry_key(KEY, GATEWAY, REQUEST)
    noisy = {**REQUEST, "metadata": {"run": "7"}, "user": "u", "idempotency_key": "i", "store": True}
    assert entry_key(KEY, GATEWAY, noisy) == mine
    assert entry_key(KEY, GATEWAY, dict(reversed(list(REQUEST.items())))) == mine
    assert entry_key(KEY.model_copy(update={"id": "k2"}), GATEWAY, REQUEST) == mine  # the tenant's other key


def test_only_a_stream_that_ended_with_its_final_chunk_is_kept() -> None:
    final = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[],"usage":{}}\n\ndata: [DONE]\n\n'
    assert completed_stream(final)
    assert not completed_stream(
        b'data: {"choices":[]}\n\ndata: {"error":{"message":"x"}}\n\ndata: [DONE]\n\n'
    )
    assert not completed_stream(b'data: {"choices":[]}\n\n')


def test_semantic_shapes_are_per_tenant_and_parameters_but_not_text() -> None:
    mine = shape_key(KEY, GATEWAY, REQUEST)
    reworded = {**REQUEST, "messages": [{"role": "user", "content": "hello"}]}
    assert shape_key(KEY, GATEWAY, reworded) == mine
    assert shape_key(KEY.model_copy(update={"tenant": "other"}), GATEWAY, REQUEST) != mine
    assert shape_key(KEY, GATEWAY, {**REQUEST, "temperature": 0.3}) != mine
    assert shape_key(KEY, GATEWAY.model_copy(update={"version": 2}), REQUEST) != mine
    two_turns = {
        **REQUEST,
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}],
    }
    assert shape_key(KEY, GATEWAY, two_turns) != mine
    assert conversation_text(two_turns) == "system: s\nuser: hi"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert conversation_text({"messages": [{"role": "user", "content": parts}]}) == "user: a\nb"
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    assert conversation_text({"messages": [{"role": "user", "content": image}]}) is None
    tool = {"role": "tool", "tool_call_id": "c1", "content": "42"}
    assert conversation_text({"messages": [{"role": "user", "content": "x"}, tool]}) is None


def test_answer_cost_reads_the_lines_of_a_whole_answer_and_of_a_stream() -> None:
    lines = {"generated_usage": [{"amount": 0.25}, {"amount": 0.5}]}
    whole = json.dumps({"choices": [], "generation_context": lines}).encode()
    assert answer_cost(whole, False) == Decimal("0.75")
    stream = b'data: {"choices":[]}\n\ndata: {"choices":[],"generation_context":{"generated_usage":[{"amount":0.1}]}}\n\ndata: [DONE]\n\n'
    assert answer_cost(stream, True) == Decimal("0.1")
    assert answer_cost(b"not json", False) == 0
