"""Fixtures for cross-service tests: the real system as processes, driven by the official openai SDK."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aigw_contracts import ConfigSnapshot, Gateway, ParameterRule
from aigw_contracts.ids import uuid7
from aigw_devstack.stack import SIM_UPSTREAM, Stack

# Gateways the tests use beside `demo` (all on the simulator).
PREFILLED = Gateway(
    id=uuid7(),
    name="prefilled",
    tenant="demo",
    upstream=SIM_UPSTREAM,
    instructions="GATEWAY INSTRUCTIONS",
    prefill="PREFILL:",
)
POLICY = Gateway(
    id=uuid7(),
    name="policy",
    tenant="demo",
    upstream=SIM_UPSTREAM,
    parameters={"temperature": 0.3, "top_p": 0.5, "presence_penalty": 0.25, "seed": 7},
    policy={
        "temperature": ParameterRule(mode="locked"),
        "top_p": ParameterRule(mode="clamped", min=0.2, max=0.6),
        "seed": ParameterRule(mode="default"),
    },
)

# Short deadlines so fault tests finish quickly; still far above the simulator's answer time.
TEST_ENV = {
    "AIGW_REQUEST_TIMEOUT": "4",
    "AIGW_STREAM_IDLE_TIMEOUT": "3",
    "AIGW_UPSTREAM_IDLE_TIMEOUT": "2.5",
    # The simulator listens on loopback: allow-listed explicitly, so own-endpoint tests can use it.
    "AIGW_UPSTREAM_ALLOWLIST": '["127.0.0.1/32"]',
    # Tests fault the shared simulator upstream on purpose, request by request: a circuit breaker
    # would soon take it out of rotation for every later test. The breaker's own tests set theirs.
    "AIGW_CIRCUIT_FAILURES": "1000",
}


# Stacks started by `start_stack`: after every test, none may have had a bus refusal (below).
_STACKS: list[Stack] = []


def start_stack(
    state: Path, with_metering: bool = False, env: dict[str, str] | None = None, **kw: object
) -> Stack:
    """The system as processes with the test settings (`TEST_ENV`, then `env`)."""
    stack = Stack(state_dir=state, with_metering=with_metering, env={**TEST_ENV, **(env or {})}, **kw)  # type: ignore[arg-type]
    state.mkdir(parents=True, exist_ok=True)
    stack.sim_port = 0
    # The config file must hold the test gateways before the router starts.
    stack.start_hooks.append(lambda s: s.add_to_config(ConfigSnapshot(gateways=[PREFILLED, POLICY])))
    stack.start()
    _STACKS.append(stack)
    return stack


@pytest.fixture(autouse=True)
def _services_stay_within_their_bus_permissions() -> Iterator[None]:
    """Every service runs as its own NATS user (`aigw_runtime.natsauth`): a test that makes one do
    something its user may not (a subject missing from the permission table) fails here, naming
    what nats-server refused, instead of surfacing later as a timeout."""
    before = {id(s): len(s.bus_violations()) for s in _STACKS}
    yield
    for s in _STACKS:
        new = s.bus_violations()[before.get(id(s), 0) :]
        assert not new, "nats-server refused a service:\n" + "\n".join(new)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()


@pytest.fixture
def client(stack: Stack) -> OpenAI:
    assert stack.demo is not None
    return OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=20)


@pytest.fixture
def sim(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.sim_url, timeout=5) as c:
        c.delete("/sim/requests")
        yield c


def api_client(stack: Stack, key: str) -> httpx.Client:
    return httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=20)


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    """The HTTP API as the demo key, which `make run` makes an admin of the demo tenant."""
    assert stack.demo is not None
    with api_client(stack, stack.demo.key) as c:
        yield c


admin = http  # the management API as the demo tenant's admin


@pytest.fixture
def operator(stack: Stack) -> Iterator[httpx.Client]:
    assert stack.demo is not None
    with api_client(stack, stack.demo.operator_key) as c:
        yield c


def eventually(probe: Callable[[], bool], within: float = 1.0, what: str = "condition") -> float:
    """Poll until `probe()` holds; return how long it took (tests never sleep a fixed time)."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > within:
            raise AssertionError(f"{what} not reached within {within}s")
        time.sleep(0.01)
    return time.monotonic() - started


def billed_lines(lines: list[dict[str, Any]]) -> dict[str, tuple[int, Decimal]]:
    """An answer's `generated_usage` as SKU -> (quantity, amount), amounts read back from JSON as
    exact decimals: what the client was told it is billed."""
    return {
        line["sku"]: (
            line["quantity"],
            Decimal(repr(line["amount"])) if isinstance(line["amount"], float) else Decimal(line["amount"]),
        )
        for line in lines
    }


def stored_lines(http: httpx.Client, request_id: str) -> dict[str, tuple[int, Decimal]]:
    """A request's usage lines in ClickHouse (through `GET /v1/usage`), as `billed_lines` reads an
    answer's; empty while metering has not stored them (or cannot answer yet)."""
    resp = http.get("/usage", params={"request": request_id, "group_by": "sku"})
    if resp.status_code != 200:  # e.g. 503 while metering opens its store: not there yet
        return {}
    return {r["sku"]: (r["quantity"], Decimal(str(r["amount"]))) for r in resp.json()["rows"]}
