"""Per-replica leases of spend: a request's hold without a write on its path.

`SpendAccounts.reserve` costs one compare-and-set write before every upstream call. A lease takes
that write off the request path without giving up the guarantee that concurrent requests never
overrun a limit:

* A replica (a worker) holds a **slice** of an account on the account itself, as one hold named
  `lease:<owner>`: to every other replica it is spent, exactly like a request's hold. Taking or
  growing a slice is one write, checked against every limit of the account like any hold.
* A request's hold is then taken **locally** from the slices of its accounts (tenant, key,
  gateway), with no round trip, when each has enough left: what is held locally plus what was
  spent from the slice never exceeds the slice. A request that does not fit waits for one write
  that grows the slices (for every request waiting on that document at once), or is refused.
* A settlement turns the request's local hold into spend of the slice; the spend is written to the
  account (moved from the slice to `spent`) by the next write, at most `flush` seconds later, in one
  write for every settlement meanwhile. A local hold is settled once (the second settlement finds
  no hold), so a settlement that arrives twice counts once.
* A slice **expires** like any hold, at the latest expiry of the holds taken from it plus `grace`:
  a replica that dies frees its slices that way, and never later than a request's own hold would
  have been freed plus `grace`. The replica extends its slices in the background before new holds
  need it. A slice unused for `idle` seconds is given back (what was spent, written; the rest,
  released), and so is every slice when the replica stops.

So the sum of every replica's slices and spend never exceeds an account's limits (each slice was
taken by compare-and-set), and every request's spend fits in its slice: no overrun. The price: a
slice left unused on one replica is unavailable to the others until it is given back (a request
may be refused while another replica's slice could have paid it; a slice is at most `share` of what
the account had left), and the spend shown lags the requests by up to `flush` seconds; what is
*reserved* includes the unused part of the slices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal

from aigw_contracts.spend import ZERO, Shortfall, TenantSpend

from .spend import AccountRef, Crossed, SpendAccounts

log = logging.getLogger("aigw.spend.lease")

_Written = tuple[Decimal, float, tuple[str, Decimal] | None]  # slice, its expiry, what stopped it


@dataclass(slots=True)
class _Lease:
    """This replica's slice of one account, and the local holds taken from it."""

    ref: AccountRef
    amount: Decimal = ZERO  # the slice, as held on the account (last write)
    expires: float = 0.0  # the slice's expiry on the account (last write)
    holds: dict[str, tuple[Decimal, float]] = field(default_factory=dict)  # hold id -> (amount, expires)
    spent: Decimal = ZERO  # settled locally, not yet written to the account
    unit: Decimal = ZERO  # the latest hold asked for: slices are sized in these
    extra: Decimal = ZERO  # what the slice had free beyond its holds after the last write
    waiting: Decimal = ZERO  # what requests waiting for a write need from the slice
    waiting_until: float = 0.0  # the latest expiry those requests need
    idle_since: float = field(default_factory=time.monotonic)
    returning: bool = False  # being given back: nothing may be held from it meanwhile
    short: tuple[str, Decimal] | None = None  # the limit that stopped the last write growing it

    def held(self) -> Decimal:
        return sum((amount for amount, _ in self.holds.values()), ZERO)

    def free(self) -> Decimal:
        return self.amount - self.spent - self.held()

    def covers(self, amount: Decimal, expires: float, now: float) -> bool:
        return not self.returning and expires <= self.expires and now < self.expires and self.free() >= amount

    def latest(self) -> float:
        return max((expires for _, expires in self.holds.values()), default=0.0)


@dataclass(slots=True)
class _Snapshot:
    """What a write is based on (local state moves on while it is in flight)."""

    spent: Decimal
    held: Decimal
    waiting: Decimal
    unit: Decimal
    until: float  # the latest expiry the slice must cover
    give_back: bool


