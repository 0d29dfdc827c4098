"""Timeouts and retries of upstream attempts, against the real simulator over HTTP and a real
nats-server: an attempt that fails before anything reached the client is retried or moves down the
gateway's chain, well inside the request's deadline; once a token is out, the error ends the
stream; and only the attempt that answered is billed."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from aigw_contracts import ChatEnvelope, Timeouts, UpstreamTarget, UsageEvent, headers
from aigw_contracts.errors import DeadlineExceeded, InvalidRequest, RateLimited, UpstreamError
from aigw_contracts.ids import uuid7
from aigw_worker.limits import response_too_large
from aigw_worker.retry import Verdict, backoff, verdict, wait_before_retry
from aigw_worker.timeouts import limits_for
from aigw_worker.upstream import UpstreamStatusError, transport_error

from .conftest import SIM_PRICES, Event, Harness, Sim, make_envelope, running, worker_settings

FLAKY = "flaky"  # the model name of the failing upstream: `[sim ... fault_model=flaky]` hits only it


def _target(sim: Sim, upstream_id: str, model: str = "sim-model", **kw: Any) -> UpstreamTarget:
    return UpstreamTarget(
        id=upstream_id, kind="catalog", provider="sim", model=model, base_url=sim.url, prices=SIM_PRICES, **kw
    )


def _envelope(
    sim: Sim,
    directive: str,
    *,
    stream: bool = False,
    fallback: bool = True,
    timeouts: Timeouts | None = None,
    max_retries: int | None = None,
    upstream_timeouts: Timeouts | None = None,
    deadline_in: float = 30.0,
) -> tuple[ChatEnvelope, str]:
    """A request whose upstream is the simulator as model `flaky` (the one `fault_model=flaky`
    faults), with the healthy `@sim/backup` as its fallback; the marker finds its records."""
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} {directive}", stream=stream, deadline_in=deadline_in)
    assert env.route is not None
    env.route.upstream = _target(
        sim, "@sim/flaky", FLAKY, max_retries=max_retries, timeouts=upstream_timeouts
    )
    env.route.timeouts = timeouts
    if fallback:
        env.route.fallbacks = [_target(sim, "@sim/backup")]
    return env, marker


def _models(sim: Sim, marker: str) -> list[str]:
    """The model of each request the simulator got for `marker`, in order."""
    return [r["body"]["model"] for r in sorted(sim.requests(marker), key=lambda r: r["received_at"])]


def _outcomes(sim: Sim, marker: str) -> list[str]:
    return [r["outcome"] for r in sorted(sim.requests(marker), key=lambda r: r["received_at"])]


def _answer_text(events: list[Event], stream: bool) -> str:
    if not stream:
        return str(json.loads(events[-1].body)["choices"][0]["message"]["content"])
    text = ""
    for event in events[:-1]:
        text += json.loads(event.body)["choices"][0]["delta"].get("content") or ""
    return text


async def _run(h: Harness, env: ChatEnvelope) -> list[Event]:
    """The request's events without the `alive` heartbeats the worker sends while it holds it."""
    return [e for e in await h.run(env) if e.kind != "alive"]


async def _billed(h: Harness, request_id: str) -> list[UsageEvent]:
    """The request's usage events, once the first arrived (a second would come with it)."""
    await h.usage_for(request_id)
    return [UsageEvent.model_validate_json(e.body) for e in h.usage if request_id.encode() in e.body]


@pytest.mark.chaos
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_that_hangs_before_answering_falls_back_within_its_ttft_timeout(
    sim: Sim, stream: bool
) -> None:
    env, marker = _envelope(
        sim, "[sim fault=hang fault_model=flaky tokens=3]", stream=stream, timeouts=Timeouts(ttft=1)
    )
    async with running(worker_settings()) as h:
        started = time.monotonic()
        events = await _run(h, env)
        elapsed = time.monotonic() - started
        assert events[-1].kind == "final", events[-1].body
        assert 1.0 <= elapsed < 3.0  # the TTFT timeout, not the 30 s deadline
        assert events[0].headers[headers.FALLBACK] == "@sim/backup"
        assert _answer_text(events, stream) == "sim0 sim1 sim2"
        # a hung upstream is not retried when another can answer; the worker left it
        assert _models(sim, marker) == [FLAKY, "sim-model"]
        await h.wait_for(
            lambda: _outcomes(sim, marker) == ["client_disconnected", "completed"],
            what="the hung call closed",
        )
        (billed,) = await _billed(h, env.request_id)
        assert billed.upstream == "@sim/backup" and billed.status == "completed"


@pytest.mark.chaos
async def test_a_whole_answer_whose_body_stalls_falls_back_after_the_total_timeout(sim: Sim) -> None:
    env, marker = _envelope(
        sim, "[sim fault=stall fault_model=flaky tokens=2]", upstream_timeouts=Timeouts(total=1)
    )
    async with running(worker_settings()) as h:
        started = time.monotonic()
        (event,) = await _run(h, env)
        assert event.kind == "final" and time.monotonic() - started < 3.0
        assert event.headers[headers.FALLBACK] == "@sim/backup"
        assert _models(sim, marker) == [FLAKY, "sim-model"]
        (billed,) = await _billed(h, env.request_id)
        assert billed.upstream == "@sim/backup"


