"""Grounding with a resolver model against a real nats-server: a slow resolver is given up after
`AIGW_RESOLVER_TIMEOUT` (plain query, fused order, nothing billed for it), and a grounding whose
client left is stopped, its resolver call included, and never forwarded nor billed.

The test plays the worker pool: resolver calls (replies to an inbox) are answered as the real worker
does when the call's deadline passes (a 504 error event), or not at all; forwarded envelopes are kept.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from aigw_contracts import (
    CancelRequest,
    ChatCompletionRequest,
    ChatEnvelope,
    RoutedCall,
    UpstreamTarget,
    UsageEvent,
    errors,
    events,
    headers,
    skus,
    subjects,
)
from aigw_contracts.config import Prices
from aigw_contracts.events import EventKind
from aigw_contracts.knowledge import Collection, GatewayKnowledge, KnowledgeRequest
from aigw_devstack import NatsServer
from aigw_retrieval.app import create_app
from aigw_retrieval.embed import MiniLMEmbedder
from aigw_retrieval.settings import RetrievalSettings
from aigw_retrieval.stores import EmbeddedStore
from aigw_runtime.bus import settle
from aigw_runtime.configstore import ConfigView
from aigw_runtime.service import Service

REPLY = subjects.reply_subject("edge1", "req-kb")
BOUNCE = subjects.bounce_subject("router1-k", REPLY)  # the reply the router publishes envelopes with
DOCS = "0199aaaa-0000-7000-8000-00000000d0c5"
TIMEOUT = 0.3  # the resolver's timeout in these tests
HANDBOOK = """# Acme handbook

## Refunds

Refunds are paid back to the original card within five business days.

## Passwords

