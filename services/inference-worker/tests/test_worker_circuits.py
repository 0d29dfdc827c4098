"""The circuit breaker's states, the deployment pick and the rate-limit headers, rule by rule (a
clock the test moves; the behaviour through real processes is in tests/test_resilience_e2e.py)."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from aigw_contracts import Deployment, UpstreamTarget
from aigw_contracts.config import Prices
from aigw_contracts.errors import DeadlineExceeded, InvalidRequest, RateLimited, UpstreamError
from aigw_worker.balance import Pick, exhausted_for, pick, reopens_in
from aigw_worker.circuits import Circuits, State
from aigw_worker.fallback import record
from aigw_worker.timeouts import limits_for
from aigw_worker.upstream import UpstreamStatusError

from .conftest import make_envelope, worker_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _target(*deployments: Deployment) -> UpstreamTarget:
    return UpstreamTarget(
        id="@sim/x",
        kind="catalog",
        provider="sim",
        model="x",
        base_url="http://upstream/v1",
        prices=Prices(),
        deployments=list(deployments),
    )


def test_failures_in_a_row_open_a_circuit_a_probe_after_the_cooldown_closes_or_reopens_it() -> None:
    clock = Clock()
    changes: list[tuple[str, State]] = []
    circuits = Circuits(3, 10.0, clock, on_change=lambda c: changes.append((c.deployment, c.state)))
    c = circuits.get("@sim/x", "0")
    circuits.failed(c)
    circuits.failed(c)
    circuits.succeeded(c)  # a success in between: the count starts again
    circuits.failed(c)
    circuits.failed(c)
    assert c.state is State.CLOSED and circuits.admits(c, clock.now)
    circuits.failed(c)
    assert c.state is State.OPEN and not circuits.admits(c, clock.now)
    clock.now += 10
    assert circuits.state("@sim/x", "0") is State.HALF_OPEN  # what operators see
    assert circuits.admits(c, clock.now)
    circuits.begin(c)  # the probe
    assert c.state is State.HALF_OPEN and not circuits.admits(c, clock.now)  # one probe at a time
    circuits.failed(c)
    assert c.state is State.OPEN and c.open_until == clock.now + 10
    clock.now += 10
    circuits.begin(c)
    circuits.release(c)  # the probe was cancelled: another may probe
    assert circuits.admits(c, clock.now)
    circuits.begin(c)
    circuits.succeeded(c)
    assert c.state is State.CLOSED and c.failures == 0
    assert changes == [
        ("0", State.OPEN),
        ("0", State.HALF_OPEN),
        ("0", State.OPEN),
        ("0", State.HALF_OPEN),
        ("0", State.CLOSED),
    ]
    assert circuits.snapshot() == [
        {
            "upstream": "@sim/x",
            "deployment": "0",
            "state": "closed",
            "failures": 0,
            "open_until": None,
            "rate_limited_until": None,
        }
    ]


def test_a_probe_that_never_reports_back_lets_another_probe_after_a_cooldown() -> None:
    clock = Clock()
    circuits = Circuits(1, 5.0, clock)
    c = circuits.get("@sim/x", "0")
    circuits.failed(c)
    clock.now += 5
    circuits.begin(c)
    assert not circuits.admits(c, clock.now + 4.9)
    assert circuits.admits(c, clock.now + 5)


def test_deployments_are_picked_by_weight_skipping_open_circuits_and_used_up_rate_limits() -> None:
    clock = Clock()
    circuits = Circuits(1, 30.0, clock)
    target = _target(
        Deployment(name="a", weight=3), Deployment(name="b", base_url="http://b/v1", api_key="k")
    )
    points = [i / 400 for i in range(400)]  # an even spread of random numbers

    def names() -> Counter[str]:
        picks = [pick(target, circuits, rng=lambda x=x: x) for x in points]  # type: ignore[misc]
        return Counter(p.name if p else "none" for p in picks)

    assert names() == {"a": 300, "b": 100}
    chosen = pick(target, circuits, rng=lambda: 0.99)
    assert chosen == Pick("b", "http://b/v1", "k", circuits.get("@sim/x", "b"))
    assert pick(target, circuits, avoid={"a"}, rng=lambda: 0.0).name == "b"  # type: ignore[union-attr]
    circuits.failed(circuits.get("@sim/x", "a"))  # threshold 1: open
    assert names() == {"b": 400}
    circuits.pause(circuits.get("@sim/x", "b"), 7.0)
    assert pick(target, circuits) is None
    # the last upstream of a chain: a used-up rate limit is the upstream's to answer, an open circuit not
    assert pick(target, circuits, paused_too=True).name == "b"  # type: ignore[union-attr]
    circuits.release(circuits.get("@sim/x", "b"))
    assert reopens_in([target], circuits) == 7.0
    clock.now += 7
    assert pick(target, circuits).name == "b"  # type: ignore[union-attr]


def test_an_upstream_without_deployments_is_one_named_0_with_its_own_url_and_key() -> None:
    circuits = Circuits(1, 30.0, Clock())
    chosen = pick(_target(), circuits)
    assert chosen is not None and (chosen.name, chosen.base_url, chosen.api_key) == (
        "0",
        "http://upstream/v1",
        None,
    )


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s500ms"}, 1.5),
        ({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-remaining-requests": "0", "retry-after": "12"}, 12.0),
        ({"x-ratelimit-remaining-requests": "0"}, 1.0),
        ({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "6m0s"}, None),
        ({}, None),
    ],
)
def test_a_used_up_rate_limit_is_read_from_openais_headers(
    headers: dict[str, str], seconds: float | None
) -> None:
    found = exhausted_for(httpx.Headers(headers))
    if seconds is None:
        assert found is None
    else:
        assert found == pytest.approx(seconds)


def test_what_counts_as_a_failure_of_the_deployment() -> None:
    clock = Clock()
    circuits = Circuits(1, 30.0, clock)

    def after(err: Exception) -> State | str:
        circuit = circuits.get("@sim/x", str(len(circuits.snapshot())))  # a new one each time
        record(circuits, Pick("0", "u", None, circuit), err)  # type: ignore[arg-type]
        return "paused" if circuit.paused_until > clock.now else circuit.state

    assert after(UpstreamStatusError("500", 500)) is State.OPEN
    assert after(UpstreamError("Could not connect to the upstream model")) is State.OPEN
    assert after(DeadlineExceeded("no token")) is State.OPEN
    assert after(UpstreamStatusError("refused key", 401, code="upstream_auth_failed")) is State.OPEN
    assert after(RateLimited("slow down", retry_after=3)) == "paused"  # a rate limit is no failure
    assert after(UpstreamStatusError("not found", 404)) is State.CLOSED  # it answered
    assert after(InvalidRequest("bad")) is State.CLOSED
    assert after(UpstreamError("no key", code="upstream_not_configured")) is State.CLOSED


def test_an_unset_time_to_first_token_leaves_the_fallbacks_their_share_of_the_deadline() -> None:
    settings = worker_settings(upstream_idle_timeout=60, upstream_timeout=600, upstream_ttft_timeout=None)
    route = make_envelope("http://127.0.0.1:1/v1", "x").route
    assert route is not None
    assert limits_for(settings, route, False, 300).ttft == 300  # no fallback: the whole answer's total
    route.fallbacks = [route.upstream.model_copy(), route.upstream.model_copy()]
    assert limits_for(settings, route, False, 300).ttft == 60  # the idle gap
    assert limits_for(settings, route, False, 9).ttft == 3  # a third each
    assert limits_for(settings, route, True, 9).ttft == 3
    assert limits_for(worker_settings(upstream_ttft_timeout=8), route, False, 9).ttft == 8  # set: as set
