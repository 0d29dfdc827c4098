"""Cancellation, model-call bounds and backpressure through the real system (processes, the openai SDK).

* a client that goes away while the router classifies its request (or retrieval grounds it) stops
  everything downstream within a second: the model call in flight is closed at the simulator, the
  answering upstream is never called, nothing is billed;
* a hanging classifier or resolver costs a request `AIGW_CLASSIFIER_TIMEOUT` / `AIGW_RESOLVER_TIMEOUT`
  (1 s here), not its deadline: the gateway's own upstream answers, the plain query is searched;
* a burst beyond the edge's `AIGW_MAX_INFLIGHT_REQUESTS` (2 here) is refused at once with a 503
  `overloaded` and `Retry-After: 1`;
* a request nobody can serve (no worker) is a 503 at once on the classifier and resolver paths too.

The slow model is a second simulator answering every request after 5 s (`--latency-ms 5000`), used
as an own endpoint: the classifier or resolver, while the answering model stays the fast one.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_contracts import skus
from aigw_devstack.procs import Process, free_port
from aigw_devstack.stack import HOST, Stack
from tests.conftest import billed_lines, eventually, start_stack, stored_lines

HANDBOOK = """# Acme handbook

## Refunds

Refunds are paid back to the original card within five business days.

## Passwords