To reset your password, open Settings, choose Security and click Reset password.
"""
RESOLVER_SKUS = {skus.REWRITE_IN, skus.RERANK_IN}


@dataclass
class Pool:
    nc: Client
    service: Service
    answer_at_deadline: bool = True
    resolver_calls: list[ChatEnvelope] = field(default_factory=list)
    forwarded: list[ChatEnvelope] = field(default_factory=list)
    to_edge: list[Msg] = field(default_factory=list)
    usage: list[UsageEvent] = field(default_factory=list)

    async def on_worker(self, msg: Msg) -> None:
        envelope = ChatEnvelope.routed(msg.data)
        if not (msg.reply or "").startswith("_INBOX."):
            self.forwarded.append(envelope)
            return
        self.resolver_calls.append(envelope)
        if self.answer_at_deadline:
            asyncio.get_running_loop().call_later(
                max(envelope.remaining(), 0), lambda: asyncio.ensure_future(self._timed_out(msg.reply))
            )

    async def _timed_out(self, reply: str) -> None:
        hdrs, payload = events.error_event(errors.DeadlineExceeded("The upstream model did not finish"), 0)
        await self.nc.publish(reply, payload, headers=hdrs)

    async def on_edge(self, msg: Msg) -> None:
        if (msg.headers or {}).get(headers.EVENT) != EventKind.ALIVE:
            self.to_edge.append(msg)

    async def on_usage(self, msg: Msg) -> None:
        self.usage.append(UsageEvent.model_validate_json(msg.data))


async def _until(probe: Callable[[], object], within: float, what: str) -> float:
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < within, f"{what} not within {within}s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


@asynccontextmanager
async def running(
    tmp_path: Path, minilm: MiniLMEmbedder, nats_url: str, answer_at_deadline: bool = True
) -> AsyncIterator[Pool]:
    view = ConfigView()
    view.collections[DOCS] = Collection(id=DOCS, tenant="acme", name="docs")
    settings = RetrievalSettings(nats_url=nats_url, retrieval_id="rbounds", resolver_timeout=TIMEOUT)
    service, _ = create_app(settings, store=EmbeddedStore(tmp_path / "kb"), embedder=minilm, view=view)
    nc = await nats.connect(nats_url)
    pool = Pool(nc, service, answer_at_deadline)
    await nc.subscribe(subjects.WORKER_CHAT, cb=pool.on_worker)
    await nc.subscribe(REPLY, cb=pool.on_edge)
    await nc.subscribe(subjects.USAGE_WILDCARD, cb=pool.on_usage)
    await settle(nc)
    await service.start()
    try:
        doc = {"docid": "handbook", "text": HANDBOOK, "content_type": "text/markdown"}
        body = KnowledgeRequest(
            op="upsert", tenant="acme", collection=DOCS, key_id="k1", documents=[doc]
        ).model_dump_json(by_alias=True)
        answer = await nc.request(subjects.RETRIEVAL_MANAGE, body.encode(), timeout=30)
        assert json.loads(answer.data)["created"] == 1, answer.data
        await _until(lambda: pool.usage, 5.0, "the document's embedding billed")
        pool.usage.clear()
        yield pool
    finally:
        await service.stop(grace=1)
        await nc.close()


def _envelope(**knowledge: Any) -> bytes:
    messages = [{"role": "user", "content": "How do I reset my password?"}]
    return ChatEnvelope(
        request_id="req-kb",
        tenant="acme",
        key_id="k1",
        reply=REPLY,
        deadline=time.time() + 30,
        request=ChatCompletionRequest(model="grounded", messages=messages),
        route=RoutedCall(
            gateway_id="gw1",
            upstream=UpstreamTarget(
                id="@sim/sim-model",
                kind="catalog",
                provider="sim",
                model="sim",
                base_url="http://x",
                prices=Prices(),
            ),
            body={"messages": messages},
            response_model="@sim/sim-model",
            knowledge=GatewayKnowledge.model_validate({"collection": DOCS, **knowledge}),
        ),
    ).forward_json()


@pytest.mark.parametrize(
    "knowledge",
    [{"strategy": "UserRewrite"}, {"reranker": "model", "top": 1, "minScore": 0}],
    ids=["rewrite", "rerank"],
)
async def test_a_slow_resolver_is_given_up_after_its_timeout_and_not_billed(
    tmp_path: Path, minilm: MiniLMEmbedder, nats_server: NatsServer, knowledge: dict[str, Any]
) -> None:
    async with running(tmp_path, minilm, nats_server.url) as pool:
        published = time.time()
        await pool.nc.publish(subjects.RETRIEVAL_CHAT, _envelope(**knowledge), reply=BOUNCE)
        took = await _until(lambda: pool.forwarded or pool.to_edge, 5.0, "the grounded request forwarded")
        assert not pool.to_edge, pool.to_edge[0].data  # not failed: grounded without the resolver
        (call,) = pool.resolver_calls
        assert call.deadline <= published + TIMEOUT + 0.2  # the worker stops the call at the timeout
        assert took < TIMEOUT + 1.0
        (routed,) = pool.forwarded
        assert routed.route is not None and routed.route.grounding
        assert routed.route.grounding[0].id == "handbook#1"  # the plain query / fused order found it
        billed = {line.sku for line in routed.route.prior_usage}
        assert skus.KNOWLEDGE_SEARCH in billed and not billed & RESOLVER_SKUS


async def test_a_grounding_whose_client_left_is_stopped_unforwarded_and_unbilled(
    tmp_path: Path, minilm: MiniLMEmbedder, nats_server: NatsServer
) -> None:
    async with running(tmp_path, minilm, nats_server.url, answer_at_deadline=False) as pool:
        await pool.nc.publish(subjects.RETRIEVAL_CHAT, _envelope(strategy="UserRewrite"), reply=BOUNCE)
        await _until(lambda: pool.resolver_calls, 5.0, "the resolver asked")
        assert pool.service.snapshot()["grounding"] == 1
        await pool.nc.publish(
            subjects.CHAT_CANCEL, CancelRequest(request_id="req-kb").model_dump_json().encode()
        )
        await _until(lambda: pool.service.snapshot()["grounding"] == 0, 1.0, "the grounding stopped")
        assert pool.service.snapshot()["cancelled"] == 1
        # Past the point where it would have given up on the resolver and searched without it:
        await asyncio.sleep(TIMEOUT + 1.5)
        assert pool.forwarded == [] and pool.to_edge == [] and pool.usage == []


async def test_a_cancel_that_overtakes_its_request_drops_it_unsearched(
    tmp_path: Path, minilm: MiniLMEmbedder, nats_server: NatsServer
) -> None:
    """The edge's cancel travels on its own connection, the envelope through the router: the cancel
    may arrive first."""
    async with running(tmp_path, minilm, nats_server.url) as pool:
        await pool.nc.publish(
            subjects.CHAT_CANCEL, CancelRequest(request_id="req-kb").model_dump_json().encode()
        )
        await pool.nc.flush()
        await asyncio.sleep(0.1)
        await pool.nc.publish(subjects.RETRIEVAL_CHAT, _envelope(strategy="UserRewrite"), reply=BOUNCE)
        await pool.nc.flush()
        await asyncio.sleep(TIMEOUT + 0.5)  # proving that nothing happens takes a wait
        assert pool.resolver_calls == [] and pool.forwarded == [] and pool.usage == []
