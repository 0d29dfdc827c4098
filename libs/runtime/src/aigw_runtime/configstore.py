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

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE, KeyValue
from pydantic import BaseModel

from aigw_contracts.config import ApiKey, ConfigSnapshot, Gateway, Tenant, Upstream
from aigw_contracts.knowledge import Collection

log = logging.getLogger("aigw.configstore")

BUCKET = "aigw_config"
STREAM = f"KV_{BUCKET}"  # the JetStream stream behind the bucket
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
    """Loads the bucket, then applies every change as it happens and tells listeners.

    A NATS restart loses the watch: the KV watch is an ephemeral, in-memory consumer, and nats-py
    only notices it is gone after two missed idle heartbeats (5 s each), so changes made meanwhile
    arrived 7–17 s late. Hook `reconnected` to the connection's reconnect callback
    (`aigw_runtime.bus.Bus.on_reconnect`): it opens a new consumer at the revision after the last
    one applied, so every change made while disconnected or since (deletions too) arrives at once.
    """

    def __init__(self, js: JetStreamContext, view: ConfigView | None = None) -> None:
        self._js = js
        self.view = view if view is not None else ConfigView()
        self.listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._watch: Any = None  # the KV watch (initial load, then live) or a catch-up subscription
        self._last = 0  # stream sequence of the last entry applied, deletions included
        self._created: Any = None  # when the bucket's stream was created: tells a recreated one apart
        self._resuming: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self, sync_timeout: float = 10.0) -> ConfigView:
        await self._load()
        await asyncio.wait_for(self._synced.wait(), sync_timeout)
        return self.view

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._resuming, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close_watch()

    async def reconnected(self) -> None:
        """Re-open the watch after the connection came back; returns at once (the catch-up runs in
        the background, retrying while JetStream on a restarted server is not ready yet)."""
        if self._stopped or not self._synced.is_set():
            return
        if self._resuming is not None:
            self._resuming.cancel()
        self._resuming = asyncio.create_task(self._resume(), name="aigw-config-resume")

    async def _resume(self) -> None:
        delay = 0.05
        while not self._stopped:
            try:
                await self._close_watch()
                await open_bucket(self._js)  # a server that lost its data has none: start it empty
                info = await self._js.stream_info(STREAM)
                if info.created != self._created or info.state.last_seq < self._last:
                    # Not the stream we were following (the server lost its data): load it whole.
                    log.warning("config store was recreated; reloading it", extra={"last": self._last})
                    await self._load(reload=True)
                else:
                    self._watch = await self._js.subscribe(
                        f"$KV.{BUCKET}.>",
                        stream=STREAM,
                        cb=self._on_message,
                        ordered_consumer=True,
                        inactive_threshold=300,  # as the KV watch: the server drops it if we vanish
                        config=ConsumerConfig(
                            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._last + 1
                        ),
                    )
                log.info("config watch re-established", extra={"after_revision": self._last})
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:  # JetStream not ready yet, connection lost again…
                log.warning("config watch not re-established yet", extra={"error": repr(err)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _load(self, reload: bool = False) -> None:
        """Watch the whole bucket: every key's current entry, then each change as it happens.

        On a reload, entries that are no longer in the store are removed once the load is done."""
        bucket = await open_bucket(self._js)
        self._created = (await self._js.stream_info(STREAM)).created
        self._watch = await bucket.watchall()
        if reload:
            self._last = 0
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._run(self._watch, reload), name="aigw-config-watch")

    async def _close_watch(self) -> None:
        watch, self._watch = self._watch, None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if watch is not None:
            with contextlib.suppress(Exception):  # the old connection's subscription may be gone
                await (watch.stop() if isinstance(watch, KeyValue.KeyWatcher) else watch.unsubscribe())

    async def _run(self, watcher: Any, reload: bool) -> None:
        seen: set[tuple[str, str]] | None = set() if reload else None
        async for entry in watcher:
            if entry is None:  # end of the initial values
                if seen is not None:
                    self._drop_unseen(seen)
                    seen = None
                self._synced.set()
                continue
            self._last = max(self._last, entry.revision or 0)
            try:
                applied = self._apply(entry)
            except Exception:
                log.exception("ignored an unreadable config entry", extra={"key": entry.key})
                continue
            if seen is not None and applied is not None:
                seen.add(applied)

    async def _on_message(self, msg: Msg) -> None:
        """One message of the catch-up subscription, read as the KV watch reads it."""
        revision = msg.metadata.sequence.stream
        if revision <= self._last:  # already applied
            return
        self._last = revision
        op = msg.headers.get(KV_OP) if msg.headers else None
        reason = msg.headers.get(KV_MARKER_REASON) if msg.headers else None
        if op is None and reason is not None:  # a server-placed marker (2.11+)
            op = {"MaxAge": KV_PURGE, "Purge": KV_PURGE, "Remove": KV_DEL}.get(reason)
            if op is None:
                return
        key = msg.subject[len(f"$KV.{BUCKET}.") :]
        entry = KeyValue.Entry(BUCKET, key, msg.data, revision, None, None, op)
        try:
            self._apply(entry)
        except Exception:
            log.exception("ignored an unreadable config entry", extra={"key": key})

    def _drop_unseen(self, seen: set[tuple[str, str]]) -> None:
        for kind in MODELS:
            table = self.view.table(kind)
            for entry_id in [e for e in table if (kind, e) not in seen]:
                old = table.pop(entry_id)
                self.view.revisions.pop((kind, entry_id), None)
                for listener in self.listeners:
                    listener(kind, entry_id, old, None)

    def _apply(self, entry: Any) -> tuple[str, str] | None:
        kind, _, encoded = entry.key.partition(".")
        if kind not in MODELS:
            return None
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
        return kind, entry_id


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
