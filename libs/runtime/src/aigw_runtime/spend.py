"""Spend accounts in NATS KV: reserve, settle and release with compare-and-set, cluster-wide.

Why KV with compare-and-set: every worker and edge replica already talks to NATS, so the counters
add no server; a write names the revision it read (`kv.update(key, value, last=revision)`) and the
server refuses it if anyone wrote meanwhile, so two replicas can never both take the last cent. The
loser reads the account again and retries.

What keeps it cheap:
* a replica **mirrors** the bucket (a KV watch): it knows without a round trip which accounts exist
  (a request touching no limited account costs nothing) and holds each one's latest revision, so
  a write usually succeeds the first time;
* **group commit**: the changes a replica has pending for one account are applied together, in one
  write, so a burst of concurrent requests on one tenant costs a few writes, not one each, and
  conflicts happen only between replicas, never inside one.

The arithmetic on one document is `aigw_contracts.spend.Account`; this module only moves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from aigw_contracts import streams
from aigw_contracts.spend import (
    SPEND_BUCKET,
    SPEND_HISTORY,
    Account,
    Period,
    Scope,
    Shortfall,
    spend_key,
)

log = logging.getLogger("aigw.spend")

T = TypeVar("T")
Change = Callable[[Account, float], Any]  # mutates the account (or raises); returns a result

MAX_ATTEMPTS = 50  # compare-and-set retries of one write before giving up (only under heavy contention)


async def open_spend_bucket(js: JetStreamContext) -> KeyValue:
    """The spend bucket, created on first use by whichever replica comes first."""
    with contextlib.suppress(BucketNotFoundError):
        return await js.key_value(SPEND_BUCKET)
    with contextlib.suppress(Exception):  # another replica created it at the same moment
        return await js.create_key_value(
            KeyValueConfig(bucket=SPEND_BUCKET, history=SPEND_HISTORY, storage=StorageType.FILE)
        )
    return await js.key_value(SPEND_BUCKET)


async def ensure_spend_stream(js: JetStreamContext) -> None:
    """Create the stream of credits and alerts if it is missing (never changes an existing one)."""
    with contextlib.suppress(NotFoundError):
        await js.stream_info(streams.SPEND_STREAM)
        return
    try:
        await js.add_stream(
            StreamConfig(
                name=streams.SPEND_STREAM,
                subjects=list(streams.SPEND_SUBJECTS),
                storage=StorageType.FILE,
                discard=DiscardPolicy.NEW,
                max_age=streams.SPEND_MAX_AGE_S,
            )
        )
    except BadRequestError as exc:
        if exc.err_code != 10058:  # JSStreamNameExistErr: another replica was first
            raise


async def publish_spend_event(js: JetStreamContext, subject: str, data: bytes, msg_id: str) -> bool:
    """Publish a credit or an alert to the spend stream (deduplicated by `msg_id`); False if it
    could not be stored (logged: an alert is worth a retry, never a failed request)."""
    try:
        await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id}, timeout=2.0)
        return True
    except (NatsError, TimeoutError) as err:
        log.warning("spend event not stored", extra={"subject": subject, "error": repr(err)})
        return False


@dataclass(frozen=True, slots=True)
class AccountRef:
    scope: Scope
    id: str

    @property
    def key(self) -> str:
        return spend_key(self.scope, self.id)


@dataclass(slots=True)
class _Pending:
    change: Change
    done: asyncio.Future[Any]


class SpendAccounts:
    """Every spend account, mirrored, and the writes on them (reserve, settle, release, manage)."""

    def __init__(self, kv: KeyValue, remember: float = 300.0) -> None:
        self.kv = kv
        self.remember = remember  # how long a settled hold id is kept to drop duplicates
        self.docs: dict[str, tuple[Account, int]] = {}  # key -> (account, revision)
        self._pending: dict[str, list[_Pending]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}  # key -> the task writing it
        self._watch: Any = None
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._rewatching: asyncio.Task[None] | None = None
        self.writes = 0  # KV writes made, conflicts included (bench and tests read them)
        self.conflicts = 0

    @classmethod
    async def open(cls, js: JetStreamContext, remember: float = 300.0) -> SpendAccounts:
        return cls(await open_spend_bucket(js), remember)

    # ------------------------------------------------------------------ mirror
    async def watch(self, sync_timeout: float = 10.0) -> None:
        """Mirror the bucket (every account, then each change) until `stop`."""
        await self._close_watch()
        self._synced.clear()
        self._watch = await self.kv.watchall()
        self._task = asyncio.create_task(self._follow(self._watch), name="aigw-spend-watch")
        await asyncio.wait_for(self._synced.wait(), sync_timeout)

    async def reconnected(self) -> None:
        """After a reconnect the watch may be gone: open it again (in the background)."""
        if self._task is None:
            return
        self._rewatching = asyncio.create_task(self._rewatch(), name="aigw-spend-rewatch")

    async def _rewatch(self) -> None:
        delay = 0.05
        for _ in range(100):
            try:
                await self.watch()
                return
            except Exception as err:
                log.warning("spend watch not re-established yet", extra={"error": repr(err)})
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
            try:
                if entry.operation in (None, "PUT") and entry.value:
                    self._learn(entry.key, Account.model_validate_json(entry.value), entry.revision or 0)
                else:
                    self.docs.pop(entry.key, None)
            except Exception:
                log.exception("ignored an unreadable spend account", extra={"key": entry.key})

    def _learn(self, key: str, account: Account, revision: int) -> None:
        known = self.docs.get(key)
        if known is None or known[1] < revision:
            self.docs[key] = (account, revision)

    def limited(self, refs: list[AccountRef]) -> list[AccountRef]:
        """Those of `refs` that exist and have a limit (per the mirror: no round trip)."""
        out = []
        for ref in refs:
            known = self.docs.get(ref.key)
            if known is not None and known[0].limited():
                out.append(ref)
        return out

    def existing(self, refs: list[AccountRef]) -> list[AccountRef]:
        return [ref for ref in refs if ref.key in self.docs]

    # ------------------------------------------------------------------ writes
    async def read(self, ref: AccountRef) -> tuple[Account, int]:
        """The account as stored now (an empty one at revision 0 when it does not exist)."""
        try:
            entry = await self.kv.get(ref.key)
        except KeyNotFoundError:
            return Account(), 0
        if not entry.value:
            return Account(), entry.revision or 0
        account = Account.model_validate_json(entry.value)
        self._learn(ref.key, account, entry.revision or 0)
        return account, entry.revision or 0

    async def change(self, ref: AccountRef, change: Change) -> Any:
        """Apply `change` to the account in one compare-and-set write (with whatever else this
        replica has pending for it), and return its result (or raise what it raised)."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(ref.key, []).append(_Pending(change, done))
        if ref.key not in self._flushers:
            self._flushers[ref.key] = asyncio.create_task(self._flush(ref), name="aigw-spend-flush")
        return await done

    async def _flush(self, ref: AccountRef) -> None:
        key = ref.key
        try:
            while self._pending.get(key):
                batch = self._pending.pop(key)
                try:
                    await self._write(ref, batch)
                except BaseException as err:
                    for item in batch:
                        if not item.done.done():
                            item.done.set_exception(
                                err if isinstance(err, Exception) else RuntimeError("spend write stopped")
                            )
                    if not isinstance(err, Exception):
                        raise
        finally:
            del self._flushers[key]
            # Changes that arrived while the loop above was ending (or after a cancellation).
            for item in self._pending.pop(key, []):
                if not item.done.done():
                    self._pending.setdefault(key, []).append(item)
            if self._pending.get(key):
                self._flushers[key] = asyncio.create_task(self._flush(ref), name="aigw-spend-flush")

    async def _write(self, ref: AccountRef, batch: list[_Pending]) -> None:
        known = self.docs.get(ref.key)
        account_json, revision = (known[0].model_dump_json(), known[1]) if known else (None, 0)
        for _ in range(MAX_ATTEMPTS):
            now = time.time()
            account = Account.model_validate_json(account_json) if account_json else Account()
            results: list[tuple[bool, Any]] = []
            for item in batch:
                before = account.model_copy(deep=True)
                try:
                    results.append((True, item.change(account, now)))
                except Exception as err:  # refused: this change leaves the account as it was
                    account = before
                    results.append((False, err))
            value = account.model_dump_json().encode()
            self.writes += 1
            try:
                new_revision = await self.kv.update(ref.key, value, last=revision)
            except KeyWrongLastSequenceError:
                self.conflicts += 1
                fresh, revision = await self.read(ref)
                account_json = fresh.model_dump_json() if revision else None
                continue
            self._learn(ref.key, account, new_revision)
            for item, (ok, result) in zip(batch, results, strict=True):
                if item.done.done():
                    continue
                if ok:
                    item.done.set_result(result)
                else:
                    item.done.set_exception(result)
            return
        raise RuntimeError(f"spend account {ref.key}: too many concurrent writers")

    # ------------------------------------------------------------------ request path
    async def reserve(self, refs: list[AccountRef], hold_id: str, amount: Decimal, expires: float) -> None:
        """Hold `amount` on every account of `refs`, or on none (raises `Shortfall`)."""

        def hold(account: Account, now: float) -> None:
            account.hold(hold_id, amount, expires, now)

        results = await asyncio.gather(*(self.change(ref, hold) for ref in refs), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        held = [ref for ref, r in zip(refs, results, strict=True) if not isinstance(r, BaseException)]
        if held:
            await self.release(held, hold_id)
        shortfalls = [r for r in failed if isinstance(r, Shortfall)]
        raise shortfalls[0] if shortfalls else failed[0]

    async def release(self, refs: list[AccountRef], hold_id: str) -> None:
        def release(account: Account, now: float) -> None:
            account.release(hold_id, now)

        await asyncio.gather(*(self.change(ref, release) for ref in refs))

    async def settle(
        self, refs: list[AccountRef], hold_id: str, amount: Decimal
    ) -> list[tuple[AccountRef, Period, int, Account]]:
        """Count `amount` on every account of `refs` once, releasing its hold; the budget
        thresholds this crossed, per account (to publish as alerts)."""
        remember = self.remember

        def settle(account: Account, now: float) -> list[tuple[Period, int, Account]]:
            if not account.settle(hold_id, amount, now, remember):
                return []
            crossed = account.crossed(now)
            return [(period, threshold, account) for period, threshold in crossed]

        results = await asyncio.gather(*(self.change(ref, settle) for ref in refs))
        return [
            (ref, period, t, acc)
            for ref, crossed in zip(refs, results, strict=True)
            for period, t, acc in crossed
        ]