To reset your password, open Settings, choose Security and click Reset password.
"""
LIMIT = 2  # AIGW_MAX_INFLIGHT_REQUESTS of this stack
BOUND = 1.0  # AIGW_CLASSIFIER_TIMEOUT and AIGW_RESOLVER_TIMEOUT of this stack
ROUTING_SKUS = {skus.ROUTING_IN, skus.ROUTING_OUT}
RESOLVER_SKUS = {skus.REWRITE_IN, skus.REWRITE_OUT, skus.RERANK_IN, skus.RERANK_OUT}


class World:
    """The stack, the slow simulator and the gateways the tests share."""

    def __init__(self, stack: Stack, slow: Process, slow_url: str) -> None:
        self.stack = stack
        self.slow = slow
        self.slow_url = slow_url
        assert stack.demo is not None
        self.key = stack.demo.key
        self.http = httpx.Client(
            base_url=stack.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=20
        )
        self.sim = httpx.Client(base_url=stack.sim_url, timeout=5)
        self.slow_sim = httpx.Client(base_url=slow_url, timeout=5)
        self.gateways: dict[str, str] = {}

    def client(self, timeout: float = 20) -> OpenAI:
        return OpenAI(base_url=self.stack.base_url, api_key=self.key, max_retries=0, timeout=timeout)

    def clear(self) -> None:
        self.sim.delete("/sim/requests")
        self.slow_sim.delete("/sim/requests")

    def requests(self, slow: bool = False) -> list[dict[str, Any]]:
        return list((self.slow_sim if slow else self.sim).get("/sim/requests").json())

    def billed(self, request_id: str) -> list[dict[str, Any]]:
        resp = self.http.get("/usage", params={"request": request_id, "group_by": "sku"})
        assert resp.status_code == 200, resp.text
        return list(resp.json()["rows"])

    def left_requests(self, gateway: str) -> list[str]:
        """Ids of this gateway's requests whose client left (499), from the edge's access log."""
        ids = []
        for line in self.stack.procs["edge"].output().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("model") == gateway and entry.get("status") == 499:
                ids.append(entry["request_id"])
        return ids


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state = tmp_path_factory.mktemp("cancel")
    env = {
        "AIGW_CLASSIFIER_TIMEOUT": str(BOUND),
        "AIGW_RESOLVER_TIMEOUT": str(BOUND),
        "AIGW_MAX_INFLIGHT_REQUESTS": str(LIMIT),
    }
    stack = start_stack(state, with_metering=True, env=env)
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "aigw_simulator",
        "--host",
        HOST,
        "--port",
        str(port),
        "--latency-ms",
        "5000",
    ]
    slow = Process("slow-simulator", argv, state / "logs" / "slow-simulator.log").start()
    slow_url = f"http://{HOST}:{port}"
    try:
        slow.wait_ready(lambda: httpx.get(f"{slow_url}/healthz", timeout=1).status_code == 200)
        w = World(stack, slow, slow_url)
        _make_gateways(w)
        yield w
    finally:
        slow.stop()
        stack.stop()


def _works(w: World, model: str) -> bool:
    try:
        w.client().chat.completions.create(
            model=model, messages=[{"role": "user", "content": "ping [sim reply=low]"}]
        )
    except openai.NotFoundError:
        return False
    return True


def _make_gateways(w: World) -> None:
    slow = w.http.post("/upstreams", json={"model": "slow-model", "base_url": f"{w.slow_url}/v1"})
    assert slow.status_code == 201, slow.text
    slow_id = slow.json()["id"]
    kb = w.http.post("/collections", json={"name": "handbook"})
    assert kb.status_code == 201, kb.text
    added = w.http.post(
        f"/collections/{kb.json()['id']}/documents",
        json={"docid": "handbook", "text": HANDBOOK, "content_type": "text/markdown"},
    )
    assert added.status_code == 200, added.text
    fast = "@sim/sim-model"
    tiers = {"low": fast, "medium": fast, "high": fast}
    specs: dict[str, dict[str, Any]] = {
        # a classifier that always hangs
        "auto-slow": {"upstream": fast, "routing": {"classifier": slow_id, **tiers}},
        "rewrite-slow": {
            "upstream": fast,
            "knowledge": {"collection": "handbook", "strategy": "UserRewrite", "resolver": slow_id},
        },
        "rerank-slow": {
            "upstream": fast,
            "knowledge": {
                "collection": "handbook",
                "reranker": "model",
                "resolver": slow_id,
                "top": 1,
                "minScore": 0,
            },
        },
        # the fast simulator classifies (a directive in the message makes it slow); created last:
        # config changes arrive in order, so once it is routable, every gateway is
        "auto": {"upstream": fast, "routing": {"classifier": fast, **tiers}},
    }
    for name, spec in specs.items():
        gw = w.http.post("/gateways", json={"name": name, **spec})
        assert gw.status_code == 201, gw.text
        w.gateways[name] = gw.json()["id"]
    eventually(lambda: _works(w, w.gateways["auto"]), 15.0, "the gateways routable")


def _leave_after(w: World, model: str, text: str, seconds: float, stream: bool = False) -> float:
    """Send a request and go away after `seconds` (the SDK's timeout closes the connection); when.
    The SDK's read timeout is kept from the gateway (`x-stainless-read-timeout` omitted), else it
    would answer 504 just before the client left (`aigw_edge.deadline`): this client just goes."""
    with pytest.raises(openai.APITimeoutError):
        w.client(timeout=seconds).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            stream=stream,
            extra_headers={"x-stainless-read-timeout": openai.Omit()},
        )
    return time.monotonic()


def _closed_at_the_simulator(w: World, slow: bool) -> bool:
    calls = w.requests(slow)
    return len(calls) == 1 and calls[0]["outcome"] == "client_disconnected"


def _nothing_billed(w: World, request_id: str) -> None:
    """No usage for `request_id`, proven once a later request's usage is listed (metering stores
    the usage stream in order)."""
    control = w.client().chat.completions.with_raw_response.create(
        model=w.gateways["auto"], messages=[{"role": "user", "content": "hi [sim reply=low]"}]
    )
    control_id = control.headers["x-request-id"]
    eventually(lambda: bool(w.billed(control_id)), 15.0, "the control request's usage listed")
    assert w.billed(request_id) == []


def _stopped_by(w: World, service: str, request_id: str) -> bool:
    """The service logged that it stopped its work for the request on the edge's cancel."""
    for line in w.stack.procs[service].output().splitlines():
        if request_id in line and "request cancelled: stopped its work here" in line:
            return True
    return False


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_leaving_during_classification_stops_everything_within_a_second(
    world: World, stream: bool
) -> None:
    w = world
    w.clear()
    gateway = w.gateways["auto"]
    before = len(w.left_requests(gateway))
    # The classifier call carries the user's message: the directive makes the simulator take 5 s.
    left = _leave_after(w, gateway, "Prove the four colour theorem. [sim latency_ms=5000]", 0.5, stream)
    # The classifier call in flight is closed at the upstream (the worker heard the same cancel).
    eventually(lambda: _closed_at_the_simulator(w, slow=False), 1.0, "the classifier call closed")
    assert time.monotonic() - left < 1.0
    eventually(lambda: len(w.left_requests(gateway)) == before + 1, 1.0, "the edge's 499 logged")
    (request_id,) = w.left_requests(gateway)[before:]
    eventually(lambda: _stopped_by(w, "router-0", request_id), 1.0, "the router stopped classifying")
    # Past the classifier's timeout and grace, when the router would otherwise have routed it on:
    time.sleep(BOUND + 1.0)  # proving that nothing more happens takes a wait
    assert len(w.requests()) == 1  # the answering upstream was never called
    _nothing_billed(w, request_id)


