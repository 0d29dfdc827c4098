"""`/v1/collections`: collections in the config store, documents and search asked of the retrieval
service over NATS. The test plays the retrieval service: it records each `KnowledgeRequest` and
answers scripted replies, so what the edge puts in a request (tenant and collection from the key and
the path, never from the body) and how it relays answers and errors are checked on their own."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from aigw_contracts import ApiKey, ConfigSnapshot, Tenant, errors, headers, subjects
from aigw_contracts.keys import hash_secret, new_secret
from aigw_contracts.knowledge import KnowledgeRequest
from aigw_devstack.nats import NatsServer

from .conftest import PEPPER, Edge, eventually, seed_store, serve_edge

Reply = Callable[[KnowledgeRequest], tuple[int, Any]]


@dataclass
class FakeRetrieval:
    """Answers `RETRIEVAL_MANAGE` like the retrieval service: JSON, or an error with `Aigw-Status`."""

    nc: NATS
    seen: list[KnowledgeRequest] = field(default_factory=list)
    reply: Reply = lambda r: (200, {"ok": True, "op": r.op})

    async def start(self) -> FakeRetrieval:
        async def on_request(msg: Msg) -> None:
            request = KnowledgeRequest.model_validate_json(msg.data)
            self.seen.append(request)
            status, body = self.reply(request)
            hdrs = None if status == 200 else {headers.STATUS: str(status)}
            await self.nc.publish(msg.reply, json.dumps(body).encode(), headers=hdrs)

        await self.nc.subscribe(subjects.RETRIEVAL_MANAGE, cb=on_request)
        await self.nc.flush()
        return self


@dataclass
class Clients:
    admin: httpx.AsyncClient  # acme's admin
    reader: httpx.AsyncClient  # acme's private, non-admin key
    public: httpx.AsyncClient
    other: httpx.AsyncClient  # globex's admin


@pytest.fixture
async def edge(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Edge]:
    async with serve_edge(nats_server.url, tmp_path) as e:
        yield e


@pytest.fixture
async def clients(edge: Edge, nats_server: NatsServer) -> AsyncIterator[Clients]:
    admin, other = new_secret(), new_secret()
    await seed_store(
        nats_server.url,
        ConfigSnapshot(
            tenants=[Tenant(id="globex")],
            keys=[
                ApiKey(id="k-admin", tenant="acme", admin=True, hash=hash_secret(admin, PEPPER)),
                ApiKey(id="k-globex", tenant="globex", admin=True, hash=hash_secret(other, PEPPER)),
            ],
        ),
    )
    await eventually(lambda: len(edge.app.keys) >= 6, what="new keys seen by the edge")

    def client(secret: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{edge.url}/v1", headers={"Authorization": f"Bearer {secret}"}, timeout=10
        )

    async with (
        client(admin) as a,
        client(edge.keys.good) as r,
        client(edge.keys.public) as p,
        client(other) as o,
    ):
        yield Clients(a, r, p, o)


@pytest.fixture
async def retrieval(nats_server: NatsServer) -> AsyncIterator[FakeRetrieval]:
    nc = await nats.connect(nats_server.url)
    yield await FakeRetrieval(nc).start()
    await nc.close()


def _name(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**9}"


async def _collection(c: httpx.AsyncClient, name: str | None = None) -> dict[str, Any]:
    created = await c.post("/collections", json={"name": name or _name("kb"), "description": "test"})
    assert created.status_code == 201, created.text
    return dict(created.json())


async def test_collections_are_created_listed_shown_by_id_or_name_per_tenant(clients: Clients) -> None:
    kb = await _collection(clients.admin)
    assert kb["object"] == "collection" and kb["tenant"] == "acme" and kb["gateways"] == []
    again = await clients.admin.post("/collections", json={"name": kb["name"]})
    assert again.status_code == 409 and again.json()["error"]["param"] == "name"
    assert (await clients.reader.get(f"/collections/{kb['name']}")).json()["id"] == kb["id"]
    assert kb["id"] in {c["id"] for c in (await clients.reader.get("/collections")).json()["data"]}
    # another tenant: the same name is free, and acme's collection does not exist for them
    theirs = await _collection(clients.other, kb["name"])
    assert theirs["id"] != kb["id"]
    assert (await clients.other.get(f"/collections/{kb['id']}")).status_code == 404
    assert kb["id"] not in {c["id"] for c in (await clients.other.get("/collections")).json()["data"]}


async def test_writes_need_an_admin_key_and_public_keys_read_nothing(
    clients: Clients, retrieval: FakeRetrieval
) -> None:
    kb = await _collection(clients.admin)
    assert (await clients.reader.post("/collections", json={"name": _name("no")})).status_code == 403
    doc = {"docid": "a", "text": "hello"}
    assert (await clients.reader.post(f"/collections/{kb['id']}/documents", json=doc)).status_code == 403
    assert (await clients.reader.delete(f"/collections/{kb['id']}")).status_code == 403
    assert (await clients.public.get(f"/collections/{kb['id']}")).status_code == 403
    assert (
        await clients.public.post(f"/collections/{kb['id']}/search", json={"query": "x"})
    ).status_code == 403
    assert not retrieval.seen
    # a private key may search and read its own tenant's collections
    assert (
        await clients.reader.post(f"/collections/{kb['id']}/search", json={"query": "x"})
    ).status_code == 200
    assert (await clients.reader.get(f"/collections/{kb['id']}/documents")).status_code == 200


async def test_requests_carry_tenant_and_collection_from_the_key_and_path(
    clients: Clients, retrieval: FakeRetrieval
) -> None:
    kb = await _collection(clients.admin)
    base = f"/collections/{kb['name']}"
    one = {
        "docid": "handbook",
        "text": "# Hi",
        "content_type": "text/markdown",
        "__tags": ["hr"],
        "__ref": "hb",
    }
    assert (await clients.admin.post(f"{base}/documents", json=one)).status_code == 200
    assert (
        await clients.admin.post(f"{base}/documents", json={"documents": [one, {**one, "docid": "b"}]})
    ).status_code == 200
    lines = "\n".join(json.dumps({"docid": f"d{i}", "text": "x"}) for i in range(3))
    imported = await clients.admin.post(f"{base}/documents:import", content=lines.encode())
    assert imported.status_code == 200
    await clients.reader.get(f"{base}/documents", params={"offset": 10, "limit": 5})
    await clients.reader.get(f"{base}/documents/dir/handbook.md")
    await clients.admin.delete(f"{base}/documents/handbook")
    search = {"query": ["refunds", "cards"], "top": 3, "minScore": 0.5, "includeReferences": True}
    await clients.reader.post(f"{base}/search", json=search)

    ops = [r.op for r in retrieval.seen]
    assert ops == ["upsert", "upsert", "import", "list", "get", "delete", "search"]
    assert all((r.tenant, r.collection) == ("acme", kb["id"]) for r in retrieval.seen)
    assert retrieval.seen[0].key_id == "k-admin" and retrieval.seen[3].key_id == "k-good"
    first = retrieval.seen[0].documents[0]
    assert (first.tags, first.ref, first.content_type) == (["hr"], "hb", "text/markdown")
    assert [d.docid for d in retrieval.seen[1].documents] == ["handbook", "b"]
    assert retrieval.seen[2].jsonl == lines
    assert (retrieval.seen[3].offset, retrieval.seen[3].limit) == (10, 5)
    assert retrieval.seen[4].docid == "dir/handbook.md"
    found = retrieval.seen[6].search
    assert found is not None and (found.terms, found.top, found.min_score, found.include_references) == (
        ["refunds", "cards"],
        3,
        0.5,
        True,
    )


async def test_a_body_naming_another_tenant_changes_nothing(
    clients: Clients, retrieval: FakeRetrieval
) -> None:
    theirs = await _collection(clients.other)
    kb = await _collection(clients.admin)
    sneaky = {"docid": "x", "text": "y", "tenant": "globex"}
    resp = await clients.admin.post(f"/collections/{kb['id']}/documents", json=sneaky)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "tenant"
    for path in (f"/collections/{theirs['id']}/documents", f"/collections/{theirs['name']}/documents"):
        assert (await clients.admin.post(path, json={"docid": "x", "text": "y"})).status_code == 404
        assert (await clients.admin.get(path)).status_code == 404
    assert (
        await clients.admin.post(f"/collections/{theirs['id']}/search", json={"query": "x"})
    ).status_code == 404
    assert not retrieval.seen


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": "no docid"}, "docid"),
        ({"docid": "a", "text": "x", "content_type": "image/png"}, "content_type"),
        ({"documents": []}, "documents"),
        ({"documents": [{"docid": "a", "text": "x", "__tags": "hr"}]}, "documents[0].__tags"),
    ],
)
async def test_bad_documents_are_400s_naming_the_field(
    clients: Clients, retrieval: FakeRetrieval, body: dict[str, Any], param: str
) -> None:
    kb = await _collection(clients.admin)
    resp = await clients.admin.post(f"/collections/{kb['id']}/documents", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param and not retrieval.seen


async def test_retrieval_errors_and_absence_reach_the_client_as_openai_errors(
    clients: Clients, retrieval: FakeRetrieval
) -> None:
    kb = await _collection(clients.admin)
    missing = errors.NotFound(
        "No document 'nope' exists in this collection.", param="docid", code="document_not_found"
    )
    retrieval.reply = lambda r: (404, json.loads(missing.to_json()))
    resp = await clients.admin.get(f"/collections/{kb['id']}/documents/nope")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "document_not_found"
    await retrieval.nc.close()  # no retrieval service at all: 503, which the SDKs retry
    resp = await clients.admin.get(f"/collections/{kb['id']}/documents")
    assert resp.status_code == 503 and "retrieval" in resp.json()["error"]["message"]


async def test_a_batch_over_the_bus_limit_is_413_with_a_hint(
    clients: Clients, retrieval: FakeRetrieval
) -> None:
    kb = await _collection(clients.admin)
    # 800 KB of JSON Lines, under the HTTP body limit; every quote is escaped twice on its way into
    # the request to the retrieval service, which makes that message 1.6 MB, over NATS's 1 MiB.
    lines = "\n".join(json.dumps({"docid": f"d{i}", "text": '"' * 200_000}) for i in range(2))
    resp = await clients.admin.post(f"/collections/{kb['id']}/documents:import", content=lines.encode())
    assert resp.status_code == 413 and "smaller batches" in resp.json()["error"]["message"]
    assert not retrieval.seen


async def test_gateways_ground_only_on_their_tenants_collections(clients: Clients) -> None:
    kb = await _collection(clients.admin)
    theirs = await _collection(clients.other)
    gw = {"name": _name("gw"), "upstream": "@openai/gpt-5-mini"}
    for bad, param in (
        ({"collection": theirs["id"]}, "knowledge.collection"),
        ({"collection": "no-such-collection"}, "knowledge.collection"),
        ({"collection": kb["id"], "strategy": "Guess"}, "knowledge.strategy"),
        ({"collection": kb["id"], "strategy": "FullRewrite", "resolver": "@nope/none"}, "knowledge.resolver"),
        ({"collection": kb["id"], "strategy": "QueryFunction", "reranker": "model"}, "knowledge.reranker"),
        ({"collection": kb["id"], "top": 0}, "knowledge.top"),
    ):
        resp = await clients.admin.post("/gateways", json={**gw, "knowledge": bad})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["param"] == param
    created = await clients.admin.post(
        "/gateways", json={**gw, "knowledge": {"collection": kb["name"], "top": 3, "minScore": 0.4}}
    )
    assert created.status_code == 201, created.text
    knowledge = created.json()["knowledge"]
    assert (knowledge["collection"], knowledge["top"], knowledge["minScore"]) == (kb["id"], 3, 0.4)
    shown = (await clients.admin.get(f"/collections/{kb['id']}")).json()
    assert shown["gateways"] == [created.json()["slug"]]

    in_use = await clients.admin.delete(f"/collections/{kb['id']}")
    assert in_use.status_code == 409 and created.json()["slug"] in in_use.json()["error"]["message"]
    patched = await clients.admin.patch(f"/gateways/{created.json()['id']}", json={"knowledge": None})
    assert patched.status_code == 200 and patched.json()["knowledge"] is None


async def test_deleting_a_collection_drops_its_documents_first(
    clients: Clients, retrieval: FakeRetrieval
) -> None:
    kb = await _collection(clients.admin)
    retrieval.reply = lambda r: (503, json.loads(errors.Unavailable("store down").to_json()))
    assert (await clients.admin.delete(f"/collections/{kb['id']}")).status_code == 503
    assert (await clients.admin.get(f"/collections/{kb['id']}")).status_code == 200  # kept: retry later
    retrieval.reply = lambda r: (200, {"deleted": True})
    assert (await clients.admin.delete(f"/collections/{kb['id']}")).json()["deleted"] is True
    assert [r.op for r in retrieval.seen] == ["drop", "drop"]
    assert (await clients.admin.get(f"/collections/{kb['id']}")).status_code == 404
