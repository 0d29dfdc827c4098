"""The override policy on every inference parameter, through the openai SDK and the real services."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aigw_contracts.api import INFERENCE_PARAMETERS
from tests.conftest import eventually

TOOL_A = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object", "properties": {}}}}]
TOOL_B = [{"type": "function", "function": {"name": "b", "parameters": {"type": "object", "properties": {}}}}]
# parameter: (the gateway's value, the request's value)
VALUES: dict[str, tuple[Any, Any]] = {
    "temperature": (0.3, 1.1),
    "top_p": (0.5, 0.9),
    "max_tokens": (20, 30),
    "max_completion_tokens": (21, 31),
    "stop": (["x"], ["y"]),
    "presence_penalty": (0.1, 0.2),
    "frequency_penalty": (0.1, 0.3),
    "seed": (1, 2),
    "reasoning_effort": ("low", "high"),
    "response_format": ({"type": "text"}, {"type": "json_object"}),
    "tools": (TOOL_A, TOOL_B),
    "tool_choice": ("none", "auto"),
    "parallel_tool_calls": (False, True),
    "logit_bias": ({"1": 1.0}, {"2": 2.0}),
    "logprobs": (True, True),  # `top_logprobs` needs it true on both sides
    "top_logprobs": (1, 2),
    "verbosity": ("low", "high"),
    "n": (1, 2),
}


def test_every_parameter_is_covered() -> None:
    assert set(VALUES) == set(INFERENCE_PARAMETERS)


def _gateway(admin: httpx.Client, client: OpenAI, name: str, mode: str) -> str:
    body = {
        "name": name,
        "upstream": "@sim/sim-model",
        "parameters": {k: v[0] for k, v in VALUES.items()},
        "policy": {k: {"mode": mode} for k in VALUES},
    }
    created = admin.post("/gateways", json=body)
    assert created.status_code == 201, created.text
    gid: str = created.json()["id"]
    eventually(lambda: gid in {m.id for m in client.models.list()}, 1.0, "gateway visible")
    return gid


def _sent_upstream(client: OpenAI, sim: httpx.Client, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "params [sim tokens=2]"}],
        extra_body={k: v[1] for k, v in VALUES.items()},
    )
    return json.loads(raw.headers["x-aigw-params"]), sim.get("/sim/requests").json()[-1]["body"]


@pytest.mark.parametrize(("mode", "side"), [("locked", 0), ("default", 1)])
def test_locked_keeps_the_gateways_value_and_default_takes_the_requests(
    admin: httpx.Client, client: OpenAI, sim: httpx.Client, mode: str, side: int
) -> None:
    gid = _gateway(admin, client, f"all-{mode}", mode)
    header, upstream = _sent_upstream(client, sim, gid)
    expected = {k: v[side] for k, v in VALUES.items()}
    assert {k: upstream.get(k) for k in VALUES} == expected
    assert header == expected


def test_clamped_numbers_are_held_in_range(admin: httpx.Client, client: OpenAI, sim: httpx.Client) -> None:
    numeric = {"temperature": (0.2, 0.4), "top_p": (0.1, 0.3), "max_tokens": (5, 8), "seed": (0, 1)}
    created = admin.post(
        "/gateways",
        json={
            "name": "clamps",
            "upstream": "@sim/sim-model",
            "policy": {k: {"mode": "clamped", "min": lo, "max": hi} for k, (lo, hi) in numeric.items()},
        },
    ).json()
    eventually(lambda: created["id"] in {m.id for m in client.models.list()}, 1.0, "gateway visible")
    client.chat.completions.create(
        model=created["id"],
        messages=[{"role": "user", "content": "clamp me [sim tokens=2]"}],
        temperature=1.5,
        top_p=0.05,
        max_tokens=100,
        seed=9,
    )
    upstream = sim.get("/sim/requests").json()[-1]["body"]
    assert {k: upstream[k] for k in numeric} == {"temperature": 0.4, "top_p": 0.1, "max_tokens": 8, "seed": 1}