@pytest.mark.chaos
async def test_a_stream_that_stalls_after_its_first_token_ends_with_an_error_event_not_a_fallback(
    sim: Sim,
) -> None:
    env, marker = _envelope(
        sim, "[sim fault=stall drop_after=2 tokens=9]", stream=True, timeouts=Timeouts(idle=0.5)
    )
    async with running(worker_settings()) as h:
        started = time.monotonic()
        events = await _run(h, env)
        assert time.monotonic() - started < 2.5  # the idle timeout, not the 30 s deadline
        assert events[0].kind == "delta" and events[-1].kind == "error"
        assert events[-1].headers[headers.STATUS] == "504"
        error = json.loads(events[-1].body)["error"]
        assert error["code"] == "deadline_exceeded" and "idle" in error["message"]
        assert _answer_text(events, True) == "sim0 sim1"
        assert _models(sim, marker) == [FLAKY]  # no retry, no fallback once tokens are out
        (billed,) = await _billed(h, env.request_id)  # what the upstream made, once
        assert billed.upstream == "@sim/flaky" and billed.status == "failed"


@pytest.mark.chaos
async def test_a_hang_with_no_fallback_is_retried_then_504_within_the_deadline(sim: Sim) -> None:
    async with running(worker_settings()) as h:
        env, marker = _envelope(
            sim, "[sim fault=hang]", stream=True, fallback=False, timeouts=Timeouts(ttft=0.5), deadline_in=1.6
        )
        started = time.monotonic()
        (event,) = await _run(h, env)
        assert event.kind == "error" and event.headers[headers.STATUS] == "504"
        assert time.monotonic() - started < 1.6 + 0.5
        assert "time to first token" in json.loads(event.body)["error"]["message"]
        assert _models(sim, marker) == [FLAKY, FLAKY]  # the one retry of a lone upstream
        assert not [e for e in h.usage if env.request_id.encode() in e.body]  # nothing answered


@pytest.mark.parametrize("stream", [False, True])
async def test_a_429_is_retried_after_its_retry_after_and_billed_once(sim: Sim, stream: bool) -> None:
    env, marker = _envelope(
        sim, "[sim fault=429 retry_after=1 fault_times=1 tokens=2]", stream=stream, fallback=False
    )
    async with running(worker_settings()) as h:
        started = time.monotonic()
        events = await _run(h, env)
        assert events[-1].kind == "final" and time.monotonic() - started >= 1.0  # Retry-After honoured
        assert _answer_text(events, stream) == "sim0 sim1"
        assert _outcomes(sim, marker) == ["429", "completed"]
        (billed,) = await _billed(h, env.request_id)
        assert billed.status == "completed"


async def test_a_retry_after_beyond_the_cap_moves_to_the_fallback_at_once(sim: Sim) -> None:
    env, marker = _envelope(sim, "[sim fault=429 retry_after=30 fault_model=flaky tokens=2]")
    async with running(worker_settings(upstream_retry_after_max=5)) as h:
        started = time.monotonic()
        (event,) = await _run(h, env)
        assert event.kind == "final" and time.monotonic() - started < 2.0
        assert _models(sim, marker) == [FLAKY, "sim-model"]


@pytest.mark.parametrize(
    ("directive", "stream"),
    [
        ("[sim fault=500 fault_times=1 tokens=2]", False),
        ("[sim fault=500 fault_times=1 tokens=2]", True),
        ("[sim fault=drop fault_times=1 tokens=2]", False),  # reset before any response
        ("[sim fault=malformed fault_times=1 tokens=2]", False),
        ("[sim fault=malformed fault_times=1 tokens=2]", True),
    ],
)
async def test_a_fault_before_the_first_token_is_retried_on_the_same_upstream(
    sim: Sim, directive: str, stream: bool
) -> None:
    env, marker = _envelope(sim, directive, stream=stream)
    async with running(worker_settings()) as h:
        events = await _run(h, env)
        assert events[-1].kind == "final", events[-1].body
        assert headers.FALLBACK not in events[0].headers
        assert _answer_text(events, stream) == "sim0 sim1"
        assert _models(sim, marker) == [FLAKY, FLAKY]
        (billed,) = await _billed(h, env.request_id)  # the failed attempt billed nothing
        assert billed.status == "completed" and billed.upstream == "@sim/flaky"


async def test_a_reset_mid_stream_is_not_retried(sim: Sim) -> None:
    env, marker = _envelope(sim, "[sim fault=drop drop_after=2 tokens=9]", stream=True)
    async with running(worker_settings()) as h:
        events = await _run(h, env)
        assert events[0].kind == "delta" and events[-1].kind == "error"
        assert events[-1].headers[headers.STATUS] == "502"
        assert json.loads(events[-1].body)["error"]["type"] == "upstream_error"
        assert _models(sim, marker) == [FLAKY]
        (billed,) = await _billed(h, env.request_id)
        assert billed.status == "failed"