def test_a_client_leaving_during_grounding_stops_its_resolver_call_and_the_answer(world: World) -> None:
    w = world
    w.clear()
    gateway = w.gateways["rewrite-slow"]
    # The client leaves before the resolver's timeout: nothing may go on after it.
    left = _leave_after(w, gateway, "How do I reset my password?", 0.5)
    eventually(lambda: _closed_at_the_simulator(w, slow=True), 1.0, "the resolver call closed")
    assert time.monotonic() - left < 1.0
    eventually(lambda: len(w.left_requests(gateway)) == 1, 1.0, "the edge's 499 logged")
    (request_id,) = w.left_requests(gateway)
    eventually(lambda: _stopped_by(w, "retrieval", request_id), 1.0, "retrieval stopped grounding")
    time.sleep(BOUND + 1.0)  # proving that nothing more happens takes a wait
    assert w.requests() == []  # the answering model was never called
    _nothing_billed(w, request_id)  # not even the knowledge search


def test_a_hanging_classifier_costs_its_timeout_then_the_gateways_upstream_answers(world: World) -> None:
    w = world
    w.clear()
    started = time.monotonic()
    raw = w.client().chat.completions.with_raw_response.create(
        model=w.gateways["auto-slow"], messages=[{"role": "user", "content": "Prove it."}]
    )
    took = time.monotonic() - started
    assert BOUND <= took < BOUND + 1.5, took
    assert "x-model-routed-complexity" not in raw.headers
    answer = raw.parse()
    assert answer.model == "@sim/sim-model"
    lines = answer.model_extra["generation_context"]["generated_usage"]  # type: ignore[index]
    assert not ROUTING_SKUS & {line["sku"] for line in lines}  # the classifier never answered: unbilled
    # The worker closed the classifier call at the timeout, not 5 s later.
    eventually(lambda: _closed_at_the_simulator(w, slow=True), 1.0, "the classifier call closed")
    # ClickHouse holds what the client was told, the stopped classifier call not among it
    eventually(lambda: stored_lines(w.http, answer.id) == billed_lines(lines), 15.0, "the lines stored")


@pytest.mark.parametrize("gateway", ["rewrite-slow", "rerank-slow"])
def test_a_hanging_resolver_costs_its_timeout_and_the_search_goes_on_without_it(
    world: World, gateway: str
) -> None:
    w = world
    w.clear()
    started = time.monotonic()
    reply = w.client().chat.completions.create(
        model=w.gateways[gateway], messages=[{"role": "user", "content": "How do I reset my password?"}]
    )
    took = time.monotonic() - started
    assert BOUND <= took < BOUND + 1.5, took
    context = reply.model_extra["generation_context"]  # type: ignore[index]
    assert context["grounding"] and context["grounding"][0]["id"] == "handbook#1"
    billed = {line["sku"] for line in context["generated_usage"]}
    assert skus.KNOWLEDGE_SEARCH in billed and not billed & RESOLVER_SKUS
    eventually(lambda: _closed_at_the_simulator(w, slow=True), 1.0, "the resolver call closed")


def test_a_burst_beyond_the_edges_limit_is_refused_at_once_with_retry_after(world: World) -> None:
    w = world
    w.clear()
    answers: list[str] = []

    def slow_request() -> None:
        reply = w.client().chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "take your time [sim latency_ms=1500]"}]
        )
        answers.append(reply.choices[0].message.content or "")

    threads = [threading.Thread(target=slow_request) for _ in range(LIMIT)]
    for thread in threads:
        thread.start()
    eventually(lambda: len(w.requests()) == LIMIT, 5.0, "the limit's worth of requests in flight")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as refused:
        w.client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "one more"}])
    assert time.monotonic() - started < 0.5  # at once, not after the others
    assert refused.value.status_code == 503
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.code == "overloaded"
    assert len(w.requests()) == LIMIT  # the refused request went nowhere
    for thread in threads:
        thread.join(10)
    assert len(answers) == LIMIT  # the admitted ones were answered
    after = w.client().chat.completions.create(model="demo", messages=[{"role": "user", "content": "now?"}])
    assert after.choices[0].message.content  # places are given back


def test_without_workers_the_classifier_and_resolver_paths_fail_at_once_with_503(world: World) -> None:
    w = world
    w.stack.kill("worker-0")
    try:
        for name in ("auto", "rewrite-slow"):
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as err:
                w.client().chat.completions.create(
                    model=w.gateways[name], messages=[{"role": "user", "content": "anyone there?"}]
                )
            assert err.value.status_code == 503, (name, err.value)
            assert err.value.response.headers.get("retry-after") == "1", name
            assert time.monotonic() - started < 1.0, name
    finally:
        w.stack.restart("worker-0")
