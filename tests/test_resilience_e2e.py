"""Circuit breakers, deployments and the management of timeouts through the real system (aigw
issue 10): an upstream's deployments share its requests by weight; one that fails repeatedly is
taken out of rotation (its circuit shows open in `GET /v1/circuits` and `aigw circuits`) and
probed again after the cool-down; one whose rate limit is used up is skipped until its reset; a
gateway nothing can serve answers 503 at once; and a gateway whose upstream hangs answers from its
fallback well inside the deadline with no timeout configured.

Extra simulators play the broken deployments: one answering every request 500, one 429 with a
30 s Retry-After (and OpenAI's `x-ratelimit-*` headers)."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from aigw_cli.__main__ import main as cli
from aigw_contracts import ConfigSnapshot, Gateway
from aigw_contracts.ids import uuid7
from aigw_devstack.procs import Process, free_port
from aigw_devstack.stack import SIM_UPSTREAM, Stack
from tests.conftest import api_client, eventually, start_stack
from tests.test_observe_e2e import scrape, value

COOLDOWN = 1.5  # seconds an open circuit skips its deployment (AIGW_CIRCUIT_COOLDOWN)
HANGING = "@sim/hanging"  # the simulator as model "hanging", which `[sim fault_model=hanging …]` faults
PATIENT = Gateway(id=uuid7(), name="patient", tenant="demo", upstream=HANGING, fallbacks=[SIM_UPSTREAM])


def _config(stack: Stack) -> None:
    stack.add_to_config(ConfigSnapshot(upstreams=[stack.sim_upstream("hanging")], gateways=[PATIENT]))


@pytest.fixture(scope="module")
def resilient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("resilience"),
        env={"AIGW_CIRCUIT_FAILURES": "2", "AIGW_CIRCUIT_COOLDOWN": str(COOLDOWN)},
        start_hooks=[_config],
    )
    yield stack
    stack.stop()


class BrokenSim:
    """Another simulator process whose every answer is the fault it was started with."""

    def __init__(self, state: Path, *flags: str) -> None:
        self.port = free_port()
        argv = [
            str(Path(sys.executable).parent / "aigw-simulator"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *flags,
        ]
        self.proc = Process(f"sim-{self.port}", argv, state / f"sim-{self.port}.log").start()
        self.proc.wait_ready(lambda: httpx.get(f"{self.root}/healthz", timeout=1).status_code == 200)

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> int:
        return len(httpx.get(f"{self.root}/sim/requests", timeout=5).json())


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokenSim]:
    sim = BrokenSim(tmp_path_factory.mktemp("sim500"), "--fault", "500")
    yield sim
    sim.proc.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokenSim]:
    sim = BrokenSim(tmp_path_factory.mktemp("sim429"), "--fault", "429", "--retry-after", "30")
    yield sim
    sim.proc.stop()


def _admin(stack: Stack) -> httpx.Client:
    assert stack.demo is not None
    return api_client(stack, stack.demo.key)


def _upstream(http: httpx.Client, stack: Stack, deployments: list[dict[str, Any]], **extra: Any) -> str:
    body = {"model": "sim-model", "base_url": f"{stack.sim_url}/v1", "deployments": deployments, **extra}
    resp = http.post("/upstreams", json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _gateway(http: httpx.Client, upstream: str, **extra: Any) -> str:
    resp = http.post("/gateways", json={"name": f"g{uuid7()[-8:]}", "upstream": upstream, **extra})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["slug"])


def _client(stack: Stack) -> OpenAI:
    assert stack.demo is not None
    return OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=10)


def _keys_seen(stack: Stack, marker: str) -> Counter[str]:
    """How many upstream requests the stack's simulator got with each key, for one test's marker."""
    records = httpx.get(f"{stack.sim_url}/sim/requests", timeout=5).json()
    return Counter(
        dict(r["headers"]).get("authorization", "")
        for r in records
        if marker in json.dumps((r.get("body") or {}).get("messages"))
    )


def _circuits(http: httpx.Client, upstream: str) -> dict[str, dict[str, Any]]:
    resp = http.get("/circuits", params={"upstream": upstream})
    assert resp.status_code == 200, resp.text
    return {row["deployment"]: row for row in resp.json()["data"]}


def test_timeouts_retries_and_deployments_are_managed_through_the_api_and_the_cli(
    resilient: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert resilient.demo is not None
    with _admin(resilient) as http:
        upstream = _upstream(
            http,
            resilient,
            [{"name": "a", "api_key": "sk-aaaa-secret", "weight": 2}, {"name": "b"}],
            timeouts={"ttft": 4, "idle": 9},
            max_retries=2,
        )
        shown = http.get(f"/upstreams/{upstream}").json()
        assert shown["timeouts"] == {"connect": None, "ttft": 4.0, "idle": 9.0, "total": None}
        assert shown["max_retries"] == 2
        assert shown["deployments"] == [
            {"name": "a", "base_url": None, "has_api_key": True, "weight": 2},
            {"name": "b", "base_url": None, "has_api_key": False, "weight": 1},
        ]
        assert "sk-aaaa" not in json.dumps(shown)  # keys are sealed and never shown
        for bad, param in (
            ({"max_retries": 6}, "max_retries"),
            ({"timeouts": {"ttft": 0}}, "timeouts.ttft"),
            ({"timeouts": {"first_token": 3}}, "timeouts.first_token"),
            ({"deployments": [{"name": "x"}, {"name": "x"}]}, "deployments"),
            ({"deployments": [{"weight": 0}]}, "deployments[0].weight"),
        ):
            resp = http.patch(f"/upstreams/{upstream}", json=bad)
            assert resp.status_code == 400, (bad, resp.text)
            assert resp.json()["error"]["param"] == param, (bad, resp.json())
        slug = _gateway(http, upstream, timeouts={"ttft": 2.5})
        assert http.get(f"/gateways/{slug}").json()["timeouts"]["ttft"] == 2.5
        resp = http.patch(f"/gateways/{slug}", json={"timeouts": {"total": 0}})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "timeouts.total"

    def run(*argv: str) -> Any:
        assert resilient.demo is not None
        cli(["--gateway-url", resilient.base_url, "--key", resilient.demo.key, "--json", *argv])
        return json.loads(capsys.readouterr().out)

    changed = run(
        "upstream", "update", upstream, "--max-retries", "0", "--timeouts", '{"connect": 1}',
        "--deployments", '[{"name": "a", "weight": 5}]',
    )  # fmt: skip
    assert changed["max_retries"] == 0 and changed["timeouts"]["connect"] == 1
    # a deployment named again without its key keeps the key it had
    assert changed["deployments"] == [{"name": "a", "base_url": None, "has_api_key": True, "weight": 5}]
    assert run("gateway", "update", slug, "--timeouts", '{"idle": 7}')["timeouts"]["idle"] == 7
    assert run("gateway", "update", slug, "--timeouts", "null")["timeouts"] is None
    cli(["--gateway-url", resilient.base_url, "--key", resilient.demo.key, "upstream", "list"])
    assert "a×5" in capsys.readouterr().out


def test_requests_spread_over_deployments_by_weight(resilient: Stack) -> None:
    with _admin(resilient) as http:
        upstream = _upstream(
            http,
            resilient,
            [
                {"name": "heavy", "api_key": "heavy-key", "weight": 3},
                {"name": "light", "api_key": "light-key"},
            ],
        )
        slug = _gateway(http, upstream)
    marker = uuid7()
    client = _client(resilient)
    total = 80
    for _ in range(total):
        client.chat.completions.create(model=slug, messages=[{"role": "user", "content": f"{marker} hi"}])
    seen = _keys_seen(resilient, marker)
    assert sum(seen.values()) == total, seen
    # 3:1 by weight: 60 expected, sd ≈ 3.9; [45, 73] fails a correct spread about once in 10^4 runs
    assert 45 <= seen["Bearer heavy-…"] <= 73, seen


def test_a_failing_deployment_is_skipped_once_its_circuit_opens_and_probed_after_the_cooldown(
    resilient: Stack, failing: BrokenSim, capsys: pytest.CaptureFixture[str]
) -> None:
    with _admin(resilient) as http:
        upstream = _upstream(
            http,
            resilient,
            [{"name": "broken", "base_url": f"{failing.root}/v1"}, {"name": "sound"}],
            max_retries=1,
        )
        slug = _gateway(http, upstream)
        client = _client(resilient)
        before = failing.count()
        # every request is answered: a 500 of `broken` is retried at once on `sound`
        for _ in range(30):
            answer = client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
            if failing.count() - before >= 2:
                break
        assert failing.count() - before == 2  # AIGW_CIRCUIT_FAILURES failures open it
        circuits = _circuits(http, upstream)
        assert circuits["broken"]["state"] == "open" and circuits["sound"]["state"] == "closed"
        # the worker's /metrics reads the same breakers at the scrape
        metrics = scrape(resilient.metrics_url("worker-0"))
        state = {
            d: value(metrics, "aigw_circuit_state", upstream=upstream, deployment=d)
            for d in ("broken", "sound")
        }
        assert state == {"broken": 2.0, "sound": 0.0}, state
        assert ("aigw_circuit_state", frozenset({("upstream", upstream), ("deployment", "sound")})) in metrics
        opened = failing.count()
        for _ in range(10):
            client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
        assert failing.count() == opened  # skipped while open
        assert resilient.demo is not None
        cli(["--gateway-url", resilient.base_url, "--key", resilient.demo.key, "circuits"])
        shown = capsys.readouterr().out
        assert upstream in shown and "broken" in shown and "open" in shown
        # operators see every tenant's circuits; another tenant's admin does not see this one
        with api_client(resilient, resilient.demo.operator_key) as operator:
            listed = operator.get("/circuits").json()["data"]
            assert any(r["upstream"] == upstream and r["state"] != "closed" for r in listed)
            tenant = f"other{uuid7()[-6:]}"
            assert operator.post("/tenants", json={"id": tenant}).status_code == 201
            other_key = operator.post("/keys", json={"tenant": tenant, "admin": True}).json()["secret"]
        with api_client(resilient, other_key) as other:
            assert all(r["upstream"] != upstream for r in other.get("/circuits").json()["data"])
            assert other.get("/circuits", params={"upstream": upstream}).status_code == 404
        # after the cool-down one request probes it (fails: open again), the others are not sent there
        eventually(
            lambda: _circuits(http, upstream)["broken"]["state"] == "half_open", COOLDOWN + 2, "half-open"
        )
        metrics = scrape(resilient.metrics_url("worker-0"))
        assert value(metrics, "aigw_circuit_state", upstream=upstream, deployment="broken") == 1.0
        for _ in range(30):
            client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
            if failing.count() > opened:
                break
        assert failing.count() == opened + 1
        eventually(lambda: _circuits(http, upstream)["broken"]["state"] == "open", 2.0, "open again")
        for _ in range(5):
            client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
        assert failing.count() == opened + 1  # the probe failed: skipped again


def test_a_deployment_whose_rate_limit_is_used_up_is_skipped_until_its_reset(
    resilient: Stack, limited: BrokenSim
) -> None:
    with _admin(resilient) as http:
        upstream = _upstream(
            http,
            resilient,
            [{"name": "limited", "base_url": f"{limited.root}/v1", "weight": 50}, {"name": "free"}],
        )
        slug = _gateway(http, upstream)
        client = _client(resilient)
        before = limited.count()
        started = time.monotonic()
        for _ in range(10):
            answer = client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
            assert answer.choices[0].message.content
        # the first request met the 429 (Retry-After 30 s) and went on to `free` at once; no other
        # request went to `limited`, although it weighs 50 times more
        assert limited.count() - before == 1
        assert time.monotonic() - started < 5
        assert _circuits(http, upstream)["limited"]["state"] == "closed"  # a rate limit is no failure


def test_a_gateway_nothing_can_serve_answers_503_at_once(resilient: Stack, failing: BrokenSim) -> None:
    with _admin(resilient) as http:
        upstream = _upstream(http, resilient, [{"base_url": f"{failing.root}/v1"}], max_retries=0)
        slug = _gateway(http, upstream)
    client = _client(resilient)
    for _ in range(2):  # AIGW_CIRCUIT_FAILURES upstream failures
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
        assert failed.value.status_code == 502
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as refused:
        client.chat.completions.create(model=slug, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 503
    assert time.monotonic() - started < 1.0
    assert float(refused.value.response.headers["retry-after"]) >= 1
    assert refused.value.response.json()["error"]["code"] == "service_unavailable"


@pytest.mark.parametrize("stream", [False, True])
def test_a_hanging_upstream_with_a_fallback_answers_well_inside_the_deadline_by_default(
    resilient: Stack, stream: bool
) -> None:
    """No timeouts configured anywhere: an attempt with a fallback behind it gets at most its share
    of the deadline (here 4 s / 2) before its first token, a whole answer included."""
    client = _client(resilient)
    messages: Any = [{"role": "user", "content": f"{uuid7()} [sim fault=hang fault_model=hanging tokens=3]"}]
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="patient", messages=messages, stream=stream)
    if stream:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)  # type: ignore[union-attr]
    else:
        text = raw.parse().choices[0].message.content or ""  # type: ignore[union-attr]
    elapsed = time.monotonic() - started
    assert text == "sim0 sim1 sim2"
    assert raw.headers["x-aigw-fallback"] == SIM_UPSTREAM
    assert 1.9 <= elapsed < 3.0, elapsed  # the 4 s deadline's half, not the deadline
