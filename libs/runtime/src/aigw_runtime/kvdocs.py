"""Documents in a NATS KV bucket, changed by compare-and-set, in groups: what cluster-wide counters
(spend accounts, rate limits) are built on.

Why KV with compare-and-set: every replica already talks to NATS, so shared counters add no server;
a write names the revision it read (`kv.update(key, value, last=revision)`) and the server refuses
it if anyone wrote meanwhile, so two replicas can never both take the last unit. The loser reads
the document again and applies its change to what is there now.

What keeps it cheap:
* **group commit**: the changes a replica has pending for one document are applied together, in
  one write, so a burst of concurrent requests on one tenant costs a few writes, not one each, and
  conflicts happen only between replicas, never inside one;
* the revision of the replica's own last write (or of the mirror, `watch`) is tried first, so a
  write usually needs no read;
* optionally, a **mirror** (a KV watch) of the whole bucket: a replica then knows without a round
  trip which documents exist (spend accounts: a request touching none costs nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel

log = logging.getLogger("aigw.kvdocs")

M = TypeVar("M", bound=BaseModel)

MAX_ATTEMPTS = 50  # compare-and-set retries of one write before giving up (only under heavy contention)


@dataclass(slots=True)
class _Pending:
    change: Callable[[Any, float], Any]
    done: asyncio.Future[Any]


async def open_kv(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """A bucket, created on first use (as `config` says) by whichever replica comes first."""
    with contextlib.suppress(BucketNotFoundError):
        return await js.key_value(config.bucket)
    with contextlib.suppress(Exception):  # another replica created it at the same moment
        return await js.create_key_value(config)
    return await js.key_value(config.bucket)


class KvDocs(Generic[M]):
    """The documents of one bucket (each a `model`), written by compare-and-set in groups."""

    def __init__(self, kv: KeyValue, model: type[M]) -> None:
        self.kv = kv
        self.model = model
        self.docs: dict[str, tuple[M, int]] = {}  # key -> (document, revision), latest known
        self._pending: dict[str, list[_Pending]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}  # key -> the task writing it
        self._watch: Any = None
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._rewatching: asyncio.Task[None] | None = None
        self.writes = 0  # KV writes made, conflicts included (bench and tests read them)
        self.conflicts = 0

    # ------------------------------------------------------------------ mirror
    async def watch(self, sync_timeout: float = 10.0) -> None:
        """Mirror the bucket (every document, then each change) until `stop`."""
        await self._close_watch()
        self._synced.clear()
        self._watch = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watch), name="aigw-kvdocs-watch")
        await asyncio.wait_for(self._synced.wait(), sync_timeout)

    async def reconnected(self) -> None:
        """After a reconnect the watch may be gone: open it again (in the background)."""
        if self._task is None:
            return
        self._rewatching = asyncio.create_task(self._rewatch(), name="aigw-kvdocs-rewatch")

    async def _rewatch(self) -> None:
        delay = 0.05
        for _ in range(100):
            try:
                await self.watch()
                return
            except Exception as err:
                log.warning("kv watch not re-established yet", extra={"error": repr(err)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def stop(self) -> None:
        await self._close_watch()

    async def _close_watch(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watch, self._watch = self._watch, None
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch.stop()

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                self._synced.set()
                continue
            known = self.docs.get(entry.key)
            if known is not None and known[1] >= (entry.revision or 0):
                continue  # the echo of this replica's own write: known already, not parsed again
            try:
                if entry.operation in (None, "PUT") and entry.value:
                    self._learn(entry.key, self.model.model_validate_json(entry.value), entry.revision or 0)
                else:
                    self.docs.pop(entry.key, None)
            except Exception:
                log.exception("ignored an unreadable document", extra={"key": entry.key})

    def _learn(self, key: str, doc: M, revision: int) -> None:
        known = self.docs.get(key)
        if known is None or known[1] < revision:
            self.docs[key] = (doc, revision)

    # ------------------------------------------------------------------ reads and writes
    async def read_key(self, key: str) -> tuple[M, int]:
        """The document as stored now (an empty one at revision 0 when it does not exist)."""
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return self.model(), 0
        if not entry.value:
            return self.model(), entry.revision or 0
        doc = self.model.model_validate_json(entry.value)
        self._learn(key, doc, entry.revision or 0)
        return doc, entry.revision or 0

    async def change_key(self, key: str, change: Callable[[M, float], Any]) -> Any:
        """Apply `change(document, now)` in one compare-and-set write (with whatever else this
        replica has pending for the document), and return its result or raise what it raised. A
        change that raises must do so before it changes anything (check, then change): the others
        of its group are written with the document as it left it."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(_Pending(change, done))
        if key not in self._flushers:
            self._flushers[key] = asyncio.create_task(self._flush(key), name="aigw-kvdocs-flush")
        return await done

    async def _flush(self, key: str) -> None:
        try:
            while self._pending.get(key):
                batch = self._pending.pop(key)
                try:
                    await self._write(key, batch)
                except Exception as err:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(err)
                except BaseException:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(RuntimeError("the write was stopped"))
                    raise
        finally:
            del self._flushers[key]

    async def _write(self, key: str, batch: list[_Pending]) -> None:
        known = self.docs.get(key)
        doc_json, revision = (known[0].model_dump_json(), known[1]) if known else (None, 0)
        for _ in range(MAX_ATTEMPTS):
            now = time.time()
            doc = self.model.model_validate_json(doc_json) if doc_json else self.model()
            results: list[tuple[bool, Any]] = []
            for item in batch:
                try:
                    results.append((True, item.change(doc, now)))
                except Exception as err:  # refused (a change checks before it changes anything)
                    results.append((False, err))
            self.writes += 1
            try:
                new_revision = await self.kv.update(key, doc.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                self.conflicts += 1
                fresh, revision = await self.read_key(key)
                doc_json = fresh.model_dump_json() if revision else None
                continue
            self._learn(key, doc, new_revision)
            for item, (ok, result) in zip(batch, results, strict=True):
                if item.done.done():
                    continue
                if ok:
                    item.done.set_result(result)
                else:
                    item.done.set_exception(result)
            return
        raise RuntimeError(f"document {key}: too many concurrent writers")
