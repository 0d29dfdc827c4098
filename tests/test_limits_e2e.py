"""Per-key and per-IP request limits through the real edge, seen by the openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts.config import PUBLIC_KEY_DEFAULT_RPM_PER_IP
from aigw_devstack.stack import Stack
from tests.conftest import eventually


def _ask(client: OpenAI, model: str) -> None:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi [sim tokens=1]"}])


def _allowed(client: OpenAI, model: str) -> bool:
    try:
        _ask(client, model)
    except (openai.RateLimitError, openai.AuthenticationError):
        return False
    return True


def test_a_public_keys_per_ip_limit_is_a_429_with_retry_after(admin: httpx.Client, stack: Stack) -> None:
    gw = admin.post("/gateways", json={"name": "limited", "upstream": "@sim/sim-model"}).json()
    made = admin.post(
        "/keys", json={"kind": "public", "name": "web", "limits": {"requests_per_minute_per_ip": 2}}
    )
    assert made.status_code == 201, made.text
    assert made.json()["limits"] == {"requests_per_minute": None, "requests_per_minute_per_ip": 2}
    public = OpenAI(base_url=stack.base_url, api_key=made.json()["secret"], max_retries=0)
    eventually(lambda: _allowed(public, gw["id"]), 5.0, "the new key known to the edge")
    _ask(public, gw["id"])  # the second of two
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(public, gw["id"])
    response = refused.value.response
    assert refused.value.code == "rate_limit_exceeded" and "from your address" in refused.value.message
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert 0 < int(response.headers["retry-after-ms"]) <= 30_000

    # lifting the limit takes effect on the running edge
    patched = admin.patch(f"/keys/{made.json()['id']}", json={"limits": {"requests_per_minute_per_ip": None}})
    assert patched.status_code == 200 and patched.json()["limits"]["requests_per_minute_per_ip"] is None
    eventually(lambda: _allowed(public, gw["id"]), 5.0, "the lifted limit seen by the edge")
    admin.delete(f"/keys/{made.json()['id']}")
    admin.delete(f"/gateways/{gw['id']}")


def test_public_keys_get_a_default_per_ip_limit_and_private_keys_none(admin: httpx.Client) -> None:
    public = admin.post("/keys", json={"kind": "public", "limits": {"requests_per_minute": 1000}}).json()
    assert public["limits"] == {
        "requests_per_minute": 1000,
        "requests_per_minute_per_ip": PUBLIC_KEY_DEFAULT_RPM_PER_IP,
    }
    private = admin.post("/keys", json={"name": "backend"}).json()
    assert private["limits"] == {"requests_per_minute": None, "requests_per_minute_per_ip": None}
    bad = admin.post("/keys", json={"limits": {"requests_per_minute": 0}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limits.requests_per_minute"
    for key in (public, private):
        admin.delete(f"/keys/{key['id']}")


def test_a_keys_own_limit_covers_every_address(admin: httpx.Client, stack: Stack) -> None:
    made = admin.post("/keys", json={"name": "batch", "limits": {"requests_per_minute": 1}}).json()
    client = OpenAI(base_url=stack.base_url, api_key=made["secret"], max_retries=0)
    eventually(lambda: _allowed(client, "demo"), 5.0, "the new key known to the edge")
    with pytest.raises(openai.RateLimitError) as refused:
        _ask(client, "demo")
    assert "for this API key:" in refused.value.message
    admin.delete(f"/keys/{made['id']}")
