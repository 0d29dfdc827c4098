"""What `model` says in an answer: a catalog upstream's tag, an own endpoint's model name (never its
internal upstream id), and after a fallback, the upstream that answered."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from aigw_contracts import ChatEnvelope, Prices, UpstreamTarget, headers
from aigw_contracts.ids import uuid7
from aigw_devstack.procs import free_port

from .conftest import Event, Sim, make_envelope, running, worker_settings

ZERO = Prices(input=Decimal(0), output=Decimal(0), cached_input=Decimal(0))
LOOPBACK = ["127.0.0.1/32"]  # the simulator listens there; own endpoints must be allow-listed


def _own(base_url: str, model: str) -> UpstreamTarget:
    return UpstreamTarget(
        id=uuid7(), kind="own", provider="custom", model=model, base_url=base_url, prices=ZERO
    )


def _on(env: ChatEnvelope, target: UpstreamTarget) -> ChatEnvelope:
    assert env.route is not None
    env.route.upstream = target
    env.route.response_model = target.id  # what the router sets: the upstream's id
    return env


def _models(events: list[Event]) -> list[str]:
    """The `model` of every chunk (or of the whole answer) the client got."""
    chunks: list[dict[str, Any]] = [
        json.loads(line) for e in events for line in e.body.split(b"\n") if line.strip()
    ]
    assert all("error" not in c for c in chunks), chunks
    return [c["model"] for c in chunks]


async def test_an_own_endpoints_answer_names_its_model_stream_and_not(sim: Sim) -> None:
    async with running(worker_settings(upstream_allowlist=LOOPBACK)) as h:
        for stream in (False, True):
            target = _own(sim.url, "tenant-llama-3")
            env = _on(
                make_envelope(sim.url, "who? [sim tokens=3]", stream=stream, include_usage=stream), target
            )
            events = await h.run(env)
            assert events[-1].kind == "final"
            models = _models(events)
            assert len(models) >= (3 if stream else 1)  # deltas, finish and usage chunks
            assert set(models) == {"tenant-llama-3"}, models  # not the upstream's id


async def test_a_catalog_answer_keeps_the_catalog_tag(sim: Sim) -> None:
    async with running(worker_settings()) as h:
        for stream in (False, True):
            events = await h.run(make_envelope(sim.url, "who? [sim tokens=2]", stream=stream))
            assert set(_models(events)) == {"@sim/sim-model"}


async def test_a_fallback_to_an_own_endpoint_names_its_model(sim: Sim) -> None:
    async with running(worker_settings(upstream_allowlist=LOOPBACK)) as h:
        for stream in (False, True):
            env = make_envelope(f"http://127.0.0.1:{free_port()}/v1", "who? [sim tokens=2]", stream=stream)
            assert env.route is not None
            backup = _own(sim.url, "tenant-backup")
            env.route.fallbacks = [backup]
            events = await h.run(env)
            assert events[0].headers[headers.FALLBACK] == backup.id
            assert set(_models(events)) == {"tenant-backup"}
