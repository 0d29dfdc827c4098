"""The retrieval service: a NATS connection, its subscriptions, and the knowledge store behind them.

* `RETRIEVAL_CHAT` in the `RETRIEVAL_QUEUE` queue group: routed envelopes of gateways with
  knowledge (`grounding.py`); each runs as its own task, so a slow embedding never holds up the next;
* `bounce_wildcard(retrieval_id)`: no-responders bounces of envelopes forwarded to the workers;
* `RETRIEVAL_MANAGE` in the same queue group: management requests from the edge (`manage.py`);
* `RETRIEVAL_TOOL` in the same queue group: knowledge-tool searches from workers (`tool.py`).

Startup connects, loads the collections from the config store (and keeps watching it: a deleted
collection's documents are dropped), makes sure the usage stream exists, then subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any, Literal

from faststream import FastStream
from faststream.nats import NatsBroker, NatsResponse
from faststream.nats.annotations import NatsMessage
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel

from aigw_contracts import subjects
from aigw_runtime.configstore import ConfigView, ConfigWatcher
from aigw_runtime.usage_publisher import JetStreamUsageBus, OnAck, UsageBus, UsagePublisher
from aigw_runtime.workercall import ask_worker

from .embed import Embedder, MiniLMEmbedder
from .factory import build_embedder, build_store
from .grounding import Grounder
from .manage import Manager
from .rerank import ModelReranker
from .resolver import ResolverCalls
from .rewrite import Rewriter
from .service import Knowledge, Outgoing
from .settings import RetrievalSettings
from .stores import KnowledgeStore, Scope
from .tool import ToolSearcher

log = logging.getLogger("aigw.retrieval")

HotPath = Literal["raw", "broker"]


class Retrieval:
    """The service's parts, reachable from tests."""

    def __init__(self, settings: RetrievalSettings) -> None:
        self.settings = settings
        self.knowledge: Knowledge | None = None
        self.manager: Manager | None = None
        self.grounder: Grounder | None = None
        self.tools: ToolSearcher | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


