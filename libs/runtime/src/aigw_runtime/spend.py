"""Spend accounts in NATS KV: reserve, settle and release, cluster-wide.

A tenant's accounts (its own, its keys', its gateways') are one document of the spend bucket,
changed by compare-and-set in groups (`kvdocs.KvDocs`: two replicas never both take the last cent). Workers mirror the bucket (a KV
watch), so a request whose tenant, key and gateway have no account costs no round trip at all, and
the revision tried first is usually the current one. The arithmetic on one document is
`aigw_contracts.spend.Account`; this module only moves it.
"""

from __future__ import annotations

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
    TenantSpend,
    account_name,
    spend_key,
)

from .kvdocs import KvDocs, open_kv

log = logging.getLogger("aigw.spend")

Change = Callable[[Account, float], Any]  # mutates the account (or raises); returns a result
Crossed = list[tuple["AccountRef", Period, int, Account]]  # budget thresholds a write crossed


async def open_spend_bucket(js: JetStreamContext) -> KeyValue:
    """The spend bucket, created on first use by whichever replica comes first."""
    return await open_kv(
        js, KeyValueConfig(bucket=SPEND_BUCKET, history=SPEND_HISTORY, storage=StorageType.FILE)
    )


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
    """A tenant's, key's or gateway's account, kept in its tenant's document."""

    scope: Scope
    id: str
    tenant: str

    @property
    def key(self) -> str:
        """The KV key of the tenant's document, which holds this account."""
        return spend_key("tenant", self.tenant)

    @property
    def name(self) -> str:
        return account_name(self.scope, self.id)


class SpendAccounts(KvDocs[TenantSpend]):
    """Every tenant's spend document, mirrored, and the writes on it (reserve, settle, release,
    manage). All the accounts one request touches are in one document, so a request's hold and
    its settlement are one write each, atomic across tenant, key and gateway."""

    def __init__(self, kv: KeyValue) -> None:
        super().__init__(kv, TenantSpend)

    @classmethod
    async def open(cls, js: JetStreamContext) -> SpendAccounts:
        return cls(await open_spend_bucket(js))

    def existing(self, refs: list[AccountRef]) -> list[AccountRef]:
        """Those of `refs` that exist (per the mirror: no round trip)."""
        out = []
        for ref in refs:
            known = self.docs.get(ref.key)
            if known is not None and ref.name in known[0].accounts:
                out.append(ref)
        return out

    async def read(self, ref: AccountRef) -> tuple[Account, int]:
        """The account as stored now (an empty one at revision 0 when it does not exist)."""
        doc, revision = await self.read_key(ref.key)
        account = doc.accounts.get(ref.name)
        return (account, revision) if account is not None else (Account(), 0)

    async def change(self, ref: AccountRef, change: Change) -> Any:
        """Apply `change(account, now)` in one compare-and-set write; its result (or error)."""

        def apply(doc: TenantSpend, now: float) -> Any:
            return change(doc.accounts.setdefault(ref.name, Account()), now)

        return await self.change_key(ref.key, apply)

    # ------------------------------------------------------------------ request path
    async def reserve(self, refs: list[AccountRef], hold_id: str, amount: Decimal, expires: float) -> None:
        """Hold `amount` on every account of `refs` (one tenant's), or on none (raises `Shortfall`)."""

        def hold(doc: TenantSpend, now: float) -> None:
            accounts = [doc.accounts[ref.name] for ref in refs if ref.name in doc.accounts]
            for account in accounts:
                account.check(amount, now)  # every limit first: nothing changes unless all fit
            for account in accounts:
                account.hold(hold_id, amount, expires, now)

        if refs:
            await self.change_key(refs[0].key, hold)

    async def release(self, refs: list[AccountRef], hold_id: str) -> None:
        def release(doc: TenantSpend, now: float) -> None:
            for ref in refs:
                if ref.name in doc.accounts:
                    doc.accounts[ref.name].release(hold_id, now)

        if refs:
            await self.change_key(refs[0].key, release)

    async def charge(self, refs: list[AccountRef], amount: Decimal) -> Crossed:
        """Count `amount` as spent on every account of `refs` without a hold (billed although the
        request was refused); the budget thresholds this crossed."""

        def charge(account: Account, now: float) -> bool:
            account.add_spent(amount, now)
            return True

        return await self._spend(refs, charge)

    async def settle(self, refs: list[AccountRef], hold_id: str, amount: Decimal) -> Crossed:
        """Turn the hold into `amount` spent on every account of `refs`, once; the budget
        thresholds this crossed, per account (to publish as alerts)."""
        return await self._spend(refs, lambda account, now: account.settle(hold_id, amount, now))

    async def _spend(self, refs: list[AccountRef], spend: Callable[[Account, float], bool]) -> Crossed:
        """Apply `spend` to every account of `refs` that exists, in one write; the thresholds
        crossed by those it counted on."""

        def apply(doc: TenantSpend, now: float) -> Crossed:
            out: Crossed = []
            for ref in refs:
                account = doc.accounts.get(ref.name)
                if account is not None and spend(account, now):
                    out.extend((ref, period, t, account) for period, t in account.crossed(now))
            return out

        if not refs:
            return []
        result: Crossed = await self.change_key(refs[0].key, apply)
        return result
