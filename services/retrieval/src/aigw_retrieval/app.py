"""The retrieval service: a NATS connection, its subscriptions, and the knowledge store behind them.

* `RETRIEVAL_CHAT` in the `RETRIEVAL_QUEUE` queue group: routed envelopes of gateways with
  knowledge (`grounding.py`); each runs as its own task, so a slow embedding never holds up the next;
* `bounce_wildcard(retrieval_id)`: no-responders bounces of envelopes forwarded to the workers;
* `RETRIEVAL_MANAGE` in the same queue group: management requests from the edge (`manage.py`);
* `RETRIEVAL_TOOL` in the same queue group: knowledge-tool searches from workers (`tool.py`);
* `RETRIEVAL_EMBED` in the same queue group: `POST /v1/embeddings` from the edge (`embeddings.py`);
* `RETRIEVAL_CACHE_HIT` in the same queue group: response-cache hits to bill (`cachehits.py`);
* `CHAT_CANCEL`, without a queue group: a grounding whose client went away is stopped, its model
  calls included, and never forwarded (`aigw_runtime.cancels`).

Startup connects, loads the collections from the config store (and keeps watching it: a deleted
collection's documents are dropped), makes sure the usage stream exists, then subscribes.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from nats.aio.msg import Msg
from pydantic import BaseModel

from aigw_contracts import subjects
from aigw_runtime.cancels import Cancels
from aigw_runtime.configstore import ConfigView, ConfigWatcher
from aigw_runtime.heartbeat import Heartbeats
from aigw_runtime.service import Service
from aigw_runtime.spend import SpendAccounts
from aigw_runtime.usage_publisher import JetStreamUsageBus, UsagePublisher
from aigw_runtime.workercall import ask_worker

from .cachehits import CacheHitBiller
from .embed import Embedder, MiniLMEmbedder
from .embeddings import EmbeddingsAPI
from .factory import build_embedder, build_store
from .grounding import Grounder
from .manage import Manager
from .rerank import ModelReranker
from .resolver import ResolverCalls
from .rewrite import Rewriter
from .service import Knowledge
from .settings import RetrievalSettings
from .stores import KnowledgeStore, Scope
from .tool import ToolSearcher

log = logging.getLogger("aigw.retrieval")


class Retrieval:
    """The service's parts, reachable from tests."""

    def __init__(self, settings: RetrievalSettings) -> None:
        self.settings = settings
        self.knowledge: Knowledge | None = None
        self.manager: Manager | None = None
        self.grounder: Grounder | None = None
        self.tools: ToolSearcher | None = None
        self.embeddings: EmbeddingsAPI | None = None
        self.cache_hits: CacheHitBiller | None = None

    def parts(self) -> tuple[Manager, Grounder, ToolSearcher]:
        assert self.manager is not None and self.grounder is not None and self.tools is not None
        return self.manager, self.grounder, self.tools


