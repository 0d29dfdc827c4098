"""A gateway's fallback chain: the next upstream answers when one fails before answering, never
after anything reached the client, and never for a request the upstream rejected."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from aigw_contracts import ChatEnvelope, Prices, UpstreamTarget, UsageEvent, headers, skus
from aigw_devstack.procs import free_port

from .conftest import SIM_PRICES, Sim, make_envelope, running, start_sim, worker_settings

BACKUP_PRICES = Prices(input=Decimal("0.000001"), output=Decimal("0.000004"), cached_input=Decimal("0"))


def _target(base_url: str, upstream_id: str, prices: Prices = SIM_PRICES) -> UpstreamTarget:
    return UpstreamTarget(
        id=upstream_id,
        kind="catalog",
        provider="sim",
        model="sim-model",
        base_url=base_url,
        prices=prices,
    )


def _with_fallbacks(env: ChatEnvelope, *targets: UpstreamTarget) -> ChatEnvelope:
    assert env.route is not None
    env.route.fallbacks = list(targets)
    return env


@pytest.fixture(scope="module")
def busy_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """A simulator answering every request 429 (its process default), asking for a wait longer
    than the worker waits to retry (`upstream_retry_after_max`): the chain moves on at once."""
    sim, proc = start_sim(tmp_path_factory.mktemp("busy-sim"), "--fault", "429", "--retry-after", "30")
    yield sim
    proc.stop()


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: connection refused


async def test_an_unreachable_upstream_falls_back_stream_and_not(sim: Sim) -> None:
    async with running(worker_settings()) as h:
        for stream in (False, True):
            env = make_envelope(_dead_url(), "fall back [sim tokens=3]", stream=stream, include_usage=stream)
            events = await h.run(_with_fallbacks(env, _target(sim.url, "@sim/backup", BACKUP_PRICES)))
            assert events[-1].kind == "final"
            assert events[0].headers[headers.FALLBACK] == "@sim/backup"
            last = json.loads(events[-1].body.split(b"\n")[-1])
            assert last["model"] == "@sim/backup"  # the model that answered, not the one that failed
            (usage,) = await h.usage_for(env.request_id)
            billed = UsageEvent.model_validate_json(usage.body)
            assert billed.upstream == "@sim/backup" and billed.status == "completed"
            # priced as the upstream that answered
            assert {line.sku: line.unit_price for line in billed.lines} == {
                skus.CHAT_IN: BACKUP_PRICES.input,
                skus.CHAT_OUT: BACKUP_PRICES.output,
            }


async def test_the_chain_is_tried_in_order_until_one_answers(sim: Sim, busy_sim: Sim) -> None:
    env = make_envelope(busy_sim.url, "third time [sim tokens=2]")
    chain = (
        _target(_dead_url(), "@sim/dead"),
        _target(sim.url, "@sim/third"),
        _target(sim.url, "@sim/unused"),
    )
    async with running(worker_settings()) as h:
        (event,) = await h.run(_with_fallbacks(env, *chain))
    assert event.kind == "final" and event.headers[headers.FALLBACK] == "@sim/third"
    assert json.loads(event.body)["choices"][0]["message"]["content"] == "sim0 sim1"
    assert busy_sim.requests("third time")[-1]["outcome"] == "429"


async def test_the_last_failure_is_the_answer_when_the_chain_runs_out(busy_sim: Sim) -> None:
    env = make_envelope(_dead_url(), "nobody [sim tokens=2]")
    async with running(worker_settings()) as h:
        (event,) = await h.run(_with_fallbacks(env, _target(busy_sim.url, "@sim/busy")))
    assert event.kind == "error" and event.headers[headers.STATUS] == "429"
    assert event.headers[headers.FALLBACK] == "@sim/busy"


async def test_a_rejected_request_is_not_sent_down_the_chain(sim: Sim, tmp_path: Path) -> None:
    other, proc = start_sim(tmp_path)
    try:
        env = make_envelope(sim.url, "bad knob [sim tokens=-1]")  # the upstream answers 400
        async with running(worker_settings()) as h:
            (event,) = await h.run(_with_fallbacks(env, _target(other.url, "@sim/other")))
        assert event.kind == "error" and event.headers[headers.STATUS] == "400"
        assert headers.FALLBACK not in event.headers and other.requests("bad knob") == []
    finally:
        proc.stop()


async def test_no_fallback_once_the_client_has_part_of_the_answer(sim: Sim, tmp_path: Path) -> None:
    other, proc = start_sim(tmp_path)
    try:
        env = make_envelope(sim.url, "cut [sim tokens=20 fault=drop drop_after=3]", stream=True)
        async with running(worker_settings()) as h:
            events: list[Any] = await h.run(_with_fallbacks(env, _target(other.url, "@sim/other")))
        assert events[-1].kind == "error" and events[0].kind == "delta"
        assert other.requests("cut") == []
    finally:
        proc.stop()
