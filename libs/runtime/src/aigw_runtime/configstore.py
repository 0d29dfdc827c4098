"""Where configuration lives: one JetStream key-value bucket, watched by every service that needs it.

Why a KV bucket: NATS is already the system's bus, so this adds no server; every replica keeps the
whole configuration in memory and gets each change pushed within milliseconds (no database on the
request path, no restart); the bucket keeps each entry's history, which gives versions for free.

Layout: key `<kind>.<id>` with the id base64url-encoded (ids such as `@openai/gpt-5-mini` hold
characters KV keys may not), value the entry's JSON. Writers use optimistic concurrency (the revision
they read), so two admins can't silently overwrite each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from aigw_contracts.config import ApiKey, ConfigSnapshot, Gateway, Tenant, Upstream
from aigw_contracts.knowledge import Collection

log = logging.getLogger("aigw.configstore")

BUCKET = "aigw_config"
HISTORY = 16  # versions kept per entry

Kind = Literal["tenant", "key", "upstream", "gateway", "collection"]
MODELS: dict[str, type[BaseModel]] = {
    "tenant": Tenant,
    "key": ApiKey,
    "upstream": Upstream,
    "gateway": Gateway,
    "collection": Collection,
}
T = TypeVar("T", bound=BaseModel)


def encode_id(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_id(value: str) -> str:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()


def kv_key(kind: Kind, entry_id: str) -> str:
    return f"{kind}.{encode_id(entry_id)}"


async def open_bucket(js: JetStreamContext, wait: float = 60.0) -> KeyValue:
    """The config bucket, created on first use (services start fine on an empty store).

    Only the edge and `admin` may create it on an authenticated bus (`natsauth`): a router or
    retrieval replica that starts first waits up to `wait` seconds for the bucket to appear
    instead of failing its start (in compose or Kubernetes every service starts at once)."""
    deadline = time.monotonic() + wait
    while True:
        with contextlib.suppress(BucketNotFoundError):
            return await js.key_value(BUCKET)
        # Refused (not ours to create: the server refuses, the request times out) or created by
        # another replica at the same moment: either way, look again.
        with contextlib.suppress(Exception):
            return await js.create_key_value(
                KeyValueConfig(bucket=BUCKET, history=HISTORY, storage=StorageType.FILE)
            )
        with contextlib.suppress(BucketNotFoundError):
            return await js.key_value(BUCKET)
        if time.monotonic() >= deadline:
            raise BucketNotFoundError(
                description=f"the config bucket {BUCKET} does not exist and this NATS user may not create "
                "it: start an edge or run `aigw bootstrap` first"
            )
        log.warning(
            "waiting for the config bucket (the edge or `aigw bootstrap` creates it)",
            extra={"bucket": BUCKET},
        )
        await asyncio.sleep(1.0)


@dataclass
class ConfigView:
    """The whole configuration in memory, kept current by a `ConfigWatcher`."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: dict[str, ApiKey] = field(default_factory=dict)
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    gateways: dict[str, Gateway] = field(default_factory=dict)
    collections: dict[str, Collection] = field(default_factory=dict)
    revisions: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, id) -> KV revision

    def table(self, kind: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = {
            "tenant": self.tenants,
            "key": self.keys,
            "upstream": self.upstreams,
            "gateway": self.gateways,
            "collection": self.collections,
        }
        return tables[kind]

    def snapshot(self) -> ConfigSnapshot:
        return ConfigSnapshot(
            tenants=list(self.tenants.values()),
            keys=list(self.keys.values()),
            upstreams=list(self.upstreams.values()),
            gateways=list(self.gateways.values()),
        )


Listener = Callable[[str, str, BaseModel | None, BaseModel | None], None]  # kind, id, old, new


class ConfigWatcher:
    """Loads the bucket, then applies every change as it happens and tells listeners."""

    def __init__(self, js: JetStreamContext, view: ConfigView | None = None) -> None:
        self._js = js
        self.view = view if view is not None else ConfigView()
        self.listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    async def start(self, sync_timeout: float = 10.0) -> ConfigView:
        bucket = await open_bucket(self._js)
        watcher = await bucket.watchall()
        self._task = asyncio.create_task(self._run(watcher))
        await asyncio.wait_for(self._synced.wait(), sync_timeout)
        return self.view

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._synced.set()
                continue
            try:
                self._apply(entry)
            except Exception:
                log.exception("ignored an unreadable config entry", extra={"key": entry.key})

    def _apply(self, entry: Any) -> None:
        kind, _, encoded = entry.key.partition(".")
        if kind not in MODELS:
            return
        entry_id = decode_id(encoded)
        table = self.view.table(kind)
        old = table.get(entry_id)
        new: BaseModel | None = None
        if entry.operation in (None, "PUT") and entry.value:
            new = MODELS[kind].model_validate_json(entry.value)
            table[entry_id] = new
            self.view.revisions[(kind, entry_id)] = entry.revision or 0
        else:
            table.pop(entry_id, None)
            self.view.revisions.pop((kind, entry_id), None)
        for listener in self.listeners:
            listener(kind, entry_id, old, new)


class ConfigWriter:
    """Writes entries; `expect_revision` makes an update fail if someone changed the entry meanwhile."""

    def __init__(self, bucket: KeyValue) -> None:
        self.bucket = bucket

    @classmethod
    async def open(cls, js: JetStreamContext) -> ConfigWriter:
        return cls(await open_bucket(js))

    async def get(self, kind: Kind, entry_id: str) -> tuple[BaseModel, int] | None:
        try:
            entry = await self.bucket.get(kv_key(kind, entry_id))
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.revision is None:
            return None
        return MODELS[kind].model_validate_json(entry.value), entry.revision

    async def put(self, kind: Kind, entry: BaseModel, expect_revision: int | None = None) -> int:
        key = kv_key(kind, entry.id)  # type: ignore[attr-defined]
        value = entry.model_dump_json().encode()
        if expect_revision is None:
            return await self.bucket.put(key, value)
        if expect_revision == 0:
            return await self.bucket.create(key, value)
        return await self.bucket.update(key, value, last=expect_revision)

    async def delete(self, kind: Kind, entry_id: str) -> None:
        await self.bucket.delete(kv_key(kind, entry_id))

    async def history(self, kind: Kind, entry_id: str) -> list[tuple[int, BaseModel | None]]:
        try:
            entries = await self.bucket.history(kv_key(kind, entry_id))
        except KeyNotFoundError:
            return []
        return [
            (e.revision or 0, MODELS[kind].model_validate_json(e.value) if e.value else None) for e in entries
        ]

    async def load(self, snapshot: ConfigSnapshot) -> None:
        """Write every entry of a snapshot (import; `make run` seeding)."""
        for kind, items in (
            ("tenant", snapshot.tenants),
            ("upstream", snapshot.upstreams),
            ("gateway", snapshot.gateways),
            ("key", snapshot.keys),
        ):
            for item in items:
                await self.put(kind, item)  # type: ignore[arg-type]
