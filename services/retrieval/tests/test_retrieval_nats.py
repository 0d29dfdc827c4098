"""The retrieval service as a real process (`aigw-retrieval`) on a real nats-server.

Drives it the way the edge and the router do, with raw nats-py: management requests on
`RETRIEVAL_MANAGE`, routed envelopes on `RETRIEVAL_CHAT` (the test plays the worker pool), and reads
the usage stream. Collections come from the config store the service watches.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from aigw_contracts import (
    ChatCompletionRequest,
    ChatEnvelope,
    RoutedCall,
    UpstreamTarget,
    UsageEvent,
    headers,
    skus,
    streams,
    subjects,
)
from aigw_contracts.config import Prices
from aigw_contracts.ids import uuid7
from aigw_contracts.knowledge import Collection, GatewayKnowledge, KnowledgeRequest, KnowledgeSearch
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import Process
from aigw_runtime.configstore import ConfigWriter

RETRIEVAL_ID = "rnats"
EDGE = "knats"
COLLECTION = Collection(id=uuid7(), tenant="acme", name="faq")
OTHER = Collection(id=uuid7(), tenant="globex", name="faq")


def _binary(name: str) -> str:
    import sys

    return str(Path(sys.executable).parent / name)


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NatsServer, Process]]:
    """A nats-server of this module's own (so no other test's worker answers WORKER_CHAT) and the service."""
    state = tmp_path_factory.mktemp("retrieval-nats")
    server = NatsServer(state / "nats").start()
    asyncio.run(_store_collections(server.url))
    log_path = state / "retrieval.log"
    proc = Process(
        "retrieval",
        [_binary("aigw-retrieval")],
        log_path,
        env={
            "AIGW_NATS_URL": server.url,
            "AIGW_KNOWLEDGE_PATH": str(state / "knowledge"),
            "AIGW_RETRIEVAL_ID": RETRIEVAL_ID,
            "AIGW_PRICE_KNOWLEDGE_SEARCH": "0.0005",
        },
    ).start()
    try:
        proc.wait_ready(lambda: '"msg": "ready"' in log_path.read_text(errors="replace"), timeout=60)
        yield server, proc
    finally:
        proc.stop()
        server.stop()


async def _store_collections(url: str) -> None:
    nc = await nats.connect(url)
    try:
        writer = await ConfigWriter.open(nc.jetstream())
        for collection in (COLLECTION, OTHER):
            await writer.put("collection", collection)
    finally:
        await nc.close()


@pytest.fixture
async def nc(bus: tuple[NatsServer, Process]) -> AsyncIterator[Client]:
    client = await nats.connect(bus[0].url)
    yield client
    await client.close()


async def _ask(nc: Client, wait: float = 60, **request: Any) -> tuple[int, Any]:
    body = KnowledgeRequest(**request).model_dump_json(by_alias=True).encode()
    reply = await nc.request(subjects.RETRIEVAL_MANAGE, body, timeout=wait)
    return int((reply.headers or {}).get(headers.STATUS, 200)), json.loads(reply.data)


def _envelope(text: str, collection: Collection = COLLECTION, tenant: str = "acme") -> ChatEnvelope:
    request_id = uuid7()
    return ChatEnvelope(
        request_id=request_id,
        tenant=tenant,
        key_id="k1",
        reply=subjects.reply_subject(EDGE, request_id),
        deadline=time.time() + 30,
        request=ChatCompletionRequest(model="faq-bot", messages=[{"role": "user", "content": text}]),
        route=RoutedCall(
            gateway_id="gw1",
            upstream=UpstreamTarget(
                id="@sim/sim-model",
                kind="own",
                provider="sim",
                model="sim",
                base_url="http://x",
                prices=Prices(),
            ),
            body={"messages": [{"role": "user", "content": text}]},
            response_model="@sim/sim-model",
            knowledge=GatewayKnowledge(collection=collection.id),
        ),
    )


async def _first(box: list[Msg], within: float = 20.0) -> Msg:
    deadline = time.monotonic() + within
    while not box:
        if time.monotonic() > deadline:
            raise AssertionError("nothing arrived in time")
        await asyncio.sleep(0.01)
    return box[0]


def _faq(n: int, offset: int = 0) -> str:
    topics = ["invoices", "parcels", "passwords", "holidays", "printers", "parking", "coffee", "badges"]
    return "\n".join(
        json.dumps({"docid": f"faq-{i}", "text": f"FAQ {i}: how {topics[i % 8]} work, rule {i}."})
        for i in range(offset, offset + n)
    )


async def test_a_batched_import_resumes_by_rerunning_it(nc: Client) -> None:
    scope: dict[str, Any] = {"tenant": "acme", "collection": COLLECTION.id, "key_id": "k1"}
    # the first batch went through, then the client died: re-running the whole import redoes nothing
    status, first = await _ask(nc, op="import", jsonl=_faq(20), **scope)
    assert status == 200 and first["created"] == 20
    reports = [(await _ask(nc, op="import", jsonl=_faq(20, offset), **scope))[1] for offset in (0, 20)]
    assert (reports[0]["unchanged"], reports[0]["embedding_tokens"]) == (20, 0)
    assert reports[1]["created"] == 20
    status, listed = await _ask(nc, op="list", limit=1000, **scope)
    assert len(listed["data"]) == 40


async def test_grounded_envelopes_reach_a_worker_and_their_search_is_metered(nc: Client) -> None:
    scope: dict[str, Any] = {"tenant": "acme", "collection": COLLECTION.id, "key_id": "k1"}
    doc = {"docid": "wifi", "text": "The office Wi-Fi password is printed under the coffee machine."}
    assert (await _ask(nc, op="upsert", documents=[doc], **scope))[0] == 200
    seen: list[Msg] = []

    async def worker(msg: Msg) -> None:
        seen.append(msg)

    sub = await nc.subscribe(subjects.WORKER_CHAT, queue=subjects.WORKER_QUEUE, cb=worker)
    try:
        env = _envelope("Where is the wifi password?")
        await nc.publish(subjects.RETRIEVAL_CHAT, env.model_dump_json(exclude_none=True).encode())
        msg = await _first(seen)
    finally:
        await sub.unsubscribe()
    assert msg.reply == subjects.bounce_subject(RETRIEVAL_ID, env.reply)
    routed = ChatEnvelope.routed(msg.data)
    assert routed.route is not None and routed.route.grounding[0].id == "wifi#0"
    assert "coffee machine" in routed.route.body["messages"][0]["content"]

    js = nc.jetstream()
    deadline = time.monotonic() + 10
    while True:
        try:
            raw = await js.get_last_msg(streams.USAGE_STREAM, subjects.usage_subject("acme"))
            event = UsageEvent.model_validate_json(raw.data or b"")
            if event.request_id == env.request_id:
                break
        except Exception:
            pass
        assert time.monotonic() < deadline, "no usage event for the grounded request"
        await asyncio.sleep(0.05)
    assert raw.headers is not None and raw.headers["Nats-Msg-Id"] == f"{env.request_id}:retrieval"
    search = next(line for line in event.lines if line.sku == skus.KNOWLEDGE_SEARCH)
    assert str(search.amount) == "0.0005"  # billed even though the model is the tenant's own endpoint


async def test_without_workers_the_edge_gets_a_503_event(nc: Client) -> None:
    events: list[Msg] = []

    async def edge(msg: Msg) -> None:
        events.append(msg)

    await nc.subscribe(subjects.reply_wildcard(EDGE), cb=edge)
    await nc.flush()
    env = _envelope("anything about parcels?")
    await nc.publish(subjects.RETRIEVAL_CHAT, env.model_dump_json(exclude_none=True).encode())
    err = await _first(events)
    assert err.subject == env.reply
    assert err.headers is not None and err.headers[headers.STATUS] == "503"


async def test_another_tenants_collection_is_not_found(nc: Client) -> None:
    status, body = await _ask(
        nc, op="search", tenant="acme", collection=OTHER.id, search=KnowledgeSearch(query="rules")
    )
    assert status == 404 and body["error"]["code"] == "collection_not_found"


async def test_deleting_a_collection_in_the_config_store_drops_its_documents(nc: Client) -> None:
    doomed = Collection(id=uuid7(), tenant="acme", name="doomed")
    writer = await ConfigWriter.open(nc.jetstream())
    await writer.put("collection", doomed)
    scope: dict[str, Any] = {"tenant": "acme", "collection": doomed.id}
    doc = {"docid": "d", "text": "Temporary notes about the parking garage."}
    assert (await _ask(nc, op="upsert", documents=[doc], **scope))[0] == 200
    await writer.delete("collection", doomed.id)
    deadline = time.monotonic() + 10
    while (await _ask(nc, op="list", **scope))[1]["data"]:
        assert time.monotonic() < deadline, "documents of a deleted collection are still there"
        await asyncio.sleep(0.05)
