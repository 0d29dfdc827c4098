"""Configuration as watched data: the management API, tenancy, keys, own endpoints, through real processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from aigw_runtime import natsauth
from aigw_runtime.configstore import BUCKET
from tests.conftest import eventually


def _chat(client: OpenAI, model: str, text: str = "hi [sim tokens=2]") -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


def _works(client: OpenAI, model: str) -> bool:
    try:
        _chat(client, model)
    except openai.NotFoundError:
        return False
    return True


def test_gateway_lifecycle_takes_effect_within_a_second(admin: httpx.Client, client: OpenAI) -> None:
    created = admin.post(
        "/gateways",
        json={"name": "lifecycle", "upstream": "@sim/sim-model", "instructions": "FIRST [sim echo]"},
    )
    assert created.status_code == 201, created.text
    gw = created.json()
    assert gw["slug"] == f"lifecycle:{gw['id'][-4:]}" and gw["version"] == 1
    took = eventually(lambda: _works(client, gw["id"]), 1.0, "new gateway routable")
    assert took < 1.0

    updated = admin.patch(f"/gateways/{gw['slug']}", json={"instructions": "SECOND [sim echo]"})
    assert updated.status_code == 200 and updated.json()["version"] == 2

    def sees_second() -> bool:
        content = _chat(client, gw["id"], "what? [sim echo]").choices[0].message.content or ""
        return "SECOND" in content

    eventually(sees_second, 1.0, "updated instructions in effect")
    versions = admin.get(f"/gateways/{gw['id']}/versions").json()["data"]
    assert [v["instructions"] for v in versions][-2:] == ["FIRST [sim echo]", "SECOND [sim echo]"]

    exported = admin.get(f"/gateways/{gw['id']}/export").json()
    assert exported["format"] == "aigw.gateway.v1" and "id" not in exported
    exported["name"] = "imported"
    imported = admin.post("/gateways/import", json=exported)
    assert imported.status_code == 201 and imported.json()["instructions"] == "SECOND [sim echo]"

    assert admin.delete(f"/gateways/{gw['id']}").status_code == 200
    eventually(lambda: not _works(client, gw["id"]), 1.0, "deleted gateway gone")


def test_gateway_names_are_unique_so_a_chat_by_name_finds_one(admin: httpx.Client, client: OpenAI) -> None:
    first = admin.post("/gateways", json={"name": "only-one", "upstream": "@sim/sim-model"})
    assert first.status_code == 201, first.text
    second = admin.post("/gateways", json={"name": "only-one", "upstream": "@sim/sim-model"})
    assert second.status_code == 409 and second.json()["error"]["code"] == "conflict"
    assert first.json()["slug"] in second.json()["error"]["message"]
    eventually(lambda: _works(client, "only-one"), 1.0, "the gateway routable by name")
    assert admin.delete("/gateways/only-one").json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "Bad Name", "upstream": "@sim/sim-model"}, "name"),
        ({"name": "x", "upstream": "@nope/none"}, "upstream"),
        (
            {"name": "x", "upstream": "@sim/sim-model", "parameters": {"temperature": 7}},
            "parameters.temperature",
        ),
        ({"name": "x", "upstream": "@sim/sim-model", "parameters": {"warp": 1}}, "parameters.warp"),
        ({"name": "x", "upstream": "@sim/sim-model", "colour": "red"}, "colour"),
    ],
)
def test_invalid_gateways_are_openai_400s_naming_the_field(
    admin: httpx.Client, body: dict[str, Any], param: str
) -> None:
    resp = admin.post("/gateways", json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_tenants_are_isolated_and_foreign_ids_look_unknown(
    operator: httpx.Client, admin: httpx.Client, client: OpenAI, stack: Stack
) -> None:
    operator.post("/tenants", json={"id": "other", "name": "Other Inc"})
    key = operator.post("/keys", json={"tenant": "other", "admin": True, "name": "other admin"}).json()
    assert key["secret"].startswith("aigw_") and key["tenant"] == "other"
    other_admin = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key['secret']}"})
    theirs = other_admin.post("/gateways", json={"name": "secret-sauce", "upstream": "@sim/sim-model"}).json()
    other_client = OpenAI(base_url=stack.base_url, api_key=key["secret"], max_retries=0)
    eventually(lambda: _works(other_client, theirs["id"]), 1.0, "other tenant's gateway routable")

    with pytest.raises(openai.NotFoundError) as err:
        _chat(client, theirs["id"])
    assert "does not exist" in err.value.message
    assert theirs["id"] not in {m.id for m in client.models.list()}
    assert admin.get(f"/gateways/{theirs['id']}").status_code == 404
    assert theirs["id"] not in {g["id"] for g in admin.get("/gateways").json()["data"]}
    assert {m.id for m in other_client.models.list()} >= {theirs["id"], theirs["slug"]}
    assert admin.post("/tenants", json={"id": "sneaky"}).status_code == 403


def test_keys_are_hashed_shown_once_and_revocable(admin: httpx.Client, stack: Stack) -> None:
    created = admin.post("/keys", json={"name": "short-lived"}).json()
    secret = created["secret"]
    listed = admin.get("/keys").json()["data"]
    assert all("secret" not in k and "hash" not in k for k in listed)
    fresh = OpenAI(base_url=stack.base_url, api_key=secret, max_retries=0)
    eventually(lambda: _chat(fresh, "demo") is not None, 1.0, "new key usable")

    assert admin.post(f"/keys/{created['id']}/revoke").json()["revoked"] is True

    def refused() -> bool:
        try:
            _chat(fresh, "demo")
        except openai.AuthenticationError:
            return True
        return False

    eventually(refused, 1.0, "revoked key refused")
    raw = asyncio.run(_bucket_dump(stack))
    assert secret not in raw and secret[5:] not in raw
    logs = "".join(p.read_text(errors="replace") for p in (stack.state_dir / "logs").glob("*.log"))
    assert secret not in logs and stack.demo is not None and stack.demo.key not in logs


async def _bucket_dump(stack: Stack) -> str:
    url = stack.nats_url(natsauth.ADMIN)
    nc = await nats.connect(url, inbox_prefix=natsauth.inbox_prefix_of(url))
    try:
        kv = await nc.jetstream().key_value(BUCKET)
        values = [await kv.get(k) for k in await kv.keys()]
        return "\n".join((v.value or b"").decode() for v in values)
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/v1",
        "http://10.0.0.7/v1",
        "http://127.0.0.2:9/v1",
        "http://[::1]/v1",
        "file:///etc/passwd",
    ],
)
def test_own_endpoints_on_private_addresses_are_refused(admin: httpx.Client, url: str) -> None:
    resp = admin.post("/upstreams", json={"model": "m", "base_url": url})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "base_url"


def test_own_endpoint_key_is_sealed_and_its_tokens_bill_zero(
    admin: httpx.Client, client: OpenAI, sim: httpx.Client, stack: Stack
) -> None:
    up = admin.post(
        "/upstreams",
        json={
            "model": "sim-model",
            "base_url": f"{stack.sim_url}/v1",
            "api_key": "sk-tenant-own-upstream-key",
        },
    )
    assert up.status_code == 201, up.text
    assert up.json()["has_api_key"] is True and "api_key" not in up.json()
    gw = admin.post("/gateways", json={"name": "byo", "upstream": up.json()["id"]}).json()
    eventually(lambda: _works(client, gw["id"]), 1.0, "own-endpoint gateway routable")
    reply = _chat(client, gw["id"], "own endpoint [sim tokens=3]")
    lines = reply.model_extra["generation_context"]["generated_usage"]  # type: ignore[index]
    assert {line["sku"] for line in lines} >= {skus.CHAT_IN, skus.CHAT_OUT}
    assert all(Decimal(repr(line["amount"])) == 0 for line in lines)
    assert sim.get("/sim/requests").json()[-1]["headers"]["authorization"].startswith("Bearer sk-ten")
    assert "sk-tenant-own-upstream-key" not in asyncio.run(_bucket_dump(stack))

    refused = admin.delete(f"/upstreams/{up.json()['id']}")
    assert refused.status_code == 409 and "byo" in refused.json()["error"]["message"]


def _cli(stack: Stack, *args: str) -> Any:
    assert stack.demo is not None
    env = {**os.environ, "AIGW_GATEWAY_URL": stack.base_url, "AIGW_API_KEY": stack.demo.key}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "aigw"), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    return json.loads(out.stdout)


def test_cli_manages_gateways_and_keys(stack: Stack) -> None:
    gw = _cli(
        stack,
        "gateway",
        "create",
        "--name",
        "from-cli",
        "--upstream",
        "@sim/sim-model",
        "--parameters",
        '{"temperature": 0.2}',
    )
    assert gw["parameters"] == {"temperature": 0.2}
    assert gw["id"] in {g["id"] for g in _cli(stack, "gateway", "list")["data"]}
    assert (
        _cli(stack, "gateway", "update", gw["slug"], "--description", "via cli")["description"] == "via cli"
    )
    tiers = {"classifier": "@sim/sim-model", "low": "@sim/sim-model", "medium": "@sim/sim-model"}
    routed = _cli(
        stack,
        "gateway",
        "update",
        gw["id"],
        "--fallbacks",
        '["@openai/gpt-5-nano"]',
        "--routing",
        json.dumps({**tiers, "high": "@openai/gpt-5"}),
    )
    assert routed["fallbacks"] == ["@openai/gpt-5-nano"] and routed["routing"]["high"] == "@openai/gpt-5"
    assert _cli(stack, "gateway", "update", gw["id"], "--routing", "null")["routing"] is None
    assert _cli(stack, "gateway", "show", gw["id"])["version"] == 4  # created, then updated 3 times
    assert _cli(stack, "gateway", "delete", gw["id"])["deleted"] is True
    key = _cli(stack, "key", "create", "--name", "cli")
    assert _cli(stack, "key", "revoke", key["id"])["revoked"] is True
    web = _cli(stack, "key", "create", "--kind", "public", "--rpm", "5")
    assert web["limits"] == {"requests_per_minute": 5, "requests_per_minute_per_ip": 60}
    web = _cli(stack, "key", "update", web["id"], "--rpm-per-ip", "0", "--name", "web")
    assert (
        web["limits"] == {"requests_per_minute": 5, "requests_per_minute_per_ip": None}
        and web["name"] == "web"
    )
    _cli(stack, "key", "delete", web["id"])
    table = subprocess.run(
        [str(Path(sys.executable).parent / "aigw"), "upstream", "list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "AIGW_GATEWAY_URL": stack.base_url, "AIGW_API_KEY": stack.demo.key},  # type: ignore[union-attr]
    ).stdout
    assert table.splitlines()[0].split()[:3] == ["id", "kind", "model"] and "@openai/gpt-5-mini" in table
