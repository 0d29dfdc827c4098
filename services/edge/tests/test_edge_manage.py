"""The management API and usage on a real edge and NATS: gateway names unique per tenant, a
per-gateway version, tenant references checked, the "every tenant" switch for operators only,
usage date ranges checked at the edge, and one Authorization header per request. The test plays
the metering service where usage needs one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from aigw_contracts import ApiKey, ConfigSnapshot, Gateway, Tenant, subjects
from aigw_contracts.ids import uuid7
from aigw_contracts.keys import hash_secret, new_secret
from aigw_contracts.usage import UsageQuery, UsageReport, UsageTotals
from aigw_devstack.nats import NatsServer
from aigw_runtime.configstore import ConfigWriter

from .conftest import PEPPER, Edge, FakeRouter, eventually, seed_store, serve_edge

UPSTREAM = "@openai/gpt-5-mini"


@dataclass
class Callers:
    admin: httpx.AsyncClient  # acme's admin
    other: httpx.AsyncClient  # globex's admin
    operator: httpx.AsyncClient
    legacy: httpx.AsyncClient  # admin of a tenant named "all", stored before the name was reserved


@dataclass
class FakeMetering:
    """Answers `METERING_QUERY` with an empty report, recording each query."""

    nc: NATS
    seen: list[UsageQuery] = field(default_factory=list)

    async def start(self) -> FakeMetering:
        async def on_query(msg: Msg) -> None:
            query = UsageQuery.model_validate_json(msg.data)
            self.seen.append(query)
            start, end = query.resolved_range()
            report = UsageReport(
                tenant=query.tenant,
                start=start,
                end=end,
                group_by=query.group_by,
                bucket=query.bucket,
                rows=[],
                totals=UsageTotals(),
            )
            await msg.respond(report.model_dump_json().encode())

        await self.nc.subscribe(subjects.METERING_QUERY, cb=on_query)
        await self.nc.flush()
        return self


# Each test gets its own nats-server, so gateway names and tenants start from an empty store.
@pytest.fixture
async def bus_client(fresh_nats: NatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(fresh_nats.url)
    yield nc
    await nc.close()


@pytest.fixture
async def edge(fresh_nats: NatsServer, tmp_path: Path) -> AsyncIterator[Edge]:
    async with serve_edge(fresh_nats.url, tmp_path) as e:
        yield e


@pytest.fixture
async def callers(edge: Edge, fresh_nats: NatsServer) -> AsyncIterator[Callers]:
    secrets = {name: new_secret() for name in ("admin", "other", "operator", "legacy")}
    await seed_store(
        fresh_nats.url,
        ConfigSnapshot(
            tenants=[Tenant(id="globex"), Tenant(id="operator"), Tenant(id="all")],
            keys=[
                ApiKey(id="m-admin", tenant="acme", admin=True, hash=hash_secret(secrets["admin"], PEPPER)),
                ApiKey(id="m-other", tenant="globex", admin=True, hash=hash_secret(secrets["other"], PEPPER)),
                ApiKey(
                    id="m-operator",
                    tenant="operator",
                    operator=True,
                    hash=hash_secret(secrets["operator"], PEPPER),
                ),
                ApiKey(id="m-legacy", tenant="all", admin=True, hash=hash_secret(secrets["legacy"], PEPPER)),
            ],
        ),
    )
    await eventually(lambda: len(edge.app.keys) >= 8, what="the new keys seen by the edge")

    def client(name: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"{edge.url}/v1", headers={"Authorization": f"Bearer {secrets[name]}"}, timeout=10
        )

    async with client("admin") as a, client("other") as o, client("operator") as op, client("legacy") as lg:
        yield Callers(a, o, op, lg)


@pytest.fixture
async def metering(fresh_nats: NatsServer) -> AsyncIterator[FakeMetering]:
    nc = await nats.connect(fresh_nats.url)
    yield await FakeMetering(nc).start()
    await nc.close()


def _error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    return error


async def _gateway(c: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    resp = await c.post("/gateways", json={"name": name, "upstream": UPSTREAM, **fields})
    assert resp.status_code == 201, resp.text
    created: dict[str, Any] = resp.json()
    return created


# ------------------------------------------------------------------------------ gateway names


async def test_gateway_names_are_unique_per_tenant_on_create_import_and_rename(callers: Callers) -> None:
    first = await _gateway(callers.admin, "support")
    again = _error(await callers.admin.post("/gateways", json={"name": "support", "upstream": UPSTREAM}), 409)
    assert again["code"] == "conflict" and again["param"] == "name"
    assert first["slug"] in again["message"] and first["id"] in again["message"]

    exported = (await callers.admin.get("/gateways/support/export")).json()
    assert first["id"] in _error(await callers.admin.post("/gateways/import", json=exported), 409)["message"]

    other = await _gateway(callers.admin, "billing")
    renamed = _error(await callers.admin.patch(f"/gateways/{other['id']}", json={"name": "support"}), 409)
    assert renamed["code"] == "conflict" and first["slug"] in renamed["message"]
    kept = await callers.admin.patch(f"/gateways/{other['id']}", json={"name": "billing", "description": "x"})
    assert kept.status_code == 200  # keeping its own name is no conflict

    theirs = await _gateway(callers.other, "support")  # another tenant may use the name
    assert theirs["tenant"] == "globex"
    # ... and so may an operator creating a gateway for a tenant where the name is free.
    assert (await _gateway(callers.operator, "billing", tenant="globex"))["tenant"] == "globex"
    clash = await callers.operator.post(
        "/gateways", json={"name": "support", "upstream": UPSTREAM, "tenant": "acme"}
    )
    assert "acme" in _error(clash, 409)["message"]

    listed = (await callers.admin.get("/gateways")).json()["data"]
    assert sorted(g["name"] for g in listed) == ["billing", "support"]
    assert (await callers.admin.delete("/gateways/support")).json()["id"] == first["id"]


async def test_concurrent_creates_through_one_edge_make_one_gateway(callers: Callers) -> None:
    answers = await asyncio.gather(
        *(callers.admin.post("/gateways", json={"name": "racy", "upstream": UPSTREAM}) for _ in range(6))
    )
    assert sorted(r.status_code for r in answers) == [201] + [409] * 5
    listed = (await callers.admin.get("/gateways")).json()["data"]
    assert [g["name"] for g in listed].count("racy") == 1


async def test_a_name_two_stored_gateways_share_is_a_conflict_not_a_coin_toss(
    callers: Callers, fresh_nats: NatsServer
) -> None:
    twins = [Gateway(id=uuid7(), name="twin", tenant="acme", upstream=UPSTREAM) for _ in range(2)]
    nc = await nats.connect(fresh_nats.url)
    try:  # as stored before names were unique (or by two edges racing)
        writer = await ConfigWriter.open(nc.jetstream())
        for gateway in twins:
            await writer.put("gateway", gateway)
    finally:
        await nc.close()
    for _ in range(500):  # until the edge's watcher has both
        listed = (await callers.admin.get("/gateways")).json()["data"]
        if {g.id for g in twins} <= {g["id"] for g in listed}:
            break
        await asyncio.sleep(0.01)
    for resp in (await callers.admin.get("/gateways/twin"), await callers.admin.delete("/gateways/twin")):
        error = _error(resp, 409)
        assert all(g.slug in error["message"] for g in twins)
    for gateway in twins:  # each is still there, and reachable by its slug or id
        assert (await callers.admin.get(f"/gateways/{gateway.slug}")).status_code == 200
    assert (await callers.admin.delete(f"/gateways/{twins[0].id}")).status_code == 200
    assert (await callers.admin.get("/gateways/twin")).json()["id"] == twins[1].id


# ------------------------------------------------------------------------------ versions


async def test_a_gateways_version_starts_at_1_and_counts_its_updates(callers: Callers) -> None:
    created = await _gateway(callers.admin, "counted", instructions="v1")
    assert created["version"] == 1
    for n in (2, 3):
        changed = await callers.admin.patch(f"/gateways/{created['id']}", json={"instructions": f"v{n}"})
        assert changed.status_code == 200 and changed.json()["version"] == n
    assert (await callers.admin.get("/gateways/counted")).json()["version"] == 3
    history = (await callers.admin.get("/gateways/counted/versions")).json()["data"]
    assert [(v["version"], v["instructions"]) for v in history] == [(1, "v1"), (2, "v2"), (3, "v3")]
    another = await _gateway(callers.admin, "fresh")  # not the store's global revision
    assert another["version"] == 1
    exported = (await callers.admin.get("/gateways/counted/export")).json()
    assert "version" not in exported
    exported["name"] = "copied"
    imported = await callers.admin.post("/gateways/import", json=exported)
    assert imported.status_code == 201 and imported.json()["version"] == 1


# ------------------------------------------------------------------------------ tenant references


@pytest.mark.parametrize("bad", ["sp ace", "x.>", "*", "all", "Upper"])
async def test_malformed_or_reserved_tenant_ids_are_400(callers: Callers, bad: str) -> None:
    created = await callers.operator.post("/tenants", json={"id": bad})
    assert _error(created, 400)["param"] == "id"
    key = await callers.operator.post("/keys", json={"tenant": bad, "name": "x"})
    assert _error(key, 400)["param"] == "tenant"
    gateway = await callers.operator.post(
        "/gateways", json={"name": "g", "upstream": UPSTREAM, "tenant": bad}
    )
    assert _error(gateway, 400)["param"] == "tenant"
    listed = await callers.operator.get("/gateways", params={"tenant": bad})
    assert _error(listed, 400)["param"] == "tenant"
    # A non-operator naming a malformed tenant learns only that it is malformed.
    assert _error(await callers.admin.post("/keys", json={"tenant": bad}), 400)["param"] == "tenant"


async def test_an_operator_naming_a_tenant_that_does_not_exist_is_404(callers: Callers) -> None:
    for resp in (
        await callers.operator.post("/keys", json={"tenant": "nobody", "name": "x"}),
        await callers.operator.post(
            "/gateways", json={"name": "g", "upstream": UPSTREAM, "tenant": "nobody"}
        ),
        await callers.operator.get("/keys", params={"tenant": "nobody"}),
    ):
        error = _error(resp, 404)
        assert (error["param"], error["code"]) == ("tenant", "tenant_not_found")
    key = await callers.operator.post("/keys", json={"tenant": "globex", "name": "x"})
    assert key.status_code == 201 and key.json()["tenant"] == "globex"
    assert _error(await callers.admin.post("/keys", json={"tenant": "globex"}), 403)["param"] == "tenant"


# ------------------------------------------------------------------------------ usage


async def test_every_tenants_usage_is_for_operator_keys_alone(
    callers: Callers, metering: FakeMetering
) -> None:
    # A tenant named "all" (stored before the name was reserved) is not every tenant.
    assert _error(await callers.legacy.get("/usage", params={"tenant": "all"}), 403)["param"] == "tenant"
    assert _error(await callers.admin.get("/usage", params={"tenant": "all"}), 403)["param"] == "tenant"
    assert _error(await callers.admin.get("/usage", params={"tenant": "globex"}), 404)["param"] == "tenant"
    assert metering.seen == []
    own = await callers.legacy.get("/usage")
    assert own.status_code == 200 and own.json()["tenant"] == "all"  # its own usage, as a name

    assert (await callers.operator.get("/usage", params={"tenant": "all"})).json()["tenant"] is None
    assert (await callers.operator.get("/usage", params={"tenant": "globex"})).json()["tenant"] == "globex"
    assert [q.tenant for q in metering.seen] == ["all", None, "globex"]
    for bad, status in (("x.>", 400), ("*", 400), ("sp ace", 400), ("nobody", 404)):
        assert (
            _error(await callers.operator.get("/usage", params={"tenant": bad}), status)["param"] == "tenant"
        )
    assert len(metering.seen) == 3


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"from": "0026-01-01"}, "from"),
        ({"from": "1969-12-31T23:59:59Z"}, "from"),
        ({"to": "2400-01-01"}, "to"),
        ({"from": "2026-02-01", "to": "2026-01-01"}, "from"),
    ],
)
async def test_usage_dates_outside_what_the_store_holds_are_400_naming_the_param(
    callers: Callers, metering: FakeMetering, params: dict[str, str], param: str
) -> None:
    error = _error(await callers.admin.get("/usage", params=params), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert metering.seen == []
    fine = await callers.admin.get("/usage", params={"from": "1970-01-01", "to": "2299-12-31"})
    assert fine.status_code == 200
    assert metering.seen[0].start == datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------------------ Authorization


async def test_two_authorization_headers_are_400_on_chat_and_management(
    edge: Edge, router: FakeRouter
) -> None:
    good, other = f"Bearer {edge.keys.good}", f"Bearer {edge.keys.public}"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    async with httpx.AsyncClient(base_url=edge.url, timeout=10) as http:
        for method, path in (
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("GET", "/v1/gateways"),
            ("GET", "/v1/usage"),
        ):
            for pair in ((good, other), ("Bearer aigw_nope", good), (good, good)):
                headers = [
                    ("authorization", pair[0]),
                    ("authorization", pair[1]),
                    ("content-type", "application/json"),
                ]
                resp = await http.request(
                    method, path, headers=headers, content=body if method == "POST" else None
                )
                error = _error(resp, 400)
                assert error["code"] == "duplicate_authorization", (method, path)
    assert router.envelopes == []
