"""What the retrieval service holds: one store, one embedder, the collections it was told about.

`Knowledge` is shared by the management handler (`manage.py`) and the request-path handler
(`grounding.py`). Scopes are (tenant, collection id): the tenant always comes from the message
(the edge took it from the caller's key), and every store call applies it inside the query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from aigw_contracts import UsageEvent, errors
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.knowledge import KNOWLEDGE_UPSTREAM, Collection
from aigw_runtime.configstore import ConfigView
from aigw_runtime.spend import AccountRef, SpendAccounts
from aigw_runtime.usage_publisher import UsagePublisher

from .embed import Embedder
from .embed.cache import CachedEmbedder
from .ingest import Ingestor
from .metering import knowledge_usage
from .search import Searcher
from .settings import RetrievalSettings
from .stores import CollectionExists, KnowledgeStore, Scope

log = logging.getLogger("aigw.retrieval")


class Knowledge:
    def __init__(
        self,
        settings: RetrievalSettings,
        store: KnowledgeStore,
        embedder: Embedder,
        view: ConfigView | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.view = view if view is not None else ConfigView()
        self.spend: SpendAccounts | None = None  # balances and budgets (mirrored), once started
        self._charges: set[asyncio.Task[None]] = set()
        self.ingestor = Ingestor(
            store, embedder, max_chars=settings.chunk_chars, overlap=settings.chunk_overlap
        )
        # Searches go through a cache of query embeddings; ingestion always embeds.
        self.searcher = Searcher(store, CachedEmbedder(embedder, settings.query_cache_size))
        self.usage: UsagePublisher | None = None
        self._created: set[Scope] = set()

    # ------------------------------------------------------------------ collections
    def collection(self, tenant: str, ref: str) -> Collection | None:
        """The tenant's collection with this id (or, for hand-written gateway configs, this name)."""
        found = self.view.collections.get(ref)
        if found is not None:
            return found if found.tenant == tenant else None
        return next((c for c in self.view.collections.values() if c.tenant == tenant and c.name == ref), None)

    def foreign(self, tenant: str, collection_id: str) -> bool:
        """Whether the config store says this collection belongs to someone else (never trust the bus alone)."""
        found = self.view.collections.get(collection_id)
        return found is not None and found.tenant != tenant

    async def writable(self, scope: Scope) -> Scope:
        """The scope, its store collection created on first write (collections are config data;
        the store learns of one when documents first arrive)."""
        if scope not in self._created:
            with contextlib.suppress(CollectionExists):
                await self.store.create_collection(scope, self.embedder.name, self.embedder.dim)
            self._created.add(scope)
        return scope

    async def drop(self, scope: Scope) -> bool:
        self._created.discard(scope)
        return await self.store.delete_collection(scope)

    # ------------------------------------------------------------------ metering
    def lines(self, searches: int, embedding_tokens: int) -> list[GeneratedUsage]:
        return knowledge_usage(
            searches=searches,
            embedding_tokens=embedding_tokens,
            search_price=self.settings.price_knowledge_search,
            embedding_token_price=self.settings.price_knowledge_embedding_token,
        )

    def meter(
        self,
        *,
        request_id: str,
        tenant: str,
        key_id: str,
        lines: list[GeneratedUsage],
        started_at: datetime,
        gateway_id: str | None = None,
        metadata: dict[str, str] | None = None,
        status: Literal["completed", "failed", "cancelled"] = "completed",
    ) -> None:
        """Hand a usage event to the publisher (no I/O here); nothing to bill, nothing sent."""
        if not lines or self.usage is None:
            return
        try:
            event = UsageEvent(
                request_id=request_id,
                source="retrieval",
                tenant=tenant,
                key_id=key_id or "-",
                gateway_id=gateway_id,
                upstream=KNOWLEDGE_UPSTREAM,
                upstream_kind="catalog",
                model=self.embedder.name,
                lines=lines,
                metadata=metadata or {},
                status=status,
                started_at=started_at,
                latency_ms=round((datetime.now(UTC) - started_at).total_seconds() * 1000, 3),
            )
            self.usage.submit(event)
        except Exception:
            log.exception("could not account knowledge usage", extra={"request_id": request_id})

    # ------------------------------------------------------------------ spend control
    def _accounts(self, tenant: str, key_id: str) -> list[AccountRef]:
        if self.spend is None:
            return []
        return self.spend.existing([AccountRef("tenant", tenant, tenant), AccountRef("key", key_id, tenant)])

    def affordable(self, tenant: str, key_id: str) -> None:
        """Refuse (402) a direct search or an ingestion when a balance or budget of its tenant or
        key has nothing left (per the mirror: no round trip). Their cost is counted after
        (`charge`), not held: it is small and known only once the text is embedded."""
        if self.spend is None:
            return
        now = time.time()
        for ref in self._accounts(tenant, key_id):
            known = self.spend.docs.get(ref.key)
            account = known[0].accounts.get(ref.name) if known is not None else None
            tightest = account.tightest(now) if account is not None else None
            if tightest is not None and tightest[1] <= 0:
                raise errors.InsufficientQuota(
                    f"The {tightest[0]} of this {ref.scope} has nothing left. Add credit or raise the budget."
                )

    def charge(self, tenant: str, key_id: str, lines: list[GeneratedUsage]) -> None:
        """Count what a direct search or an ingestion billed against its tenant's and key's
        balances and budgets (in the background: the answer does not wait)."""
        amount = sum((line.amount for line in lines), Decimal(0))
        refs = self._accounts(tenant, key_id)
        if not refs or amount <= 0 or self.spend is None:
            return
        task = asyncio.create_task(self._charge(self.spend, refs, amount))
        self._charges.add(task)
        task.add_done_callback(self._charges.discard)

    @staticmethod
    async def _charge(spend: SpendAccounts, refs: list[AccountRef], amount: Decimal) -> None:
        try:
            await spend.charge(refs, amount)
        except Exception as err:  # ClickHouse has the lines; the counters miss them
            log.warning("knowledge spend not counted", extra={"error": repr(err)})

    async def close(self) -> None:
        if self._charges:
            await asyncio.wait(list(self._charges), timeout=5.0)
        if self.spend is not None:
            await self.spend.stop()
        await self.store.close()
        await self.embedder.aclose()
