"""`idempotency_key` through the whole system, with the official openai SDK: a repeated call gets the
same answer (ids and content), the upstream is called once and ClickHouse bills one request; another
body with the key is refused; streams replay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts.ids import uuid7
from aigw_devstack.stack import Stack
from tests.conftest import eventually, start_stack


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("idempotent"), with_metering=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def clients(metered: Stack) -> Iterator[tuple[OpenAI, httpx.Client, httpx.Client]]:
    assert metered.demo is not None
    headers = {"Authorization": f"Bearer {metered.demo.key}"}
    with (
        httpx.Client(base_url=metered.base_url, headers=headers, timeout=20) as http,
        httpx.Client(base_url=metered.sim_url, timeout=5) as sim,
    ):
        yield (
            OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0, timeout=20),
            http,
            sim,
        )


def _gateway(client: OpenAI, http: httpx.Client, name: str) -> str:
    gid: str = http.post("/gateways", json={"name": name, "upstream": "@sim/sim-model"}).json()["id"]
    eventually(lambda: gid in {m.id for m in client.models.list()}, 2.0, "gateway visible")
    return gid


def _billed_requests(http: httpx.Client, gateway: str) -> list[dict[str, Any]]:
    resp = http.get("/usage", params={"gateway": gateway, "group_by": "request,sku"})
    return list(resp.json()["rows"]) if resp.status_code == 200 else []


def _rid(completion_id: str) -> str:
    return completion_id.removeprefix("chatcmpl-")  # usage rows name the request itself


def _upstream_calls(sim: httpx.Client, marker: str) -> int:
    return sum(marker in str(r["body"]) for r in sim.get("/sim/requests").json())


def test_a_repeated_call_is_answered_and_billed_once(
    clients: tuple[OpenAI, httpx.Client, httpx.Client],
) -> None:
    client, http, sim = clients
    gateway = _gateway(client, http, "idem-json")
    key, marker = uuid7(), uuid7()
    messages: Any = [{"role": "user", "content": f"once {marker} [sim tokens=5]"}]
    first = client.chat.completions.with_raw_response.create(
        model=gateway, messages=messages, extra_body={"idempotency_key": key}
    )
    again = client.chat.completions.with_raw_response.create(
        model=gateway, messages=messages, extra_body={"idempotency_key": key}
    )
    one, two = first.parse(), again.parse()
    assert two.id == one.id and two.created == one.created
    assert two.choices[0].message.content == one.choices[0].message.content
    assert again.http_response.content == first.http_response.content
    assert (
        again.headers["x-aigw-idempotent-replay"] == "true"
        and "x-aigw-idempotent-replay" not in first.headers
    )
    assert _upstream_calls(sim, marker) == 1

    # A later request of the same gateway, without a key: once it is in ClickHouse, a second billing
    # of the keyed call (published before it) would be there too.
    later = client.chat.completions.create(model=gateway, messages=[{"role": "user", "content": "later"}])
    both = {_rid(one.id), _rid(later.id)}
    eventually(lambda: {r["request"] for r in _billed_requests(http, gateway)} >= both, 20.0, "usage stored")
    rows = _billed_requests(http, gateway)
    assert {r["request"] for r in rows} == both
    out = [r for r in rows if r["request"] == _rid(one.id) and r["sku"].endswith(".out")]
    assert [(r["requests"], r["quantity"]) for r in out] == [(1, 5)]  # billed once, not twice


def test_the_same_key_with_another_request_is_refused(
    clients: tuple[OpenAI, httpx.Client, httpx.Client],
) -> None:
    client, _, sim = clients
    key, marker = uuid7(), uuid7()
    client.chat.completions.create(
        model="demo",
        messages=[{"role": "user", "content": f"first {marker}"}],
        extra_body={"idempotency_key": key},
    )
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": f"other {marker}"}],
            extra_body={"idempotency_key": key},
        )
    assert err.value.code == "idempotency_key_reused" and err.value.param == "idempotency_key"
    assert _upstream_calls(sim, marker) == 1


def test_a_repeated_stream_is_replayed_as_the_same_stream(
    clients: tuple[OpenAI, httpx.Client, httpx.Client],
) -> None:
    client, http, sim = clients
    key, marker = uuid7(), uuid7()
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": f"stream once {marker} [sim tokens=6]"}],
        "stream": True,
        "idempotency_key": key,
    }
    first = http.post("/chat/completions", json=body)
    second = http.post("/chat/completions", json=body)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content and second.headers["x-aigw-idempotent-replay"] == "true"
    chunks = list(
        client.chat.completions.create(
            model="demo", messages=body["messages"], stream=True, extra_body={"idempotency_key": key}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).split() == [
        f"sim{i}" for i in range(6)
    ]
    assert chunks[-1].usage is not None and _upstream_calls(sim, marker) == 1
