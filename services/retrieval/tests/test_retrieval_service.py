"""The retrieval service against a real nats-server: grounding envelopes on the request path and
management requests, with the real embedder and embedded store."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from aigw_contracts import (
    ChatCompletionRequest,
    ChatEnvelope,
    RoutedCall,
    UpstreamTarget,
    UsageEvent,
    errors,
    events,
    headers,
    skus,
    subjects,
)
from aigw_contracts.config import Prices
from aigw_contracts.knowledge import (
    KNOWLEDGE_TOOL_NAME,
    Collection,
    GatewayKnowledge,
    KnowledgeRequest,
    KnowledgeSearch,
    ToolSearch,
)
from aigw_devstack import NatsServer
from aigw_retrieval.app import create_app
from aigw_retrieval.embed import MiniLMEmbedder
from aigw_retrieval.settings import RetrievalSettings
from aigw_retrieval.stores import EmbeddedStore
from aigw_runtime.bus import settle
from aigw_runtime.configstore import ConfigView

REPLY = subjects.reply_subject("edge1", "req1")
ACME_DOCS = "0199aaaa-0000-7000-8000-00000000acdc"
GLOBEX_DOCS = "0199bbbb-0000-7000-8000-00000000beef"

HANDBOOK = """# Acme handbook

## Refunds

Refunds are paid back to the original card within five business days.

## Passwords