async def test_retries_stop_at_the_upstreams_max_retries_then_the_fallback_answers(sim: Sim) -> None:
    env, marker = _envelope(sim, "[sim fault=500 fault_model=flaky tokens=2]", max_retries=2)
    async with running(worker_settings()) as h:
        (event,) = await _run(h, env)
        assert event.kind == "final" and event.headers[headers.FALLBACK] == "@sim/backup"
        assert _models(sim, marker) == [FLAKY, FLAKY, FLAKY, "sim-model"]


async def test_the_requests_retry_budget_caps_retries_across_the_chain(sim: Sim) -> None:
    env, marker = _envelope(sim, "[sim fault=500 tokens=2]", max_retries=2)  # both upstreams fail
    async with running(worker_settings(upstream_retry_budget=1)) as h:
        (event,) = await _run(h, env)
        assert event.kind == "error" and event.headers[headers.STATUS] == "502"
        assert _models(sim, marker) == [FLAKY, FLAKY, "sim-model"]


async def test_a_request_the_upstream_refused_is_neither_retried_nor_sent_down_the_chain(sim: Sim) -> None:
    env, marker = _envelope(sim, "[sim tokens=-1]")  # the simulator answers 400
    async with running(worker_settings()) as h:
        (event,) = await _run(h, env)
        assert event.kind == "error" and event.headers[headers.STATUS] == "400"
        assert _models(sim, marker) == [FLAKY]


# ---------------------------------------------------------------------- the rules, one by one


def test_a_gateways_timeouts_win_over_its_upstreams_which_win_over_the_workers_settings() -> None:
    settings = worker_settings(
        upstream_connect_timeout=4, upstream_idle_timeout=50, upstream_timeout=500, upstream_ttft_timeout=None
    )
    env = make_envelope("http://127.0.0.1:1/v1", "x")
    route = env.route
    assert route is not None
    assert limits_for(settings, route, True, 300) == limits_for(settings, None, True, 300)
    plain = limits_for(settings, route, True, 300)
    assert (plain.connect, plain.ttft, plain.idle, plain.total) == (4, 50, 50, 300)  # ttft: the idle gap
    whole = limits_for(settings, route, False, 300)
    assert whole.ttft == 300 and whole.read == 300  # a whole answer: the total
    route.upstream.timeouts = Timeouts(ttft=20, idle=10, connect=2)
    route.timeouts = Timeouts(ttft=3)
    mixed = limits_for(settings, route, True, 300)
    assert (mixed.connect, mixed.ttft, mixed.idle, mixed.total) == (2, 3, 10, 300)
    assert mixed.read == 10 and not mixed.idle_on_clock  # the transport keeps the idle gap
    route.timeouts = Timeouts(ttft=40)
    slow = limits_for(settings, route, True, 300)
    assert slow.read == 40 and slow.idle_on_clock  # first reads may take 40 s; the clock keeps 10
    assert limits_for(settings, route, True, 2.5).total == 2.5  # the deadline bounds them all
    assert limits_for(settings, route, True, 2.5).ttft == 2.5


def test_which_faults_are_retried_and_which_move_down_the_chain() -> None:
    assert verdict(RateLimited("slow down", retry_after=1)) is Verdict.RETRY
    for status in (408, 409, 500, 502, 503, 504):
        assert verdict(UpstreamStatusError("x", status)) is Verdict.RETRY
    for status in (404, 413, 418):
        assert verdict(UpstreamStatusError("x", status)) is Verdict.STOP
    assert verdict(InvalidRequest("bad")) is Verdict.STOP
    assert verdict(UpstreamStatusError("x", 401, code="upstream_auth_failed")) is Verdict.NEXT_ONLY
    assert verdict(UpstreamError("x", code="upstream_not_configured")) is Verdict.NEXT_ONLY
    assert verdict(response_too_large("an answer", 1024)) is Verdict.NEXT_ONLY
    assert verdict(DeadlineExceeded("no first token")) is Verdict.NEXT
    assert verdict(transport_error(httpx.ConnectError("refused"), before_response=True)) is Verdict.RETRY
    assert verdict(transport_error(httpx.ConnectTimeout("slow"), before_response=True)) is Verdict.NEXT


def test_backoff_grows_exponentially_with_jitter_and_honours_retry_after_up_to_its_cap() -> None:
    settings = worker_settings(upstream_retry_backoff=0.2, upstream_retry_backoff_max=1.0)
    assert [backoff(n, settings, lambda: 1.0) for n in range(4)] == [0.2, 0.4, 0.8, 1.0]
    assert [backoff(n, settings, lambda: 0.0) for n in range(4)] == [0.1, 0.2, 0.4, 0.5]
    assert wait_before_retry(RateLimited("x", retry_after=3), 0, settings) == 3
    assert wait_before_retry(RateLimited("x", retry_after=11), 0, settings) is None  # cap: 10 s