class BrokerUsageBus:
    """`UsageBus` through faststream's broker, for TestNatsBroker (no JetStream there): each usage
    event is published to the broker, where tests subscribe to it, and counts as acked at once."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        self._on_ack: OnAck | None = None

    async def start_usage_acks(self, on_ack: OnAck) -> None:
        self._on_ack = on_ack

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.broker.publish(payload, subject=subject, headers=headers)
        assert self._on_ack is not None
        self._on_ack(token, False, None)


def create_app(
    settings: RetrievalSettings,
    *,
    store: KnowledgeStore | None = None,
    embedder: Embedder | None = None,
    view: ConfigView | None = None,
    hot_path: HotPath = "raw",
) -> tuple[FastStream, NatsBroker, Retrieval]:
    """The retrieval app. Without `view`, collections come from the config store (watched).

    `hot_path="raw"` subscribes with nats-py directly: a faststream subscriber costs about 100 µs
    of CPU per message here, and its handlers run one message at a time, where a grounding waits
    for an embedding. Service tests use `hot_path="broker"`, which runs the same handlers as
    faststream subscribers, so faststream's TestNatsBroker can drive them in memory.
    """
    broker = NatsBroker(
        settings.nats_url,
        logger=None,
        name=f"aigw-retrieval-{settings.retrieval_id}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )
    service = Retrieval(settings)
    watch_store = view is None
    watcher: ConfigWatcher | None = None
    raw_subs: list[Subscription] = []

    def parts() -> tuple[Manager, Grounder, ToolSearcher]:
        assert service.manager is not None and service.grounder is not None and service.tools is not None
        return service.manager, service.grounder, service.tools

    async def send_via_broker(out: Outgoing | None) -> None:
        if out is not None:
            await broker.publish(out.payload, subject=out.subject, headers=out.headers, reply_to=out.reply)

    if hot_path == "broker":

        @broker.subscriber(subjects.RETRIEVAL_CHAT, queue=subjects.RETRIEVAL_QUEUE, no_reply=True)
        async def on_chat(msg: NatsMessage) -> None:
            await send_via_broker(await parts()[1].chat(msg.body))

        @broker.subscriber(subjects.bounce_wildcard(settings.retrieval_id), no_reply=True)
        async def on_bounce(msg: NatsMessage) -> None:
            await send_via_broker(parts()[1].bounce(msg.raw_message.subject, msg.headers))

        @broker.subscriber(subjects.RETRIEVAL_MANAGE, queue=subjects.RETRIEVAL_QUEUE)
        async def on_manage(msg: NatsMessage) -> NatsResponse:
            payload, hdrs = await parts()[0].answer(msg.body)
            return NatsResponse(payload, headers=hdrs)

        @broker.subscriber(subjects.RETRIEVAL_TOOL, queue=subjects.RETRIEVAL_QUEUE)
        async def on_tool(msg: NatsMessage) -> NatsResponse:
            payload, hdrs = await parts()[2].answer(msg.body)
            return NatsResponse(payload, headers=hdrs)

    app = FastStream(broker, logger=None)

    @app.on_startup
    async def start() -> None:
        nonlocal watcher
        await broker.connect()
        collections = view if view is not None else ConfigView()
        knowledge = Knowledge(
            settings,
            store if store is not None else await build_store(settings),
            embedder if embedder is not None else build_embedder(settings),
            collections,
        )
        if isinstance(knowledge.embedder, MiniLMEmbedder):  # load the weights now, not on a request
            await asyncio.to_thread(lambda: knowledge.embedder.model)  # type: ignore[attr-defined]
        if watch_store:
            watcher = ConfigWatcher(broker.connection.jetstream(), collections)
            await watcher.start()
            watcher.listeners.append(lambda *change: _on_config_change(service, *change))
        connection = broker.connection
        usage_bus: UsageBus
        if isinstance(connection, NatsClient):
            jetstream_bus = JetStreamUsageBus(connection)
            await jetstream_bus.ensure_usage_stream()
            usage_bus = jetstream_bus
            max_payload = connection.max_payload

            calls = ResolverCalls(collections.upstreams, partial(ask_worker, connection))
            rewriter: Rewriter | None = Rewriter(calls, settings.max_query_chars)
            reranker: ModelReranker | None = ModelReranker(calls)
        else:  # TestNatsBroker: no JetStream; usage goes through the broker (tests subscribe to it)
            usage_bus = BrokerUsageBus(broker)
            max_payload = 1024 * 1024
            rewriter = None
            reranker = None
        knowledge.usage = UsagePublisher(usage_bus, retry_window=settings.usage_retry_window)
        await knowledge.usage.start()
        service.knowledge = knowledge
        service.manager = Manager(knowledge)
        service.grounder = Grounder(knowledge, settings.retrieval_id, max_payload, rewriter, reranker)
        service.tools = ToolSearcher(knowledge)

    @app.after_startup
    async def subscribe_hot_path() -> None:
        if hot_path != "raw":
            return
        nc = broker.connection
        manager, grounder, tools = parts()

        async def send(out: Outgoing | None) -> None:
            if out is not None:
                await nc.publish(out.subject, out.payload, reply=out.reply, headers=out.headers)

        async def ground(data: bytes) -> None:
            await send(await grounder.chat(data))

        async def answer(msg: Msg, handler: Manager | ToolSearcher) -> None:
            payload, hdrs = await handler.answer(msg.data)
            if msg.reply:
                await nc.publish(msg.reply, payload, headers=hdrs)

        async def on_chat(msg: Msg) -> None:
            service.spawn(ground(msg.data))

        async def on_bounce(msg: Msg) -> None:
            await send(grounder.bounce(msg.subject, msg.headers))

        async def on_manage(msg: Msg) -> None:
            service.spawn(answer(msg, manager))

        async def on_tool(msg: Msg) -> None:
            service.spawn(answer(msg, tools))

        raw_subs.append(await nc.subscribe(subjects.bounce_wildcard(settings.retrieval_id), cb=on_bounce))
        raw_subs.append(
            await nc.subscribe(subjects.RETRIEVAL_CHAT, queue=subjects.RETRIEVAL_QUEUE, cb=on_chat)
        )
        raw_subs.append(
            await nc.subscribe(subjects.RETRIEVAL_MANAGE, queue=subjects.RETRIEVAL_QUEUE, cb=on_manage)
        )
        raw_subs.append(
            await nc.subscribe(subjects.RETRIEVAL_TOOL, queue=subjects.RETRIEVAL_QUEUE, cb=on_tool)
        )
        await nc.flush()

    @app.on_shutdown
    async def stop() -> None:
        # New work goes to other replicas from now on; what runs here may finish within the grace.
        for sub in raw_subs[1:]:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if service.tasks:
            await asyncio.wait(list(service.tasks), timeout=settings.shutdown_grace or None)
        if watcher is not None:
            await watcher.stop()
        knowledge = service.knowledge
        if knowledge is not None:
            if knowledge.usage is not None:
                await knowledge.usage.close(within=10.0)
            await knowledge.close()

    return app, broker, service


def _on_config_change(
    service: Retrieval, kind: str, entry_id: str, old: BaseModel | None, new: BaseModel | None
) -> None:
    """A collection deleted from the config store: its documents go too (idempotent across replicas)."""
    knowledge = service.knowledge
    if kind != "collection" or new is not None or old is None or knowledge is None:
        return
    tenant = getattr(old, "tenant", None)
    if not tenant:
        return

    async def drop() -> None:
        try:
            await knowledge.drop(Scope(tenant, entry_id))
        except Exception:
            log.exception("could not drop a deleted collection's documents", extra={"collection": entry_id})

    service.spawn(drop())
