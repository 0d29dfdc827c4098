"""An auto-routing gateway's classification against a real nats-server: bounded by the classifier's
own timeout, and stopped by a cancel from the edge (the client went away) before anything is forwarded.

The test plays the worker pool: it takes the classifier call (purpose "routing") and answers as the
real worker does when the call's deadline passes (a 504 error event), or when the edge's cancel
reached it (a 499 error event at once), or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from aigw_contracts import (
    CancelRequest,
    ChatCompletionRequest,
    ChatEnvelope,
    ConfigSnapshot,
    Gateway,
    errors,
    events,
    headers,
    subjects,
)
from aigw_contracts.config import AutoRouting
from aigw_contracts.events import EventKind
from aigw_devstack import NatsServer
from aigw_router.app import create_app
from aigw_router.registry import Registry
from aigw_router.settings import RouterSettings
from aigw_runtime.bus import settle
from aigw_runtime.service import Service
from aigw_runtime.workercall import ANSWER_GRACE

GID = "01990000-0000-7000-8000-00000000a070"
REPLY = subjects.reply_subject("edge1", "req-auto")
TIMEOUT = 0.3  # the classifier's timeout in these tests


@dataclass
class Pool:
    """The stand-in worker pool and edge: what reached them, and how the classifier behaves."""

    nc: Client
    # "deadline": as the real worker, a 504 when the call's deadline passes; "cancelled": a 499 at
    # once, as the real worker says when the edge's cancel reached it first; "silent": nothing.
    mode: Literal["deadline", "cancelled", "silent"] = "deadline"
    service: Service | None = None
    classifier_calls: list[ChatEnvelope] = field(default_factory=list)
    forwarded: list[ChatEnvelope] = field(default_factory=list)
    to_edge: list[Msg] = field(default_factory=list)

    async def on_worker(self, msg: Msg) -> None:
        envelope = ChatEnvelope.routed(msg.data)
        assert envelope.route is not None
        if envelope.route.purpose != "routing":
            self.forwarded.append(envelope)
            return
        self.classifier_calls.append(envelope)
        if self.mode == "deadline":
            err = errors.DeadlineExceeded("The upstream model did not finish")
            asyncio.get_running_loop().call_later(
                max(envelope.remaining(), 0), lambda: asyncio.ensure_future(self._error(msg.reply, err))
            )
        elif self.mode == "cancelled":
            cancelled = errors.InvalidRequest("The request was cancelled (client_disconnected)")
            cancelled.status = 499
            await self._error(msg.reply, cancelled)

    async def _error(self, reply: str, err: errors.GatewayError) -> None:
        hdrs, payload = events.error_event(err, 0)
        await self.nc.publish(reply, payload, headers=hdrs)

    async def on_edge(self, msg: Msg) -> None:
        self.to_edge.append(msg)

    def alive_events(self) -> int:
        return sum(1 for m in self.to_edge if (m.headers or {}).get(headers.EVENT) == EventKind.ALIVE)


def _registry() -> Registry:
    routing = AutoRouting(
        classifier="@openai/gpt-5-nano",
        low="@openai/gpt-5-nano",
        medium="@openai/gpt-5-nano",
        high="@openai/gpt-5",
    )
    gateway = Gateway(id=GID, name="auto", tenant="t1", upstream="@openai/gpt-5-mini", routing=routing)
    return Registry.from_snapshot(ConfigSnapshot(gateways=[gateway]))


@asynccontextmanager
async def running(
    nats_url: str, mode: Literal["deadline", "cancelled", "silent"] = "deadline"
) -> AsyncIterator[tuple[Pool, Client]]:
    settings = RouterSettings(
        nats_url=nats_url, router_id="rc", classifier_timeout=TIMEOUT, heartbeat_interval=0.1
    )
    service = create_app(settings, _registry())
    await service.start()
    nc = await nats.connect(nats_url)
    pool = Pool(nc, mode, service)
    await nc.subscribe(subjects.WORKER_CHAT, cb=pool.on_worker)
    await nc.subscribe(REPLY, cb=pool.on_edge)
    await settle(nc)
    try:
        yield pool, nc
    finally:
        await nc.close()
        await service.stop(grace=1)


def _envelope() -> bytes:
    return (
        ChatEnvelope(
            request_id="req-auto",
            tenant="t1",
            key_id="k1",
            reply=REPLY,
            deadline=time.time() + 30,
            request=ChatCompletionRequest(model=GID, messages=[{"role": "user", "content": "prove it"}]),
        )
        .model_dump_json()
        .encode()
    )


async def _until(probe: Callable[[], object], within: float, what: str) -> float:
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < within, f"{what} not within {within}s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


async def test_a_slow_classifier_costs_its_timeout_then_the_gateways_upstream_answers(
    nats_server: NatsServer,
) -> None:
    async with running(nats_server.url) as (pool, nc):
        published = time.time()
        await nc.publish(subjects.ROUTER_CHAT, _envelope())
        took = await _until(lambda: pool.forwarded, 5.0, "the request forwarded")
        (call,) = pool.classifier_calls
        # The call's own deadline is the classifier's timeout, not the request's: the worker stops it.
        assert call.deadline <= published + TIMEOUT + 0.2
        assert TIMEOUT - 0.05 <= took < TIMEOUT + 0.5  # right after the worker said it stopped the call
        (routed,) = pool.forwarded
        assert routed.route is not None and routed.route.upstream.id == "@openai/gpt-5-mini"
        assert routed.route.routed_complexity is None and routed.route.prior_usage == []  # nothing billed


async def test_a_classifier_whose_worker_says_nothing_is_given_up_after_the_grace(
    nats_server: NatsServer,
) -> None:
    async with running(nats_server.url, "silent") as (pool, nc):
        await nc.publish(subjects.ROUTER_CHAT, _envelope())
        took = await _until(lambda: pool.forwarded, 5.0, "the request forwarded")
        assert TIMEOUT + ANSWER_GRACE - 0.1 <= took < TIMEOUT + ANSWER_GRACE + 1.0
        (routed,) = pool.forwarded
        assert routed.route is not None and routed.route.upstream.id == "@openai/gpt-5-mini"


async def test_a_classification_whose_client_left_is_stopped_and_never_forwarded(
    nats_server: NatsServer,
) -> None:
    async with running(nats_server.url, "silent") as (pool, nc):
        await nc.publish(subjects.ROUTER_CHAT, _envelope())
        await _until(lambda: pool.classifier_calls and pool.alive_events(), 5.0, "classifying, held")
        assert pool.service is not None and pool.service.snapshot()["classifying"] == 1
        await nc.publish(
            subjects.CHAT_CANCEL, CancelRequest(request_id="req-auto").model_dump_json().encode()
        )
        await _until(lambda: pool.service.snapshot()["classifying"] == 0, 1.0, "the classification stopped")
        assert pool.service.snapshot()["cancelled"] == 1
        # Past the point where the router would have given up on the classifier and forwarded it:
        await asyncio.sleep(TIMEOUT + ANSWER_GRACE + 0.5)
        assert pool.forwarded == []
        beats = pool.alive_events()
        await asyncio.sleep(0.3)  # three heartbeat intervals: the router holds the request no more
        assert pool.alive_events() == beats
        assert not [m for m in pool.to_edge if (m.headers or {}).get(headers.EVENT) != EventKind.ALIVE]


async def test_a_cancel_that_arrives_before_its_request_drops_it_unclassified(
    nats_server: NatsServer,
) -> None:
    async with running(nats_server.url) as (pool, nc):
        # The edge's cancel may overtake its request: the router's subscriptions are read apart.
        await nc.publish(
            subjects.CHAT_CANCEL, CancelRequest(request_id="req-auto").model_dump_json().encode()
        )
        await nc.flush()
        await asyncio.sleep(0.1)
        await nc.publish(subjects.ROUTER_CHAT, _envelope())
        await nc.flush()
        await asyncio.sleep(TIMEOUT + 0.5)  # proving that nothing happens takes a wait
        assert pool.classifier_calls == [] and pool.forwarded == [] and pool.to_edge == []


async def test_a_classifier_call_the_worker_stopped_on_the_cancel_ends_the_request_too(
    nats_server: NatsServer,
) -> None:
    """The worker may hear the edge's cancel (and stop the classifier call) before the router does:
    its 499 must not send the request on to the gateway's upstream."""
    async with running(nats_server.url, "cancelled") as (pool, nc):
        await nc.publish(subjects.ROUTER_CHAT, _envelope())
        await _until(lambda: pool.classifier_calls, 5.0, "the classifier asked")
        await asyncio.sleep(0.5)  # proving that nothing happens takes a wait
        assert pool.forwarded == []
        assert not [m for m in pool.to_edge if (m.headers or {}).get(headers.EVENT) != EventKind.ALIVE]
