"""Slices of budget (`aigw_runtime.spendlease`) against a real nats-server: holds from two replicas'
slices never overrun an account, most holds need no write, a settlement counts once, a dead
replica's slice expires, and idle slices are given back with their spend written."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import nats
import pytest

from aigw_contracts.spend import Account, Shortfall
from aigw_devstack.nats import NatsServer
from aigw_runtime.spend import AccountRef, SpendAccounts
from aigw_runtime.spendlease import SpendLeases

TENANT = AccountRef("tenant", "acme", "acme")
KEY = AccountRef("key", "k1", "acme")


def _budget(day: str) -> object:
    def apply(account: Account, now: float) -> None:
        account.budgets["day"] = Decimal(day)

    return apply


async def _replica(url: str, owner: str, **kw: object) -> tuple[nats.NATS, SpendAccounts, SpendLeases]:
    nc = await nats.connect(url)
    accounts = await SpendAccounts.open(nc.jetstream())
    await accounts.watch()
    leases = SpendLeases(accounts, owner, **{"grace": 5.0, "idle": 0.3, "flush": 0.05, **kw})  # type: ignore[arg-type]
    leases.start()
    return nc, accounts, leases


async def _until(probe: object, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.02)


async def test_two_replicas_slices_never_overrun_and_most_holds_write_nothing(fresh_nats: NatsServer) -> None:
    (nca, a_acc, a), (ncb, b_acc, b) = [await _replica(fresh_nats.url, name) for name in ("a", "b")]
    try:
        await a_acc.change(TENANT, _budget("1.00"))  # type: ignore[arg-type]
        expires = time.time() + 30

        async def one(leases: SpendLeases, i: int) -> bool:
            try:
                await leases.reserve([TENANT], f"r{i}", Decimal("0.05"), expires)
            except Shortfall as short:
                assert short.limit == "day budget"
                return False
            await asyncio.sleep(0)
            assert leases.settle([TENANT], f"r{i}", Decimal("0.04"))
            assert not leases.settle([TENANT], f"r{i}", Decimal("0.04"))  # twice: counted once
            return True

        results = await asyncio.gather(*(one(a if i % 2 else b, i) for i in range(200)))
        answered = sum(results)
        assert 10 <= answered <= 25  # 1.00 at 0.04 spent each: at most 25, whatever the replicas
        await a.close()
        await b.close()
        account, _ = await a_acc.read(TENANT)
        assert account.spent_total == Decimal("0.04") * answered <= Decimal("1.00")
        assert account.held == {}  # both slices given back
        assert a_acc.writes + b_acc.writes < 100  # far fewer writes than the 200 requests
    finally:
        for acc, nc in ((a_acc, nca), (b_acc, ncb)):
            await acc.stop()
            await nc.close()


async def test_holds_from_a_slice_need_no_write_and_idle_slices_are_given_back(
    fresh_nats: NatsServer,
) -> None:
    nc, accounts, leases = await _replica(fresh_nats.url, "w")
    try:
        await accounts.change(TENANT, _budget("10"))  # type: ignore[arg-type]
        await accounts.change(KEY, _budget("1"))  # type: ignore[arg-type]
        expires = time.time() + 20
        await leases.reserve([TENANT, KEY], "first", Decimal("0.01"), expires)
        writes = accounts.writes
        for i in range(20):  # within the slice and its expiry: no round trip
            await leases.reserve([TENANT, KEY], f"r{i}", Decimal("0.01"), expires)
        assert accounts.writes == writes
        account, _ = await accounts.read(KEY)
        assert account.reserved(time.time()) >= Decimal("0.21")  # the slice counts as held

        # A hold larger than the key's budget is refused; the tenant's slice is untouched by it.
        with pytest.raises(Shortfall) as refused:
            await leases.reserve([TENANT, KEY], "big", Decimal("2"), expires)
        assert refused.value.limit == "day budget"

        for hold in ["first", *(f"r{i}" for i in range(20))]:
            leases.settle([TENANT, KEY], hold, Decimal("0.005"))
        await leases.flushed(TENANT.key)

        async def given_back() -> bool:
            tenant, _ = await accounts.read(TENANT)
            key, _ = await accounts.read(KEY)
            return not tenant.held and not key.held

        await _until(given_back)
        tenant, _ = await accounts.read(TENANT)
        key, _ = await accounts.read(KEY)
        assert tenant.spent_total == key.spent_total == Decimal("0.105")
    finally:
        await leases.close()
        await accounts.stop()
        await nc.close()


async def test_a_dead_replicas_slice_expires_after_its_holds(fresh_nats: NatsServer) -> None:
    nc, accounts, dead = await _replica(fresh_nats.url, "dead", grace=0.3)
    nc2, other, alive = await _replica(fresh_nats.url, "alive", grace=0.3)
    try:
        await accounts.change(TENANT, _budget("1"))  # type: ignore[arg-type]
        hold_until = time.time() + 0.5
        await dead.reserve([TENANT], "in-flight", Decimal("0.9"), hold_until)
        if dead._ticker is not None:  # the replica dies: no settlement, no give-back
            dead._ticker.cancel()
        await nc.close()
        with pytest.raises(Shortfall):
            await alive.reserve([TENANT], "next", Decimal("0.5"), time.time() + 5)
        deadline = time.monotonic() + 3.0
        while True:
            try:
                await alive.reserve([TENANT], "next", Decimal("0.5"), time.time() + 5)
                break
            except Shortfall:
                assert time.monotonic() < deadline, "the dead replica's slice never expired"
                await asyncio.sleep(0.05)
        assert time.time() >= hold_until  # not before the hold taken from it had expired
    finally:
        await alive.close()
        await other.stop()
        await accounts.stop()
        await nc2.close()