def create_app(
    settings: RetrievalSettings,
    *,
    store: KnowledgeStore | None = None,
    embedder: Embedder | None = None,
    view: ConfigView | None = None,
) -> tuple[Service, Retrieval]:
    """The retrieval service. Without `view`, collections come from the config store (watched)."""
    service = Service(
        "retrieval",
        settings.retrieval_id,
        settings.nats_url,
        health_host=settings.health_host,
        health_port=settings.health_port,
        shutdown_grace=settings.shutdown_grace,
    )
    retrieval = Retrieval(settings)
    bus = service.bus
    heartbeats = Heartbeats(bus, settings.heartbeat_interval)
    cancels = Cancels()  # groundings in progress, by request id
    service.details = lambda: {"grounding": len(cancels), "cancelled": cancels.stopped}
    watcher: ConfigWatcher | None = None
    store_ok = False  # the last store check's verdict (`/readyz`)
    store_checks: asyncio.Task[None] | None = None
    service.checks["store"] = lambda: store_ok

    async def check_store(store: KnowledgeStore) -> None:
        """Readiness follows the store: checked every `store_check_interval` seconds."""
        nonlocal store_ok
        while True:
            try:
                ok = await asyncio.wait_for(store.available(), settings.store_check_interval)
            except TimeoutError:
                ok = False
            if ok != store_ok:
                (log.info if ok else log.error)(
                    "knowledge store available" if ok else "knowledge store unavailable",
                    extra={"store": settings.knowledge_store},
                )
            store_ok = ok
            await asyncio.sleep(settings.store_check_interval)

    async def start() -> None:
        nonlocal watcher, store_checks, store_ok
        collections = view if view is not None else ConfigView()
        knowledge = Knowledge(
            settings,
            store if store is not None else await build_store(settings),
            embedder if embedder is not None else build_embedder(settings),
            collections,
        )
        store_ok = await knowledge.store.available()
        store_checks = asyncio.get_running_loop().create_task(check_store(knowledge.store))
        if isinstance(knowledge.embedder, MiniLMEmbedder):  # load the weights now, not on a request
            await asyncio.to_thread(lambda: knowledge.embedder.model)  # type: ignore[attr-defined]
        if view is None:
            watcher = ConfigWatcher(bus.nc.jetstream(), collections)
            await watcher.start()
            watcher.listeners.append(lambda *change: _on_config_change(service, retrieval, *change))
            bus.on_reconnect.append(watcher.reconnected)  # a NATS restart loses the watch: catch up
        usage_bus = JetStreamUsageBus(bus.nc)
        await usage_bus.ensure_usage_stream()
        calls = ResolverCalls(collections.upstreams, partial(ask_worker, bus.nc), settings.resolver_timeout)
        knowledge.usage = UsagePublisher(usage_bus, retry_window=settings.usage_retry_window)
        await knowledge.usage.start()
        knowledge.spend = await SpendAccounts.open(bus.nc.jetstream())  # direct searches, ingestion
        await knowledge.spend.watch()
        bus.on_reconnect.append(knowledge.spend.reconnected)
        retrieval.knowledge = knowledge
        retrieval.manager = Manager(knowledge)
        retrieval.grounder = Grounder(
            knowledge,
            settings.retrieval_id,
            bus.max_payload,
            Rewriter(calls, settings.max_query_chars),
            ModelReranker(calls),
        )
        retrieval.tools = ToolSearcher(knowledge)
        retrieval.embeddings = EmbeddingsAPI(knowledge, bus.max_payload)
        retrieval.cache_hits = CacheHitBiller(knowledge)
        service.ready_fields = {"store": settings.knowledge_store, "embedder": knowledge.embedder.name}

    async def stop() -> None:
        await heartbeats.close()
        if store_checks is not None:
            store_checks.cancel()
        if watcher is not None:
            await watcher.stop()
        knowledge = retrieval.knowledge
        if knowledge is not None:
            if knowledge.usage is not None:
                await knowledge.usage.close(within=10.0)
            await knowledge.close()

    async def on_chat(msg: Msg) -> None:
        reply = subjects.reply_in_bounce(msg.reply)
        request_id = subjects.request_id_from_reply(reply) if reply else ""
        task = asyncio.current_task()
        if request_id and task is not None:  # a spawned route: this task holds the request
            if cancels.cancelled_before(request_id) is not None:
                return  # its client left before it got here: no search, no model call, no bill
            cancels.track(request_id, task)
        heartbeats.hold(reply)  # an embedding and a search may take a while: the edge hears we hold it
        try:
            await bus.send(await retrieval.parts()[1].chat(msg.data))
        finally:
            heartbeats.release(reply)

    async def on_cancel(msg: Msg) -> None:
        cancels.on_cancel(msg.data)

    async def on_bounce(msg: Msg) -> None:
        await bus.send(retrieval.parts()[1].bounce(msg.subject, msg.headers))

    async def on_manage(data: bytes) -> tuple[bytes, dict[str, str] | None]:
        return await retrieval.parts()[0].answer(data)

    async def on_tool(data: bytes) -> tuple[bytes, dict[str, str] | None]:
        return await retrieval.parts()[2].answer(data)

    async def on_embed(data: bytes) -> tuple[bytes, dict[str, str] | None]:
        assert retrieval.embeddings is not None
        return await retrieval.embeddings.answer(data)

    async def on_cache_hit(data: bytes) -> tuple[bytes, dict[str, str] | None]:
        assert retrieval.cache_hits is not None
        return await retrieval.cache_hits.answer(data)

    service.on_start.append(start)
    service.on_stop.append(stop)
    # Bounces answer envelopes this replica already forwarded: they flow until the very end.
    service.route(subjects.bounce_wildcard(settings.retrieval_id), on_bounce, takes_work=False)
    # A grounding waits for an embedding and a search: each runs as a task of its own.
    service.route(subjects.RETRIEVAL_CHAT, on_chat, queue=subjects.RETRIEVAL_QUEUE, spawn=True)
    service.reply_route(
        subjects.RETRIEVAL_MANAGE, on_manage, "knowledge request", queue=subjects.RETRIEVAL_QUEUE
    )
    service.reply_route(subjects.RETRIEVAL_TOOL, on_tool, "knowledge search", queue=subjects.RETRIEVAL_QUEUE)
    service.reply_route(subjects.RETRIEVAL_EMBED, on_embed, "embedding", queue=subjects.RETRIEVAL_QUEUE)
    service.reply_route(
        subjects.RETRIEVAL_CACHE_HIT, on_cache_hit, "cache hit billing", queue=subjects.RETRIEVAL_QUEUE
    )
    # Every replica hears every cancel, until the very end (a grounding may still be running).
    service.route(subjects.CHAT_CANCEL, on_cancel, takes_work=False)
    return service, retrieval


def _on_config_change(
    service: Service,
    retrieval: Retrieval,
    kind: str,
    entry_id: str,
    old: BaseModel | None,
    new: BaseModel | None,
) -> None:
    """A collection deleted from the config store: its documents go too (idempotent across replicas)."""
    knowledge = retrieval.knowledge
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
