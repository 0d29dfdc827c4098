"""Knowledge collections through the whole system (real processes), driven by the openai SDK and the CLI.

The simulator's echo (`[sim echo]` in the last user message) answers with the JSON of the messages it
received, so a test can read exactly which passages the retrieval service injected into the prompt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from tests.conftest import eventually

HANDBOOK = """# Acme handbook

## Refunds

Refunds are paid back to the original card within five business days.

## Passwords

To reset your password, open Settings, choose Security and click Reset password.
"""
KNOWLEDGE_SKUS = {skus.KNOWLEDGE_SEARCH, skus.KNOWLEDGE_EMBEDDINGS_IN}


def _unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**10}"


def _works(client: OpenAI, model: str) -> bool:
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "ping"}])
    except openai.NotFoundError:
        return False
    return True


def _grounded_gateway(
    admin: httpx.Client, client: OpenAI, collection: str, **knowledge: Any
) -> dict[str, Any]:
    gw = admin.post(
        "/gateways",
        json={
            "name": _unique("grounded"),
            "upstream": "@sim/sim-model",
            "instructions": "Answer from the passages.",
            "knowledge": {"collection": collection, **knowledge},
        },
    )
    assert gw.status_code == 201, gw.text
    eventually(lambda: _works(client, gw.json()["id"]), 5.0, "grounded gateway routable")
    return dict(gw.json())


@pytest.fixture
def handbook(admin: httpx.Client, client: OpenAI) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """A collection holding the handbook, and a gateway grounded on it."""
    kb = admin.post("/collections", json={"name": _unique("handbook"), "description": "HR"})
    assert kb.status_code == 201, kb.text
    added = admin.post(
        f"/collections/{kb.json()['id']}/documents",
        json={"docid": "handbook", "text": HANDBOOK, "content_type": "text/markdown", "__meta": {"v": 1}},
    )
    assert added.status_code == 200 and added.json()["created"] == 1, added.text
    gw = _grounded_gateway(admin, client, kb.json()["name"], top=2)
    yield kb.json(), gw
    admin.delete(f"/gateways/{gw['id']}")
    admin.delete(f"/collections/{kb.json()['id']}")


def _context(extra: dict[str, Any] | None) -> dict[str, Any]:
    assert extra is not None
    return dict(extra["generation_context"])


def _assert_exact(lines: list[dict[str, Any]]) -> None:
    for line in lines:
        assert Decimal(repr(line["amount"])) == Decimal(repr(line["unit_price"])) * line["quantity"], line


def test_a_grounded_answer_gets_the_right_passage_fenced_and_reports_it(
    client: OpenAI, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    _, gw = handbook
    reply = client.chat.completions.create(
        model=gw["id"], messages=[{"role": "user", "content": "How do I reset my password? [sim echo]"}]
    )
    received = json.loads(reply.choices[0].message.content or "")
    assert received[0] == {"role": "system", "content": "Answer from the passages."}
    knowledge, question = received[-2], received[-1]
    assert question["content"].startswith("How do I reset my password?")
    assert knowledge["role"] == "user" and "NOT instructions" in knowledge["content"]
    assert 'id="handbook#1"' in knowledge["content"] and "click Reset password" in knowledge["content"]

    context = _context(reply.model_extra)
    top = context["grounding"][0]
    assert (top["id"], top["docid"], top["title"]) == ("handbook#1", "handbook", "Acme handbook")
    assert 0 < top["score"] <= 1
    lines = context["generated_usage"]
    # knowledge lines first (priced by the retrieval service), then the model's own
    assert {line["sku"] for line in lines[:2]} == KNOWLEDGE_SKUS
    assert {line["sku"] for line in lines[2:]} >= {skus.CHAT_IN, skus.CHAT_OUT}
    assert next(line for line in lines if line["sku"] == skus.KNOWLEDGE_SEARCH)["quantity"] == 1
    _assert_exact(lines)


def test_the_streams_last_chunk_reports_the_grounding_too(
    client: OpenAI, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    _, gw = handbook
    chunks = list(
        client.chat.completions.create(
            model=gw["id"],
            messages=[{"role": "user", "content": "refunds to my card, how long? [sim tokens=4]"}],
            stream=True,
        )
    )
    context = _context(chunks[-1].model_extra)
    assert context["grounding"][0]["id"] == "handbook#0"
    assert {line["sku"] for line in context["generated_usage"]} >= KNOWLEDGE_SKUS
    assert all("generation_context" not in (c.model_extra or {}) for c in chunks[:-1])


def test_gateways_without_knowledge_bill_no_knowledge_lines(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "hi [sim tokens=2]"}]
    )
    context = _context(reply.model_extra)
    assert not KNOWLEDGE_SKUS & {line["sku"] for line in context["generated_usage"]}
    assert not context.get("grounding")


def test_a_tenants_own_model_bills_only_the_knowledge_lines(
    admin: httpx.Client, client: OpenAI, stack: Stack, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    kb, _ = handbook
    up = admin.post("/upstreams", json={"model": "sim-model", "base_url": f"{stack.sim_url}/v1"})
    assert up.status_code == 201, up.text
    gw = admin.post(
        "/gateways",
        json={"name": _unique("byo-kb"), "upstream": up.json()["id"], "knowledge": {"collection": kb["id"]}},
    ).json()
    eventually(lambda: _works(client, gw["id"]), 5.0, "own-endpoint grounded gateway routable")
    reply = client.chat.completions.create(
        model=gw["id"], messages=[{"role": "user", "content": "password reset? [sim tokens=3]"}]
    )
    lines = _context(reply.model_extra)["generated_usage"]
    billed = {line["sku"] for line in lines if Decimal(repr(line["amount"])) > 0}
    assert billed == KNOWLEDGE_SKUS
    assert {line["sku"] for line in lines} >= {skus.CHAT_IN, skus.CHAT_OUT}  # recorded, at price 0
    admin.delete(f"/gateways/{gw['id']}")


def test_documents_are_updated_and_deleted_and_search_follows(
    admin: httpx.Client, client: OpenAI, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    kb, gw = handbook
    base = f"/collections/{kb['id']}"
    shown = admin.get(f"{base}/documents/handbook").json()
    assert (shown["chunks"], shown["__meta"]) == (2, {"v": 1})

    unchanged = admin.post(
        f"{base}/documents",
        json={"docid": "handbook", "text": HANDBOOK, "content_type": "text/markdown", "__meta": {"v": 1}},
    )
    assert unchanged.json()["unchanged"] == 1 and unchanged.json()["embedding_tokens"] == 0
    new_text = "# Acme handbook\n\n## Parking\n\nVisitors park on level -2 of the north garage."
    updated = admin.post(
        f"{base}/documents", json={"docid": "handbook", "text": new_text, "content_type": "text/markdown"}
    )
    assert updated.json()["updated"] == 1
    found = admin.post(f"{base}/search", json={"query": "where can visitors park?", "top": 3}).json()
    assert [p["id"] for p in found["passages"]] == ["handbook#0"] and "level -2" in found["passages"][0][
        "text"
    ]
    assert found["passages"][0]["__meta"] == {}  # the update replaced the metadata too

    reply = client.chat.completions.create(
        model=gw["id"], messages=[{"role": "user", "content": "reset my password [sim echo]"}]
    )
    assert "Reset password" not in (reply.choices[0].message.content or "")  # the old text is gone

    assert admin.delete(f"{base}/documents/handbook").json()["deleted"] is True
    assert admin.get(f"{base}/documents/handbook").status_code == 404
    assert admin.get(f"{base}/documents").json()["data"] == []
    reply = client.chat.completions.create(
        model=gw["id"], messages=[{"role": "user", "content": "parking? [sim echo]"}]
    )
    assert not _context(reply.model_extra).get("grounding")
    assert "level -2" not in (reply.choices[0].message.content or "")


def test_a_key_never_retrieves_another_tenants_passages(
    operator: httpx.Client,
    admin: httpx.Client,
    client: OpenAI,
    stack: Stack,
    handbook: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    kb, gw = handbook
    tenant = _unique("kb-rival")
    assert operator.post("/tenants", json={"id": tenant}).status_code == 201
    key = operator.post("/keys", json={"tenant": tenant, "admin": True}).json()["secret"]
    rival_admin = httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=20
    )
    rival = OpenAI(base_url=stack.base_url, api_key=key, max_retries=0, timeout=20)
    eventually(lambda: rival_admin.get("/collections").status_code == 200, 5.0, "new key usable")

    theirs = rival_admin.post("/collections", json={"name": "secrets"}).json()
    secret = "To reset your password at Rival Corp, the master code is 7319-ZETA."
    rival_admin.post(f"/collections/{theirs['id']}/documents", json={"docid": "vault", "text": secret})
    rival_gw = _grounded_gateway(rival_admin, rival, theirs["id"])

    # the rival's own gateway finds it
    mine = rival.chat.completions.create(
        model=rival_gw["id"], messages=[{"role": "user", "content": "password reset code [sim echo]"}]
    )
    assert "7319-ZETA" in (mine.choices[0].message.content or "")
    # demo's gateway, asked the very same thing, never sees it
    reply = client.chat.completions.create(
        model=gw["id"],
        messages=[{"role": "user", "content": "Rival Corp password reset master code [sim echo]"}],
    )
    assert "7319-ZETA" not in (reply.choices[0].message.content or "")
    assert {g["docid"] for g in _context(reply.model_extra).get("grounding", [])} <= {"handbook"}
    # nor can demo's keys name the rival's collection anywhere
    for path in (f"/collections/{theirs['id']}", f"/collections/{theirs['id']}/documents"):
        assert admin.get(path).status_code == 404
    assert admin.post(f"/collections/{theirs['id']}/search", json={"query": "master code"}).status_code == 404
    stolen = admin.post(
        "/gateways",
        json={"name": "thief", "upstream": "@sim/sim-model", "knowledge": {"collection": theirs["id"]}},
    )
    assert stolen.status_code == 400 and stolen.json()["error"]["param"] == "knowledge.collection"
    # and the rival cannot reach demo's either
    assert rival_admin.post(f"/collections/{kb['id']}/search", json={"query": "refunds"}).status_code == 404
    rival_admin.close()


def _aigw(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    assert stack.demo is not None
    env = {**os.environ, "AIGW_GATEWAY_URL": stack.base_url, "AIGW_API_KEY": stack.demo.key}
    return subprocess.run(
        [str(Path(sys.executable).parent / "aigw"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )


def test_cli_imports_jsonl_in_batches_with_progress_and_resumes(stack: Stack, tmp_path: Path) -> None:
    name = _unique("faq")
    created = json.loads(_aigw(stack, "--json", "collection", "create", "--name", name).stdout)
    topics = ["invoices", "parcels", "passwords", "holidays", "printers", "parking", "coffee", "badges"]
    lines = [
        json.dumps(
            {
                "docid": f"faq-{i}",
                "text": f"FAQ {i}: how {topics[i % 8]} work here, rule {i}.",
                "__tags": [topics[i % 8]],
            }
        )
        for i in range(25)
    ]
    path = tmp_path / "faq.jsonl"
    path.write_text("\n".join([*lines[:12], "{broken", *lines[12:]]) + "\n")

    first = _aigw(stack, "--json", "doc", "import", name, str(path), "--batch-lines", "10")
    assert "imported 10/26 documents" in first.stderr and "imported 26/26 documents" in first.stderr
    report = json.loads(first.stdout)
    assert (report["created"], report["failed"], report["total"]) == (25, 1, 26)
    assert report["errors"][0].startswith("line 13:")  # numbered as a line of the file

    again = json.loads(_aigw(stack, "--json", "doc", "import", name, str(path), "--batch-lines", "10").stdout)
    assert (again["unchanged"], again["created"], again["embedding_tokens"]) == (25, 0, 0)

    found = json.loads(_aigw(stack, "--json", "search", name, "how do parcels work?", "--top", "3").stdout)
    assert found["passages"] and found["passages"][0]["__tags"] == ["parcels"]
    table = _aigw(stack, "doc", "list", name, "--limit", "5").stdout
    assert table.splitlines()[0].split()[:3] == ["docid", "title", "chunks"] and "faq-0" in table
    assert json.loads(_aigw(stack, "--json", "doc", "show", name, "faq-2").stdout)["__tags"] == ["passwords"]
    assert json.loads(_aigw(stack, "--json", "doc", "delete", name, "faq-3").stdout)["deleted"] is True
    shown = json.loads(_aigw(stack, "--json", "collection", "show", created["id"]).stdout)
    assert shown["name"] == name
    assert json.loads(_aigw(stack, "--json", "collection", "delete", name).stdout)["deleted"] is True


def test_rewrite_strategies_ask_the_resolver_and_bill_it_on_its_own_skus(
    admin: httpx.Client, client: OpenAI, sim: httpx.Client, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    kb, _ = handbook
    for strategy in ("UserRewrite", "FullRewrite"):
        gw = _grounded_gateway(admin, client, kb["id"], strategy=strategy, resolver="@sim/sim-model", top=2)
        sim.delete("/sim/requests")
        # The simulator's echo makes the resolver's "queries" the conversation it was sent, which
        # still names the password reset: the search must find that passage.
        reply = client.chat.completions.create(
            model=gw["id"],
            messages=[
                {"role": "user", "content": "Hi, a question about my account."},
                {"role": "assistant", "content": "Sure, go ahead."},
                {"role": "user", "content": "How do I reset my password? [sim echo]"},
            ],
        )
        calls = sim.get("/sim/requests").json()
        assert len(calls) == 2  # the resolver, then the answer
        resolver_prompt = calls[0]["body"]["messages"]
        assert "search queries" in resolver_prompt[0]["content"]
        assert ("Assistant: Sure, go ahead." in resolver_prompt[1]["content"]) == (strategy == "FullRewrite")
        context = _context(reply.model_extra)
        assert context["grounding"] and context["grounding"][0]["id"] == "handbook#1"
        lines = context["generated_usage"]
        skus_in_order = [line["sku"] for line in lines]
        assert skus_in_order[:2] == [skus.REWRITE_IN, skus.REWRITE_OUT]
        assert set(skus_in_order[2:4]) == KNOWLEDGE_SKUS and skus.CHAT_OUT in skus_in_order[4:]
        _assert_exact(lines)
        admin.delete(f"/gateways/{gw['id']}")


def _answer(
    client: OpenAI, model: str, content: str, stream: bool
) -> tuple[str, str, dict[str, Any], Any, list[Any]]:
    """(text, finish_reason, generation_context, usage, annotations as dicts) of one answer,
    streamed or not; a stream must show the client no tool call at all and one role chunk."""
    messages: Any = [{"role": "user", "content": content}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages)
        choice = reply.choices[0]
        assert not choice.message.tool_calls
        cited = [a.model_dump() for a in choice.message.annotations or []]
        return (
            choice.message.content or "",
            choice.finish_reason,
            _context(reply.model_extra),
            reply.usage,
            cited,
        )
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.tool_calls for d in deltas)
    assert [d.role for d in deltas if d.role] == ["assistant"]
    finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
    text = "".join(d.content or "" for d in deltas)
    cited = [a for d in deltas for a in (d.model_extra or {}).get("annotations", [])]
    return text, finish, _context(chunks[-1].model_extra), chunks[-1].usage, cited


def _direct_usage(sim: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    answer = sim.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["usage"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_query_function_lets_the_model_search_and_answers_once(
    admin: httpx.Client,
    client: OpenAI,
    sim: httpx.Client,
    handbook: tuple[dict[str, Any], dict[str, Any]],
    stream: bool,
) -> None:
    kb, _ = handbook
    gw = _grounded_gateway(admin, client, kb["id"], strategy="QueryFunction", top=2)
    sim.delete("/sim/requests")
    # The simulator calls the offered tool with the user's text as the query, then (once the tool's
    # result is the last message) echoes every message it received.
    text, finish, context, usage, cited = _answer(
        client, gw["id"], "How do I reset my password? [sim call=knowledge_search echo]", stream
    )
    calls = sim.get("/sim/requests").json()
    assert len(calls) == 2  # the model called the tool, then answered
    offered = calls[0]["body"]["tools"]
    assert [t["function"]["name"] for t in offered] == ["knowledge_search"]
    assert f"'{kb['name']}' (HR)" in offered[0]["function"]["description"]
    received = json.loads(text)
    asked, result = received[-2], received[-1]
    (call,) = asked["tool_calls"]
    assert asked["role"] == "assistant" and call["function"]["name"] == "knowledge_search"
    assert json.loads(call["function"]["arguments"]) == {"query": "How do I reset my password?"}
    assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
    assert "NOT instructions" in result["content"] and 'id="handbook#1"' in result["content"]
    assert "click Reset password" in result["content"]
    assert finish == "stop"
    # The echoed tool result holds the rules' example citation "[handbook#1]": an annotation marks it
    assert cited and all(
        text[a["url_citation"]["start_index"] : a["url_citation"]["end_index"]] == "[handbook#1]"
        for a in cited
    )
    assert cited[0]["url_citation"]["url"] == "urn:aigw:passage:handbook#1"

    (ran,) = context["runned_functions"]
    assert ran["name"] == "knowledge_search" and ran["id"] == call["id"]
    assert "handbook#1" in ran["passages"]
    assert context["grounding"][0]["id"] == "handbook#1"
    lines = context["generated_usage"]
    assert [line["sku"] for line in lines][:2] == [skus.KNOWLEDGE_SEARCH, skus.KNOWLEDGE_EMBEDDINGS_IN]
    assert next(line for line in lines if line["sku"] == skus.KNOWLEDGE_SEARCH)["quantity"] == 1
    # both model calls are billed: usage is their sum, and the chat lines match it
    chat = {line["sku"]: line["quantity"] for line in lines if line["sku"].startswith("inference.chat")}
    assert chat.get(skus.CHAT_IN, 0) + chat.get(skus.CHAT_IN_CACHED, 0) == usage.prompt_tokens
    assert chat[skus.CHAT_OUT] == usage.completion_tokens
    # The simulator counts tokens deterministically: asking it the two recorded calls again gives
    # each round's usage, and the client's usage is their sum.
    rounds = [_direct_usage(sim, c["body"]) for c in calls]
    assert [c["outcome"] for c in calls] == ["tool_calls", "completed"]
    assert usage.prompt_tokens == sum(r["prompt_tokens"] for r in rounds)
    assert usage.completion_tokens == sum(r["completion_tokens"] for r in rounds)
    _assert_exact(lines)
    admin.delete(f"/gateways/{gw['id']}")


def test_query_function_answers_without_searching_when_the_model_does_not_call(
    admin: httpx.Client, client: OpenAI, sim: httpx.Client, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    kb, _ = handbook
    gw = _grounded_gateway(admin, client, kb["id"], strategy="QueryFunction")
    sim.delete("/sim/requests")
    reply = client.chat.completions.create(
        model=gw["id"], messages=[{"role": "user", "content": "Just say hi [sim tokens=3]"}]
    )
    assert len(sim.get("/sim/requests").json()) == 1
    context = _context(reply.model_extra)
    assert context["runned_functions"] == [] and not context.get("grounding")
    assert not KNOWLEDGE_SKUS & {line["sku"] for line in context["generated_usage"]}  # no search, no bill
    admin.delete(f"/gateways/{gw['id']}")


def test_the_model_reranker_grounds_on_the_models_order_and_bills_it(
    admin: httpx.Client, client: OpenAI, sim: httpx.Client, handbook: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    kb, _ = handbook
    gw = _grounded_gateway(admin, client, kb["id"], reranker="model", top=1, minScore=0)
    sim.delete("/sim/requests")
    # the simulator, as the ranking model, answers "2,1": the second fused candidate comes first
    reply = client.chat.completions.create(
        model=gw["id"], messages=[{"role": "user", "content": "How do I reset my password? [sim reply=2,1]"}]
    )
    ranking_call, answer_call = sim.get("/sim/requests").json()
    prompt = ranking_call["body"]["messages"][1]["content"]
    assert "most relevant first" in ranking_call["body"]["messages"][0]["content"]
    second = next(line for line in prompt.splitlines() if line.startswith("[2] "))
    context = _context(reply.model_extra)
    (top,) = context["grounding"]  # top=1: only the model's first choice
    assert top["score"] == 1.0
    injected = answer_call["body"]["messages"][-2]["content"]
    assert f'id="{top["id"]}"' in injected and second[4:40] in injected
    lines = context["generated_usage"]
    skus_in_order = [line["sku"] for line in lines]
    assert set(skus_in_order[:2]) == KNOWLEDGE_SKUS
    assert skus_in_order[2:4] == [skus.RERANK_IN, skus.RERANK_OUT] and skus.CHAT_OUT in skus_in_order[4:]
    _assert_exact(lines)
    admin.delete(f"/gateways/{gw['id']}")
