"""Spend accounts in NATS KV: reserve, settle and release, cluster-wide.

Each account is one document of the spend bucket, changed by compare-and-set in groups
(`kvdocs.KvDocs`: two replicas never both take the last cent). Workers mirror the bucket (a KV
watch), so a request whose tenant, key and gateway have no account costs no round trip at all, and
the revision tried first is usually the current one. The arithmetic on one document is
`aigw_contracts.spend.Account`; this module only moves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
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

from .kvdocs import KvDocs

log = logging.getLogger("aigw.spend")

Change = Callable[[Account, float], Any]  # mutates the account (or raises); returns a result


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


class SpendAccounts(KvDocs[Account]):
    """Every spend account, mirrored, and the writes on them (reserve, settle, release, manage)."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, Account)

    @classmethod
    async def open(cls, js: JetStreamContext) -> SpendAccounts:
        return cls(await open_spend_bucket(js))

    def existing(self, refs: list[AccountRef]) -> list[AccountRef]:
        """Those of `refs` that exist (per the mirror: no round trip)."""
        return [ref for ref in refs if ref.key in self.docs]

    async def read(self, ref: AccountRef) -> tuple[Account, int]:
        """The account as stored now (an empty one at revision 0 when it does not exist)."""
        return await self.read_key(ref.key)

    async def change(self, ref: AccountRef, change: Change) -> Any:
        """Apply `change(account, now)` in one compare-and-set write; its result (or error)."""
        return await self.change_key(ref.key, change)

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

        def settle(account: Account, now: float) -> list[tuple[Period, int, Account]]:
            if not account.settle(hold_id, amount, now):
                return []
            crossed = account.crossed(now)
            return [(period, threshold, account) for period, threshold in crossed]

        results = await asyncio.gather(*(self.change(ref, settle) for ref in refs))
        return [
            (ref, period, t, acc)
            for ref, crossed in zip(refs, results, strict=True)
            for period, t, acc in crossed
        ]
