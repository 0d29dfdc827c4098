"""The edge's side of the config store: a watched in-memory view plus writes with read-your-writes.

A write goes to the KV bucket and is applied to the local view at once, so the next request to this
replica sees it; other replicas see it through their watchers within milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel

from aigw_contracts import Gateway, Upstream, errors
from aigw_contracts.catalog import builtin_catalog
from aigw_contracts.knowledge import Collection
from aigw_runtime.configstore import ConfigView, ConfigWriter, Kind

_CATALOG = {u.id: u for u in builtin_catalog()}


class ManagedConfig:
    def __init__(self, view: ConfigView | None = None, writer: ConfigWriter | None = None) -> None:
        self.view = view if view is not None else ConfigView()
        self._writer = writer
        self.listeners: list[Callable[[str], None]] = []  # called with the kind after a local write

    @property
    def writer(self) -> ConfigWriter:
        if self._writer is None:
            raise errors.Unavailable("the configuration store is not connected yet")
        return self._writer

    def attach(self, writer: ConfigWriter) -> None:
        self._writer = writer

    # ------------------------------------------------------------------ reads
    def upstream(self, upstream_id: str) -> Upstream | None:
        return self.view.upstreams.get(upstream_id) or _CATALOG.get(upstream_id)

    def upstreams(self) -> Iterable[Upstream]:
        merged = {**_CATALOG, **self.view.upstreams}
        return merged.values()

    def gateways_using(self, upstream_id: str) -> list[Gateway]:
        return [
            g
            for g in self.view.gateways.values()
            if g.upstream == upstream_id
            or upstream_id in g.fallbacks
            or (g.routing is not None and upstream_id in g.routing.upstream_ids)
        ]

    def collection(self, tenant: str, ref: str) -> Collection | None:
        """A tenant's collection by id or name (None for another tenant's, as for a missing one)."""
        found = self.view.collections.get(ref)
        if found is None:
            found = next(
                (c for c in self.view.collections.values() if c.tenant == tenant and c.name == ref), None
            )
        return found if found is not None and found.tenant == tenant else None

    def gateways_grounded_on(self, collection_id: str) -> list[Gateway]:
        return [
            g
            for g in self.view.gateways.values()
            if g.knowledge is not None and g.knowledge.collection == collection_id
        ]

    def revision(self, kind: Kind, entry_id: str) -> int:
        return self.view.revisions.get((kind, entry_id), 0)

    # ------------------------------------------------------------------ writes
    async def put(self, kind: Kind, entry: BaseModel, expect_revision: int | None = None) -> int:
        try:
            revision = await self.writer.put(kind, entry, expect_revision)
        except Exception as exc:  # nats KV raises its own types for a stale revision
            if "wrong last sequence" in str(exc).lower() or "key exists" in str(exc).lower():
                raise errors.Conflict(
                    f"this {kind} was changed by someone else meanwhile; read it again and retry"
                ) from exc
            raise
        entry_id: str = entry.id  # type: ignore[attr-defined]
        self.view.table(kind)[entry_id] = entry
        self.view.revisions[(kind, entry_id)] = revision
        self._changed(kind)
        return revision

    async def delete(self, kind: Kind, entry_id: str) -> None:
        await self.writer.delete(kind, entry_id)
        self.view.table(kind).pop(entry_id, None)
        self.view.revisions.pop((kind, entry_id), None)
        self._changed(kind)

    def _changed(self, kind: str) -> None:
        for listener in self.listeners:
            listener(kind)
