"""A gateway's fallback chain through the real system: an upstream that is down is not the client's problem."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import openai
from openai import OpenAI

from aigw_devstack.procs import free_port
from tests.conftest import eventually


def _ask(client: OpenAI, model: str) -> Any:
    messages: Any = [{"role": "user", "content": "still there? [sim tokens=3]"}]
    return client.chat.completions.with_raw_response.create(model=model, messages=messages)


def _routable(client: OpenAI, model: str) -> bool:
    try:
        _ask(client, model)
    except openai.NotFoundError:
        return False
    return True


def test_a_gateway_whose_upstream_is_down_answers_from_its_fallback(
    admin: httpx.Client, client: OpenAI
) -> None:
    down = admin.post("/upstreams", json={"model": "m", "base_url": f"http://127.0.0.1:{free_port()}/v1"})
    assert down.status_code == 201, down.text
    bad = admin.post(
        "/gateways", json={"name": "resilient", "upstream": down.json()["id"], "fallbacks": ["@nope/x"]}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "fallbacks[0]"
    gw = admin.post(
        "/gateways",
        json={"name": "resilient", "upstream": down.json()["id"], "fallbacks": ["@sim/sim-model"]},
    )
    assert gw.status_code == 201 and gw.json()["fallbacks"] == ["@sim/sim-model"], gw.text
    eventually(lambda: _routable(client, gw.json()["id"]), 5.0, "gateway routable")

    raw = _ask(client, gw.json()["id"])
    assert raw.headers["x-aigw-fallback"] == "@sim/sim-model"
    answer = raw.parse()
    assert answer.model == "@sim/sim-model" and answer.choices[0].message.content == "sim0 sim1 sim2"
    lines = answer.model_extra["generation_context"]["generated_usage"]
    assert all(line["description"].endswith("'@sim/sim-model'") for line in lines)
    assert (
        sum(Decimal(repr(line["amount"])) for line in lines) > 0
    )  # priced as the catalog model that answered

    # an upstream still named in a chain cannot be deleted; without the chain the failure shows
    busy = admin.delete(f"/upstreams/{down.json()['id']}")
    assert busy.status_code == 409 and "resilient" in busy.json()["error"]["message"]
    cleared = admin.patch(f"/gateways/{gw.json()['id']}", json={"fallbacks": None})
    assert cleared.status_code == 200 and cleared.json()["fallbacks"] == []
    eventually(lambda: _fails(client, gw.json()["id"]), 5.0, "the chain gone on the running router")
    admin.delete(f"/gateways/{gw.json()['id']}")
    assert admin.delete(f"/upstreams/{down.json()['id']}").status_code == 200


def _fails(client: OpenAI, model: str) -> bool:
    try:
        _ask(client, model)
    except openai.APIStatusError as err:
        return err.status_code == 502
    return False
