"""Faults of our own infrastructure: the client gets a clear error, never a hang."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import nats
import openai
import pytest
from openai import OpenAI

from aigw_contracts import Gateway
from aigw_contracts.ids import uuid7
from aigw_devstack.stack import SIM_UPSTREAM
from aigw_runtime import natsauth
from aigw_runtime.configstore import ConfigWriter
from tests.conftest import TEST_ENV, eventually, start_stack


def test_worker_killed_mid_stream_ends_the_stream_with_an_error_not_a_hang(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    stack = start_stack(tmp_path_factory.mktemp("chaos"))
    try:
        assert stack.demo is not None
        client = OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=30)
        stream = client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "long [sim tokens=400 token_ms=20]"}],
            stream=True,
        )
        received = 0
        started = time.monotonic()
        with pytest.raises(openai.APIError) as err:
            for _chunk in stream:
                received += 1
                if received == 3:
                    stack.procs["worker-0"].signal(signal.SIGKILL)
        elapsed = time.monotonic() - started
        assert received >= 3
        assert err.value.code == "deadline_exceeded" and "idle" in err.value.message
        # The edge's stream idle timeout bounds how long the client waits for a dead worker.
        assert elapsed < float(TEST_ENV["AIGW_STREAM_IDLE_TIMEOUT"]) + 5

        stack.stop_service("worker-0")
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "anyone?"}])
        assert refused.value.status_code == 503  # no worker left: refused at once, not after a timeout
    finally:
        stack.stop()


def test_config_written_elsewhere_after_a_nats_restart_takes_effect_within_two_seconds(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """After nats-server restarts, every edge and router re-opens its config watch at once: a
    gateway created and a key revoked through another edge (straight into the store here) are in
    effect within 2 s, as between restarts (issue 9: 6–17 s before)."""
    stack = start_stack(tmp_path_factory.mktemp("nats-restart"))
    try:
        assert stack.demo is not None and stack.nats is not None
        with httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.demo.key}"}, timeout=10
        ) as admin:
            created = admin.post("/keys", json={"name": "to-revoke"}).json()
        victim = OpenAI(base_url=stack.base_url, api_key=created["secret"], max_retries=0, timeout=10)
        client = OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=10)
        eventually(lambda: _answers(victim, "demo") == "ok", 2.0, "the new key usable")

        stack.kill("nats-server")
        stack.restart("nats-server")
        eventually(
            lambda: httpx.get(f"{stack.base_url[:-3]}/readyz", timeout=1).status_code == 200,
            10.0,
            "the edge reconnected",
        )
        eventually(lambda: _answers(client, "demo") == "ok", 10.0, "the stack answers again")

        gateway = Gateway(id=uuid7(), name="after-restart", tenant="demo", upstream=SIM_UPSTREAM)
        written = asyncio.run(_write_elsewhere(stack.nats_url("admin"), gateway, created["id"]))
        eventually(lambda: _answers(client, "after-restart") == "ok", 2.0, "the new gateway routable")
        gateway_seen = time.monotonic() - written
        eventually(lambda: _answers(victim, "demo") == "401", 2.0, "the revoked key refused")
        key_seen = time.monotonic() - written
        assert gateway_seen < 2.0 and key_seen < 2.0, (gateway_seen, key_seen)
    finally:
        stack.stop()


def _answers(client: OpenAI, model: str) -> str:
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi [sim tokens=2]"}]
        )
    except openai.APIStatusError as err:
        return str(err.status_code)
    except openai.APIConnectionError:
        return "unreachable"
    return "ok"


async def _write_elsewhere(nats_url: str, gateway: Gateway, key_id: str) -> float:
    """Create `gateway` and revoke key `key_id` in the config store, as another edge would; returns
    when the writes were done (time.monotonic())."""
    nc = await nats.connect(nats_url, inbox_prefix=natsauth.inbox_prefix_of(nats_url))
    try:
        writer = await ConfigWriter.open(nc.jetstream())
        found = await writer.get("key", key_id)
        assert found is not None
        key, revision = found
        await writer.put("gateway", gateway)
        await writer.put("key", key.model_copy(update={"revoked": True}), expect_revision=revision)
        return time.monotonic()
    finally:
        await nc.close()