class SpendLeases:
    """Holds and settlements of one replica, served from its slices of the accounts
    (`reserve`/`settle`, the same contract as `SpendAccounts.reserve`/`settle`)."""

    def __init__(
        self,
        accounts: SpendAccounts,
        owner: str,
        *,
        grace: float,
        holds: int = 32,
        share: Decimal = Decimal("0.25"),
        idle: float = 1.0,
        flush: float = 0.1,
        on_crossed: Callable[[Crossed], Awaitable[None]] | None = None,
    ) -> None:
        self.accounts = accounts
        self.lease_id = f"lease:{owner}"
        self.grace = grace
        self.holds = holds  # a slice holds this many of the latest hold asked for
        self.share = share  # ... but at most this share of what its account has left
        self.idle = idle
        self.flush = flush
        self.on_crossed = on_crossed
        self._leases: dict[tuple[str, str], _Lease] = {}  # (document key, account name) -> lease
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}  # document key -> next write's
        self._urgent: dict[str, asyncio.Event] = {}
        self._syncers: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ request path
    async def reserve(self, refs: list[AccountRef], hold_id: str, amount: Decimal, expires: float) -> None:
        """Hold `amount` until `expires` on every account of `refs` (one tenant's), or raise
        `Shortfall` (nothing held). Usually no round trip: from this replica's slices."""
        if not refs:
            return
        key = refs[0].key
        written = False  # a refusal needs a write made for this request: no stale verdicts
        for _ in range(8):
            leases = [self._lease(ref) for ref in refs]
            now = time.time()
            lacking = [lease for lease in leases if not lease.covers(amount, expires, now)]
            if not lacking:
                for lease in leases:
                    lease.holds[hold_id] = (amount, expires)
                    lease.unit = amount
                self._refresh_if_low(key, leases, expires)
                return
            if written:
                for lease in lacking:
                    if lease.short is not None:
                        raise Shortfall(lease.short[0], lease.short[1], amount)
            for lease in leases:
                lease.unit = amount
                lease.waiting += amount
                lease.waiting_until = max(lease.waiting_until, expires)
            try:
                await self._sync(key, urgent=True)
            finally:
                for lease in leases:
                    lease.waiting -= amount
            written = True
        raise RuntimeError("spend leases: a hold found no room after repeated writes")

    def settle(self, refs: list[AccountRef], hold_id: str, amount: Decimal) -> bool:
        """Turn the local hold into `amount` spent (written by the next write); False if there is
        no such hold (settled already: a settlement that arrives twice counts once)."""
        found = False
        for ref in refs:
            lease = self._leases.get((ref.key, ref.name))
            if lease is None or lease.holds.pop(hold_id, None) is None:
                continue
            found = True
            lease.spent += amount
            if not lease.holds:
                lease.idle_since = time.monotonic()
        return found

    def charge(self, refs: list[AccountRef], amount: Decimal) -> None:
        """Count `amount` as spent on every account of `refs` without a hold (what was billed
        although the request was refused), with the next write."""
        for ref in refs:
            lease = self._lease(ref)
            lease.spent += amount
            if not lease.holds:
                lease.idle_since = time.monotonic()
        if refs:
            self._kick(refs[0].key)

    async def flushed(self, key: str) -> None:
        """Wait for the next write of the document (what was settled before is in it)."""
        await self._sync(key, urgent=False)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="aigw-spend-leases")

    async def close(self) -> None:
        """Give every slice back (what was spent on it, written)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        keys = {key for key, _ in self._leases}
        for (_, _), lease in self._leases.items():
            lease.idle_since = float("-inf")
        results = await asyncio.gather(
            *(self._sync(key, urgent=True) for key in keys), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a spend slice was not given back; it expires", extra={"error": repr(result)})

    async def _tick(self) -> None:
        """Give back idle slices and write pending spend, in the background."""
        while True:
            await asyncio.sleep(min(self.idle, self.flush * 5) / 2)
            now = time.monotonic()
            due = {
                key
                for (key, _), lease in self._leases.items()
                if lease.spent
                or (not lease.holds and not lease.waiting and now - lease.idle_since >= self.idle)
            }
            for key in due:
                self._kick(key)

    # ------------------------------------------------------------------ writes
    def _lease(self, ref: AccountRef) -> _Lease:
        lease = self._leases.get((ref.key, ref.name))
        if lease is None:
            lease = self._leases[(ref.key, ref.name)] = _Lease(ref)
        return lease

    def _refresh_if_low(self, key: str, leases: list[_Lease], expires: float) -> None:
        """Grow or extend the slices in the background before a request has to wait for it."""
        if any(
            lease.free() < lease.extra / 2 or expires + self.grace / 2 > lease.expires for lease in leases
        ):
            self._kick(key)

    def _kick(self, key: str) -> None:
        if key not in self._syncers:
            self._syncers[key] = asyncio.create_task(self._run(key), name="aigw-spend-lease-sync")

    async def _sync(self, key: str, *, urgent: bool) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(done)
        if urgent:
            self._urgent.setdefault(key, asyncio.Event()).set()
        self._kick(key)
        await done

    async def _run(self, key: str) -> None:
        """The one writer of a document's slices on this replica: a write at a time, each for every
        change pending; settlements alone wait up to `flush` to gather more of them."""
        try:
            first = True
            while first or self._waiters.get(key):
                first = False
                urgent = self._urgent.setdefault(key, asyncio.Event())
                if not urgent.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(urgent.wait(), self.flush)
                urgent.clear()
                waiters = self._waiters.pop(key, [])
                try:
                    crossed = await self._write(key)
                    if crossed and self.on_crossed is not None:
                        await self.on_crossed(crossed)
                except Exception as err:
                    log.warning("spend slices not written", extra={"key": key, "error": repr(err)})
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(err)
                    continue
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            del self._syncers[key]

    async def _write(self, key: str) -> Crossed:
        leases = {name: lease for (k, name), lease in self._leases.items() if k == key}
        mono = time.monotonic()
        snaps: dict[str, _Snapshot] = {}
        for name, lease in leases.items():
            give_back = not lease.holds and not lease.waiting and mono - lease.idle_since >= self.idle
            lease.returning = give_back
            snaps[name] = _Snapshot(
                spent=lease.spent,
                held=lease.held(),
                waiting=lease.waiting,
                unit=lease.unit,
                until=max(lease.latest(), lease.waiting_until),
                give_back=give_back,
            )

        def apply(doc: TenantSpend, now: float) -> tuple[dict[str, _Written], Crossed]:
            out: dict[str, _Written] = {}
            crossed: Crossed = []
            for name, snap in snaps.items():
                account = doc.accounts.get(name)
                if account is None:  # removed: nothing to hold on (no limit, nothing to count)
                    out[name] = (ZERO, 0.0, None)
                    continue
                account.prune(now)
                current = account.held.pop(self.lease_id, (ZERO, 0.0))
                if snap.spent:
                    account.add_spent(snap.spent, now)
                    crossed.extend((leases[name].ref, p, t, account) for p, t in account.crossed(now))
                if snap.give_back:
                    out[name] = (ZERO, 0.0, None)
                    continue
                kept = max(current[0] - snap.spent, snap.held)  # never below what is held from it
                need = snap.held + snap.waiting
                tightest = account.tightest(now)  # our slice popped: what we may have in all
                extra = snap.unit * self.holds
                if tightest is not None:
                    extra = min(extra, max(tightest[1] - need, ZERO) * self.share)
                target = need + extra
                if tightest is not None:
                    target = min(target, max(tightest[1], ZERO))
                amount = max(kept, target)
                short = None
                if tightest is not None and amount < need:
                    short = (tightest[0], max(amount - snap.held, ZERO))
                expires = max(current[1], snap.until + self.grace, now + self.grace)
                account.held[self.lease_id] = (amount, expires)
                out[name] = (amount, expires, short)
            return out, crossed

        try:
            written, crossed = await self.accounts.change_key(key, apply)
        finally:
            for lease in leases.values():
                lease.returning = False
        for name, (amount, expires, short) in written.items():
            lease, snap = leases[name], snaps[name]
            lease.spent -= snap.spent
            lease.amount, lease.expires, lease.short = amount, expires, short
            lease.extra = max(amount - snap.held - snap.waiting, ZERO)
            if lease.waiting_until <= expires and not lease.waiting:
                lease.waiting_until = 0.0
            if snap.give_back and not lease.holds and not lease.waiting and not lease.spent:
                self._leases.pop((key, name), None)
        return crossed
