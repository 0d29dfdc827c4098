"""Auto routing through the real system: a classifier model picks the upstream by the request's complexity."""

from __future__ import annotations

from typing import Any

import httpx
import openai
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from tests.conftest import eventually


def _ask(client: OpenAI, model: str, text: str) -> Any:
    messages: Any = [{"role": "user", "content": text}]
    return client.chat.completions.with_raw_response.create(model=model, messages=messages)


def _routable(client: OpenAI, model: str) -> bool:
    try:
        _ask(client, model, "ping [sim reply=low]")
    except openai.NotFoundError:
        return False
    return True


def test_the_classifier_picks_the_upstream_and_its_call_is_billed_first(
    admin: httpx.Client, client: OpenAI, sim: httpx.Client, stack: Stack
) -> None:
    strong = admin.post(
        "/upstreams", json={"model": "strong-model", "base_url": f"{stack.sim_url}/v1"}
    ).json()
    tiers = {"classifier": "@sim/sim-model", "low": "@sim/sim-model", "medium": "@sim/sim-model"}
    bad = admin.post(
        "/gateways",
        json={"name": "auto", "upstream": "@sim/sim-model", "routing": {**tiers, "high": "@nope/x"}},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "routing.high"
    gw = admin.post(
        "/gateways",
        json={"name": "auto", "upstream": "@sim/sim-model", "routing": {**tiers, "high": strong["id"]}},
    )
    assert gw.status_code == 201, gw.text
    eventually(lambda: _routable(client, gw.json()["id"]), 5.0, "gateway routable")

    # The simulator, as the classifier, answers what `reply` says (and so does the answering model).
    sim.delete("/sim/requests")
    raw = _ask(client, gw.json()["id"], "Prove the four colour theorem. [sim reply=high]")
    assert raw.headers["x-model-routed-complexity"] == "high"
    answer = raw.parse()
    assert answer.model == "strong-model"  # the upstream configured for "high" (an own endpoint's model name)
    classified, answered = sim.get("/sim/requests").json()
    assert "low, medium or high" in classified["body"]["messages"][0]["content"]
    assert classified["body"]["messages"][1]["content"].startswith("Prove the four colour theorem.")
    assert answered["body"]["messages"][-1]["content"].startswith("Prove")  # then the answer itself
    lines = answer.model_extra["generation_context"]["generated_usage"]
    assert [line["sku"] for line in lines][:2] == [skus.ROUTING_IN, skus.ROUTING_OUT]  # as in the seed
    assert lines[0]["description"] == "Inference for model routing" and lines[1]["quantity"] == 1
    assert {line["sku"] for line in lines[2:]} >= {skus.CHAT_IN, skus.CHAT_OUT}

    low = _ask(client, gw.json()["id"], "hi [sim reply=low]")
    assert low.headers["x-model-routed-complexity"] == "low" and low.parse().model == "@sim/sim-model"

    # a classifier answer naming no level: the gateway's own upstream answers, no header
    unsure = _ask(client, gw.json()["id"], "hmm [sim reply=unsure]")
    assert "x-model-routed-complexity" not in unsure.headers and unsure.parse().model == "@sim/sim-model"
    admin.delete(f"/gateways/{gw.json()['id']}")
    admin.delete(f"/upstreams/{strong['id']}")