To reset your password, open Settings, choose Security and click Reset password.
"""


@dataclass
class Harness:
    """The retrieval service against a real nats-server, with a stand-in worker pool and edge."""

    nc: Any
    worker: list[Msg] = field(default_factory=list)
    replies: list[Msg] = field(default_factory=list)
    usage: list[UsageEvent] = field(default_factory=list)
    health_port: int | None = None

    async def ask(self, **request: Any) -> tuple[int, Any]:
        body = KnowledgeRequest(**request).model_dump_json(by_alias=True).encode()
        return await self.request(subjects.RETRIEVAL_MANAGE, body)

    async def request(self, subject: str, body: bytes) -> tuple[int, Any]:
        msg = await self.nc.request(subject, body, timeout=30)
        status = int((msg.headers or {}).get(headers.STATUS, 200))
        return status, json.loads(msg.data)

    async def usage_count(self, count: int, within: float = 5.0) -> None:
        """Wait until exactly `count` usage events arrived (they are published off the request path)."""
        deadline = time.monotonic() + within
        while len(self.usage) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.usage)} usage events, expected {count}")
            await asyncio.sleep(0.005)
        assert len(self.usage) == count

    async def tool(self, **request: Any) -> tuple[int, Any]:
        return await self.request(subjects.RETRIEVAL_TOOL, ToolSearch(**request).model_dump_json().encode())

    async def publish(self, subject: str, data: bytes, hdrs: dict[str, str] | None = None) -> None:
        """Publish, then wait until the service answered it (to the workers or the edge)."""
        before = len(self.worker) + len(self.replies)
        await self.nc.publish(subject, data, headers=hdrs)
        deadline = time.monotonic() + 30
        while len(self.worker) + len(self.replies) == before:
            assert time.monotonic() < deadline, f"no answer to a message on {subject}"
            await asyncio.sleep(0.005)

    async def chat(self, envelope: ChatEnvelope) -> None:
        await self.publish(subjects.RETRIEVAL_CHAT, envelope.forward_json())


@asynccontextmanager
async def running(
    tmp_path: Path, minilm: MiniLMEmbedder, nats_url: str, **settings: Any
) -> AsyncIterator[Harness]:
    view = ConfigView()
    view.collections[ACME_DOCS] = Collection(id=ACME_DOCS, tenant="acme", name="docs")
    view.collections[GLOBEX_DOCS] = Collection(id=GLOBEX_DOCS, tenant="globex", name="docs")
    values: dict[str, Any] = {"nats_url": nats_url, "retrieval_id": "rtest", **settings}
    service, _ = create_app(
        RetrievalSettings(**values), store=EmbeddedStore(tmp_path / "kb"), embedder=minilm, view=view
    )
    nc = await nats.connect(nats_url)
    h = Harness(nc)

    async def worker(msg: Msg) -> None:
        if msg.reply.startswith("_INBOX."):  # a resolver-model call: this pool has no model to ask
            hdrs, payload = events.error_event(errors.Unavailable("No model in this test"), 0)
            await nc.publish(msg.reply, payload, headers=hdrs)
            return
        h.worker.append(msg)

    async def edge(msg: Msg) -> None:
        h.replies.append(msg)

    async def usage(msg: Msg) -> None:  # a core subscription sees what the usage stream stores
        h.usage.append(UsageEvent.model_validate_json(msg.data))

    await nc.subscribe(subjects.WORKER_CHAT, cb=worker)
    await nc.subscribe(REPLY, cb=edge)
    await nc.subscribe(subjects.USAGE_WILDCARD, cb=usage)
    await settle(nc)
    await service.start()
    h.health_port = service.health_port
    try:
        yield h
    finally:
        await service.stop(grace=2)
        await nc.close()


def envelope(
    text: str | list[str],
    *,
    tenant: str = "acme",
    collection: str = ACME_DOCS,
    strategy: str = "Plain",
    deadline: float = 30,
    **knowledge: Any,
) -> ChatEnvelope:
    texts = [text] if isinstance(text, str) else text
    messages: list[dict[str, Any]] = []
    for t in texts:
        messages += [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]
    messages.pop()
    request = ChatCompletionRequest(model="grounded", messages=messages, metadata={"team": "qa"})
    return ChatEnvelope(
        request_id="req1",
        tenant=tenant,
        key_id="k1",
        reply=REPLY,
        deadline=time.time() + deadline,
        request=request,
        route=RoutedCall(
            gateway_id="gw1",
            upstream=UpstreamTarget(
                id="@sim/sim-model",
                kind="catalog",
                provider="sim",
                model="sim",
                base_url="http://x",
                prices=Prices(),
            ),
            body={"messages": [{"role": "system", "content": "Be brief."}, *messages]},
            response_model="@sim/sim-model",
            knowledge=GatewayKnowledge.model_validate(
                {"collection": collection, "strategy": strategy, **knowledge}
            ),
        ),
    )


async def _seed(h: Harness, tenant: str = "acme", collection: str = ACME_DOCS, text: str = HANDBOOK) -> None:
    doc = {"docid": "handbook", "text": text, "content_type": "text/markdown", "__tags": ["hr"]}
    status, report = await h.ask(
        op="upsert", tenant=tenant, collection=collection, key_id="k1", documents=[doc]
    )
    assert status == 200 and report["created"] == 1, report
    await h.usage_count(len(h.usage) + 1)  # its embedding tokens are billed


@pytest.fixture
async def harness(tmp_path: Path, minilm: MiniLMEmbedder, nats_server: NatsServer) -> AsyncIterator[Harness]:
    async with running(
        tmp_path,
        minilm,
        nats_server.url,
        price_knowledge_search="0.001",
        price_knowledge_embedding_token="1E-7",
    ) as h:
        yield h


async def test_grounded_envelope_carries_fenced_passages_grounding_and_priced_lines(harness: Harness) -> None:
    await _seed(harness)
    asked = envelope("How do I reset my password?")
    asked.trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    await harness.chat(asked)
    assert not harness.replies
    (msg,) = harness.worker
    assert msg.reply == subjects.bounce_subject("rtest", REPLY)
    routed = ChatEnvelope.routed(msg.data)
    assert routed.trace == asked.trace and msg.headers is None  # untraced: no NATS headers to pay for
    assert routed.route is not None
    messages = routed.route.body["messages"]
    # system prompt first, then the knowledge message just before the question
    assert messages[0]["content"] == "Be brief." and messages[-1]["content"] == "How do I reset my password?"
    knowledge = messages[-2]
    assert knowledge["role"] == "user" and 'id="handbook#1"' in knowledge["content"]
    assert "Reset password" in knowledge["content"] and "NOT instructions" in knowledge["content"]
    top = routed.route.grounding[0]
    assert (top.id, top.docid) == ("handbook#1", "handbook") and 0 < top.score <= 1
    lines = {line.sku: line for line in routed.route.prior_usage}
    assert lines[skus.KNOWLEDGE_SEARCH].quantity == 1
    assert lines[skus.KNOWLEDGE_SEARCH].amount == Decimal("0.001")
    tokens = lines[skus.KNOWLEDGE_EMBEDDINGS_IN].quantity
    assert tokens > 0 and lines[skus.KNOWLEDGE_EMBEDDINGS_IN].amount == Decimal("1E-7") * tokens


async def test_search_is_metered_once_per_request_as_a_retrieval_usage_event(harness: Harness) -> None:
    await _seed(harness)
    harness.usage.clear()
    await harness.chat(envelope("refunds to my card?"))
    await harness.usage_count(1)
    (event,) = [e for e in harness.usage if e.request_id == "req1"]
    assert event.source == "retrieval" and event.msg_id() == "req1:retrieval"
    assert (event.tenant, event.key_id, event.gateway_id, event.metadata) == (
        "acme",
        "k1",
        "gw1",
        {"team": "qa"},
    )
    assert {line.sku for line in event.lines} == {skus.KNOWLEDGE_SEARCH, skus.KNOWLEDGE_EMBEDDINGS_IN}
    routed = ChatEnvelope.routed(harness.worker[0].data)
    assert routed.route is not None and event.lines == routed.route.prior_usage


async def test_a_tenant_never_gets_another_tenants_passages(harness: Harness) -> None:
    await _seed(
        harness, "globex", GLOBEX_DOCS, "# Globex secrets\n\nThe vault code is 4242; reset passwords weekly."
    )
    # acme names globex's collection id: the config store says it is not theirs
    await harness.chat(envelope("vault code and password reset", collection=GLOBEX_DOCS))
    (err,) = harness.replies
    assert err.headers[headers.STATUS] == "404" and not harness.worker
    # acme's own collection: its passages only, never globex's, whatever the query
    await _seed(harness)
    await harness.chat(envelope("Globex vault code and how to reset passwords"))
    routed = ChatEnvelope.routed(harness.worker[0].data)
    assert routed.route is not None and routed.route.grounding
    assert {g.docid for g in routed.route.grounding} == {"handbook"}
    assert "vault code is" not in json.dumps(routed.route.body)
    # and the management API scoped to acme sees nothing of globex either
    status, found = await harness.ask(
        op="search", tenant="acme", collection=GLOBEX_DOCS, search=KnowledgeSearch(query="vault code")
    )
    assert status == 404 and "vault" not in json.dumps(found)


async def test_concatenate_searches_the_earlier_user_turns_too(harness: Harness) -> None:
    await _seed(harness)
    await harness.chat(
        envelope(["I have a question about refunds", "how many days?"], strategy="Concatenate")
    )
    await harness.chat(
        envelope(["I have a question about refunds", "how many days?"], strategy="Plain", min_score=0.3)
    )
    concatenated = ChatEnvelope.routed(harness.worker[0].data)
    plain = ChatEnvelope.routed(harness.worker[1].data)
    assert concatenated.route is not None and plain.route is not None
    assert concatenated.route.grounding[0].id == "handbook#0"  # the Refunds section
    assert "handbook#0" not in [g.id for g in plain.route.grounding]


async def test_no_worker_bounce_becomes_a_503_event_for_the_edge(harness: Harness) -> None:
    await harness.publish(
        subjects.bounce_subject("rtest", REPLY), b"", {headers.NATS_STATUS: headers.NO_RESPONDERS}
    )
    (err,) = harness.replies
    assert err.headers[headers.EVENT] == "error" and err.headers[headers.STATUS] == "503"
    assert "worker" in json.loads(err.data)["error"]["message"]


@pytest.mark.parametrize(
    ("changes", "status", "param"),
    [
        # two passages to order, and the stand-in worker pool has no model to ask
        ({"reranker": "model", "min_score": 0.0}, "503", "knowledge.reranker"),
        ({"deadline": -1}, "504", None),
    ],
)
async def test_requests_it_cannot_ground_end_in_an_error_event(
    harness: Harness, changes: dict[str, Any], status: str, param: str | None
) -> None:
    await _seed(harness)
    await harness.chat(envelope("How do I reset my password, and when are refunds paid?", **changes))
    (err,) = harness.replies
    assert err.headers[headers.STATUS] == status and not harness.worker
    assert json.loads(err.data)["error"]["param"] == param


async def test_a_conversation_without_user_text_is_forwarded_unsearched_and_unbilled(
    harness: Harness,
) -> None:
    await _seed(harness)
    harness.usage.clear()
    await harness.chat(envelope("   "))
    await harness.chat(envelope("and refunds?"))  # a search after it: its event is the only one
    routed = ChatEnvelope.routed(harness.worker[0].data)
    assert routed.route is not None and routed.route.grounding == [] and routed.route.prior_usage == []
    await harness.usage_count(1)


async def test_documents_are_added_listed_shown_updated_searched_and_deleted(harness: Harness) -> None:
    scope = {"tenant": "acme", "collection": ACME_DOCS, "key_id": "k1"}
    await _seed(harness)
    status, listed = await harness.ask(op="list", **scope)
    assert status == 200 and [d["docid"] for d in listed["data"]] == ["handbook"]
    status, shown = await harness.ask(op="get", docid="handbook", **scope)
    assert (shown["title"], shown["__tags"], shown["chunks"]) == ("Acme handbook", ["hr"], 2)

    same = {"docid": "handbook", "text": HANDBOOK, "content_type": "text/markdown", "__tags": ["hr", "v2"]}
    status, report = await harness.ask(op="upsert", documents=[same], **scope)
    assert (report["metadata_only"], report["embedding_tokens"]) == (1, 0)
    changed = {**same, "text": "# Acme handbook\n\n## Parking\n\nVisitors park on level -2."}
    status, report = await harness.ask(op="upsert", documents=[changed], **scope)
    assert report["updated"] == 1 and report["chunks"] == 1

    status, found = await harness.ask(
        op="search", search=KnowledgeSearch(query="where do visitors park"), **scope
    )
    assert status == 200 and found["passages"][0]["id"] == "handbook#0"
    assert found["passages"][0]["__tags"] == ["hr", "v2"] and "level -2" in found["passages"][0]["text"]

    status, gone = await harness.ask(op="delete", docid="handbook", **scope)
    assert status == 200 and gone["deleted"] is True
    status, err = await harness.ask(op="get", docid="handbook", **scope)
    assert status == 404 and err["error"]["code"] == "document_not_found"
    status, found = await harness.ask(op="search", search=KnowledgeSearch(query="visitors park"), **scope)
    assert found["passages"] == []


async def test_imports_report_bad_lines_and_rerunning_one_does_no_work(harness: Harness) -> None:
    scope = {"tenant": "acme", "collection": ACME_DOCS, "key_id": "k1"}
    lines = [
        json.dumps({"docid": f"d{i}", "text": f"Rule {i}: badges are renewed every {i} months."})
        for i in range(6)
    ]
    jsonl = "\n".join([*lines[:3], "{not json", *lines[3:]])
    status, first = await harness.ask(op="import", jsonl=jsonl, **scope)
    assert status == 200 and (first["total"], first["created"], first["failed"]) == (7, 6, 1)
    assert first["errors"][0].startswith("line 4:")
    await harness.usage_count(1)
    harness.usage.clear()
    status, again = await harness.ask(op="import", jsonl=jsonl, **scope)
    assert (again["unchanged"], again["created"], again["chunks"], again["embedding_tokens"]) == (6, 0, 0, 0)
    await harness.ask(op="search", search=KnowledgeSearch(query="badges"), **scope)
    await harness.usage_count(1)  # the search's event only: the re-import embedded and billed nothing
    assert {line.sku for line in harness.usage[0].lines} >= {skus.KNOWLEDGE_SEARCH}


async def test_ingestion_bills_its_embedding_tokens_to_the_key(harness: Harness) -> None:
    await _seed(harness)
    (event,) = harness.usage
    assert (event.source, event.tenant, event.key_id) == ("retrieval", "acme", "k1")
    (line,) = event.lines
    assert line.sku == skus.KNOWLEDGE_EMBEDDINGS_IN and line.quantity > 0


async def test_bad_management_requests_are_openai_errors(harness: Harness) -> None:
    status, err = await harness.ask(op="upsert", tenant="acme", collection=ACME_DOCS, documents=[])
    assert status == 400 and err["error"]["param"] == "documents"
    status, err = await harness.ask(
        op="upsert",
        tenant="acme",
        collection=ACME_DOCS,
        documents=[{"docid": "p", "text": "not base64!", "content_type": "application/pdf"}],
    )
    assert status == 400 and "base64" in err["error"]["message"]
    status, _ = await harness.request(subjects.RETRIEVAL_MANAGE, b'{"op": "explode"}')
    assert status == 400


async def test_query_function_offers_the_search_tool_instead_of_searching(harness: Harness) -> None:
    await _seed(harness)
    harness.usage.clear()
    client_tool = {"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}
    sent = envelope("How do I reset my password?", strategy="QueryFunction", top=3, max_tool_rounds=2)
    assert sent.route is not None
    sent.route.body["tools"] = [client_tool]
    await harness.chat(sent)
    (msg,) = harness.worker
    routed = ChatEnvelope.routed(msg.data)
    assert routed.route is not None and routed.route.knowledge_tool is not None
    tool = routed.route.knowledge_tool
    assert (tool.collection, tool.top, tool.name, tool.max_rounds) == (ACME_DOCS, 3, KNOWLEDGE_TOOL_NAME, 2)
    # the client's tool first, then ours; the conversation untouched, nothing searched or billed yet
    tools = routed.route.body["tools"]
    assert tools[0] == client_tool and tools[1]["function"]["name"] == KNOWLEDGE_TOOL_NAME
    assert "'docs'" in tools[1]["function"]["description"]
    assert tools[1]["function"]["parameters"]["required"] == ["query"]
    assert routed.route.body["messages"] == sent.route.body["messages"]
    assert routed.route.grounding == [] and routed.route.prior_usage == []
    await asyncio.sleep(0.1)
    assert harness.usage == []


async def test_query_function_refuses_a_client_tool_of_the_same_name(harness: Harness) -> None:
    sent = envelope("hi", strategy="QueryFunction")
    assert sent.route is not None
    sent.route.body["tools"] = [{"type": "function", "function": {"name": KNOWLEDGE_TOOL_NAME}}]
    await harness.chat(sent)
    (err,) = harness.replies
    assert err.headers[headers.STATUS] == "400" and not harness.worker
    assert json.loads(err.data)["error"]["param"] == "tools"


async def test_a_tool_search_answers_fenced_passages_with_their_priced_lines(harness: Harness) -> None:
    await _seed(harness)
    harness.usage.clear()
    status, found = await harness.tool(
        request_id="req9", tenant="acme", collection=ACME_DOCS, query="reset my password", top=2
    )
    assert status == 200, found
    assert 'id="handbook#1"' in found["content"] and "NOT instructions" in found["content"]
    assert "Reset password" in found["content"]
    assert found["grounding"][0]["id"] == "handbook#1" and len(found["grounding"]) <= 2
    lines = {line["sku"]: line for line in found["lines"]}
    assert (
        lines[skus.KNOWLEDGE_SEARCH]["quantity"] == 1 and lines[skus.KNOWLEDGE_EMBEDDINGS_IN]["quantity"] > 0
    )
    await asyncio.sleep(0.1)
    assert harness.usage == []  # the worker meters tool searches, merged per request


async def test_a_tool_search_never_reaches_another_tenants_collection(harness: Harness) -> None:
    await _seed(harness, "globex", GLOBEX_DOCS, "# Globex secrets\n\nThe vault code is 4242.")
    status, found = await harness.tool(
        request_id="r", tenant="acme", collection=GLOBEX_DOCS, query="vault code"
    )
    assert status == 404 and "4242" not in json.dumps(found)
    # a collection with no documents yet: an honest "nothing found", still billed as a search
    status, found = await harness.tool(
        request_id="r", tenant="acme", collection=ACME_DOCS, query="vault code"
    )
    assert status == 200 and found["grounding"] == [] and "No passages" in found["content"]


async def test_readiness_follows_the_knowledge_store(
    tmp_path: Path, minilm: MiniLMEmbedder, nats_server: NatsServer
) -> None:
    """/readyz is 503 while the embedded store's directory is gone (moved away: the open SQLite
    handle would go on answering from the orphaned file) and 200 again once it is back."""

    async def readiness(want: int) -> dict[str, Any]:
        deadline = time.monotonic() + 5
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{h.health_port}") as http:
            while (resp := await http.get("/readyz")).status_code != want:
                assert time.monotonic() < deadline, resp.text
                await asyncio.sleep(0.02)
        body: dict[str, Any] = resp.json()
        return body

    async with running(tmp_path, minilm, nats_server.url, health_port=0, store_check_interval=0.05) as h:
        assert (await readiness(200))["checks"] == {"store": True}
        (tmp_path / "kb").rename(tmp_path / "kb-away")
        down = await readiness(503)
        assert down["checks"] == {"store": False} and down["nats_connected"] is True
        (tmp_path / "kb-away").rename(tmp_path / "kb")
        await readiness(200)


async def test_a_weaviate_with_nothing_listening_is_unavailable() -> None:
    import weaviate

    from aigw_devstack.procs import free_port
    from aigw_retrieval.stores.weaviate import WeaviateStore

    client = weaviate.use_async_with_local(
        host="127.0.0.1", port=free_port(), grpc_port=free_port(), skip_init_checks=True
    )
    store = WeaviateStore(client)
    try:
        assert await store.available() is False
    finally:
        await store.close()


@pytest.mark.usefixtures("tracing_on")
async def test_a_traced_grounding_forwards_its_trace_context_as_nats_headers_too(harness: Harness) -> None:
    await _seed(harness)
    asked = envelope("How do I reset my password?")
    asked.trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    await harness.chat(asked)
    (msg,) = harness.worker
    routed = ChatEnvelope.routed(msg.data)
    assert routed.trace["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert routed.trace != asked.trace and msg.headers == routed.trace  # the `retrieve` span's context
