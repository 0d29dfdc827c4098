"""The bus of a whole stack (what `make run` starts) is authenticated, and each service's NATS user may
do only its own work: no anonymous client, no key rewritten into an operator key through the config
bucket, no usage billed that the worker or retrieval did not publish."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import nats
import nats.errors
import pytest
from openai import OpenAI

from aigw_contracts import subjects
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.usage import UsageEvent
from aigw_devstack.stack import Stack
from aigw_runtime import natsauth
from aigw_runtime.configstore import BUCKET, kv_key
from tests.conftest import TEST_ENV, api_client, eventually


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Not `start_stack`: these tests make nats-server refuse things on purpose.
    stack = Stack(state_dir=tmp_path_factory.mktemp("secured"), with_metering=True, env=dict(TEST_ENV))
    stack.start()
    yield stack
    stack.stop()


async def _connect(stack: Stack, user: str) -> tuple[nats.NATS, list[str]]:
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err).lower())

    url = stack.nats_url(user)
    nc = await nats.connect(url, inbox_prefix=natsauth.inbox_prefix_of(url), error_cb=on_error)
    return nc, errors


async def _refused(errors: list[str], subject: str) -> None:
    wanted = f'permissions violation for publish to "{subject}"'.lower()
    for _ in range(200):
        if any(wanted in e for e in errors):
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"no refusal for {subject}: {errors}")


def test_the_stack_serves_chat_with_each_service_on_its_own_bus_user(secured: Stack) -> None:
    assert secured.demo is not None and secured.nats is not None
    client = OpenAI(base_url=secured.base_url, api_key=secured.demo.key, max_retries=0, timeout=20)
    reply = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content
    users = {
        name: natsauth.user_of(proc.env["AIGW_NATS_URL"]) for name, proc in secured.procs.items() if proc.env
    }
    assert {k: v for k, v in users.items() if k != "simulator"} == {
        "router-0": "router",
        "worker-0": "worker",
        "metering": "metering",
        "retrieval": "retrieval",
        "edge": "edge",
    }
    assert secured.bus_violations() == []  # the whole request path stayed within its permissions
    for private in (secured.nats.config_path, secured.nats.passwords_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    logs = "".join(p.read_text(errors="replace") for p in (secured.state_dir / "logs").glob("*.log"))
    assert not any(password in logs for password in secured.nats.passwords.values())


def test_a_client_without_credentials_cannot_reach_the_stacks_bus(secured: Stack) -> None:
    assert secured.nats is not None

    async def anonymous() -> None:
        await nats.connect(
            secured.nats.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
        )

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(anonymous())


def test_no_service_but_the_edge_can_turn_a_key_into_an_operator_key(secured: Stack) -> None:
    """The attack of the issue: rewrite a tenant's private key into an operator key in the KV bucket."""
    assert secured.demo is not None
    subject = f"$KV.{BUCKET}.{kv_key('key', 'demo-key')}"

    async def attack() -> None:
        admin, _ = await _connect(secured, natsauth.ADMIN)
        try:
            entry = await (await admin.jetstream().key_value(BUCKET)).get(kv_key("key", "demo-key"))
            forged = json.loads(entry.value or b"{}") | {"operator": True}
        finally:
            await admin.close()
        for user in (natsauth.ROUTER, natsauth.WORKER, natsauth.RETRIEVAL, natsauth.METERING):
            nc, errors = await _connect(secured, user)
            try:
                await nc.publish(subject, json.dumps(forged).encode())
                await _refused(errors, subject)
            finally:
                await nc.close()

    asyncio.run(attack())
    with api_client(secured, secured.demo.key) as demo:
        # Still an admin of its own tenant only: creating a tenant is an operator's right.
        assert demo.post("/tenants", json={"id": f"t{uuid.uuid4().hex[:8]}", "name": "x"}).status_code == 403
        assert demo.get("/gateways").status_code == 200


def _usage(request_id: str) -> bytes:
    return (
        UsageEvent(
            request_id=request_id,
            source="inference",
            tenant="demo",
            key_id="demo-key",
            upstream="@sim/sim-model",
            model="sim-model",
            lines=[GeneratedUsage.priced("inference.chat_completions.in", Decimal("0.001"), 1000, "test")],
            started_at=datetime.now(UTC),
        )
        .model_dump_json()
        .encode()
    )


def _billed(http: httpx.Client, request_id: str) -> list[dict[str, object]]:
    resp = http.get("/usage", params={"group_by": "request", "request": request_id})
    return resp.json()["rows"] if resp.status_code == 200 else []


def test_metering_bills_only_usage_the_worker_or_retrieval_published(secured: Stack) -> None:
    assert secured.demo is not None
    forged, genuine = f"forged-{uuid.uuid4().hex}", f"genuine-{uuid.uuid4().hex}"
    subject = subjects.usage_subject("demo")

    async def publish() -> None:
        for user in (natsauth.EDGE, natsauth.ROUTER):
            nc, errors = await _connect(secured, user)
            try:
                await nc.publish(subject, _usage(f"{forged}-{user}"))
                await _refused(errors, subject)
            finally:
                await nc.close()
        worker, _ = await _connect(secured, natsauth.WORKER)
        try:
            await worker.jetstream().publish(subject, _usage(genuine))
        finally:
            await worker.close()

    asyncio.run(publish())
    with api_client(secured, secured.demo.key) as http:
        eventually(lambda: bool(_billed(http, genuine)), 20.0, "the worker's usage in ClickHouse")
        # Published before the genuine one, so metering would have stored them by now.
        assert _billed(http, f"{forged}-{natsauth.EDGE}") == []
        assert _billed(http, f"{forged}-{natsauth.ROUTER}") == []
