"""The edge's side of the config store: a watched in-memory view plus writes with read-your-writes.

A write goes to the KV bucket and is applied to the local view at once, so the next request to this
replica sees it; other replicas see it through their watchers within milliseconds.

Gateways have two rules the bucket cannot enforce by itself, kept by `put_gateway`:

* A name is unique per tenant (chats and the management API find gateways by name). The check and
  the write happen under one lock, so concurrent writes through one edge cannot both pass it. Two
  edges can still race: each checks its own view, and a write made on the other edge in the few
  milliseconds before its watcher delivers it is not seen. Closing that would need a claim per
  name in the bucket; until then, `gateways.find` answers 409 for a name two gateways share,
  rather than picking one.
* `version` counts a gateway's writes: 1 when created, +1 per update. The KV revision (global to
  the bucket) stays what updates are checked against: an update names the revision it read, and
  fails with 409 if the entry was written since, so no version number is ever given twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Annotated

from fastapi import Depends, Request
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
        self._gateway_writes = asyncio.Lock()  # a gateway name's check and write, as one step

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

    def gateways_named(self, tenant: str, name: str) -> list[Gateway]:
        return [g for g in self.view.gateways.values() if g.tenant == tenant and g.name == name]

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

    async def put_gateway(
        self, gateway: Gateway, replaces: Gateway | None = None, revision: int = 0
    ) -> Gateway:
        """Write a new gateway (`replaces` None) or the next version of `replaces`, which was read
        at KV `revision`; 409 if its name is taken in its tenant, or the entry moved since."""
        async with self._gateway_writes:
            taken = [g for g in self.gateways_named(gateway.tenant, gateway.name) if g.id != gateway.id]
            if taken:
                other = taken[0]
                raise errors.Conflict(
                    f"A gateway named '{gateway.name}' already exists in tenant '{gateway.tenant}': "
                    f"{other.slug} (id {other.id}). Gateway names are unique per tenant.",
                    param="name",
                )
            version = 1 if replaces is None else replaces.version + 1
            stored = gateway.model_copy(update={"version": version})
            # An update read without a revision (never seen by the watcher) is written unconditionally.
            expect = 0 if replaces is None else (revision or None)
            await self.put("gateway", stored, expect_revision=expect)
            return stored

    async def delete(self, kind: Kind, entry_id: str) -> None:
        await self.writer.delete(kind, entry_id)
        self.view.table(kind).pop(entry_id, None)
        self.view.revisions.pop((kind, entry_id), None)
        self._changed(kind)

    def _changed(self, kind: str) -> None:
        for listener in self.listeners:
            listener(kind)


async def managed_config(request: Request) -> ManagedConfig:
    """The app's `ManagedConfig` (`create_app` puts it on `app.state`)."""
    config: ManagedConfig = request.app.state.config
    return config


Config = Annotated[ManagedConfig, Depends(managed_config)]
