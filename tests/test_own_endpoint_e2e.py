"""A tenant's own endpoint through the real system: its answers name its model, not its upstream id."""

from __future__ import annotations

from typing import Any

import httpx
import openai
from openai import OpenAI

from aigw_contracts.ids import uuid7
from aigw_devstack.stack import Stack
from tests.conftest import eventually


def _ask(client: OpenAI, model: str, stream: bool = False) -> Any:
    messages: Any = [{"role": "user", "content": "who answers? [sim tokens=3]"}]
    if stream:
        return client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    return client.chat.completions.create(model=model, messages=messages)


def _routable(client: OpenAI, model: str) -> bool:
    try:
        _ask(client, model)
    except openai.NotFoundError:
        return False
    return True


def test_an_own_endpoints_answers_name_its_model_not_its_upstream_id(
    admin: httpx.Client, client: OpenAI, stack: Stack
) -> None:
    up = admin.post("/upstreams", json={"model": "tenant-llama-3", "base_url": f"{stack.sim_url}/v1"})
    assert up.status_code == 201, up.text
    upstream_id = up.json()["id"]
    gw = admin.post("/gateways", json={"name": f"own-{uuid7()[-6:]}", "upstream": upstream_id}).json()
    try:
        eventually(lambda: _routable(client, gw["id"]), 5.0, "own-endpoint gateway routable")
        reply = _ask(client, gw["id"])
        assert reply.model == "tenant-llama-3" and reply.choices[0].message.content == "sim0 sim1 sim2"
        chunks = list(_ask(client, gw["id"], stream=True))
        assert len(chunks) >= 3 and chunks[-1].usage is not None
        assert {chunk.model for chunk in chunks} == {"tenant-llama-3"}
        assert upstream_id not in {reply.model, *(chunk.model for chunk in chunks)}
        # a catalog model's answers keep its catalog tag
        assert _ask(client, "demo").model == "@sim/sim-model"
    finally:
        admin.delete(f"/gateways/{gw['id']}")
        admin.delete(f"/upstreams/{upstream_id}")
