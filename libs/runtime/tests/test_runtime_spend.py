"""Spend accounts against a real nats-server: holds from two replicas never overrun, a settlement
counts once, an abandoned hold expires, and the budget alerts cross once per threshold."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import nats
import pytest

from aigw_contracts.spend import Account, Shortfall
from aigw_devstack.nats import NatsServer
from aigw_runtime.spend import AccountRef, SpendAccounts

TENANT = AccountRef("tenant", "acme", "acme")


def _budget(day: str) -> object:
    def apply(account: Account, now: float) -> None:
        account.budgets["day"] = Decimal(day)

    return apply


async def _replicas(url: str, count: int) -> tuple[list[nats.NATS], list[SpendAccounts]]:
    conns = [await nats.connect(url) for _ in range(count)]
    replicas = [await SpendAccounts.open(nc.jetstream()) for nc in conns]
    for replica in replicas:
        await replica.watch()
    return conns, replicas


async def _close(conns: list[nats.NATS], replicas: list[SpendAccounts]) -> None:
    for replica in replicas:
        await replica.stop()
    for nc in conns:
        await nc.close()


async def _until(probe: object, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not probe():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.01)


async def test_concurrent_holds_from_two_replicas_never_exceed_the_budget(fresh_nats: NatsServer) -> None:
    conns, (a, b) = await _replicas(fresh_nats.url, 2)
    try:
        await a.change(TENANT, _budget("1.00"))  # type: ignore[arg-type]
        await _until(lambda: b.existing([TENANT]) == [TENANT])
        expires = time.time() + 60

        async def one(replica: SpendAccounts, i: int) -> bool:
            try:
                await replica.reserve([TENANT], f"r{i}", Decimal("0.05"), expires)
            except Shortfall:
                return False
            return True

        results = await asyncio.gather(*(one(a if i % 2 else b, i) for i in range(200)))
        assert sum(results) == 20  # exactly what 1.00 affords at 0.05 each, across both replicas
        account, _ = await a.read(TENANT)
        assert account.reserved(time.time()) == Decimal("1.00")
        # Group commit: far fewer writes than holds (each replica batches its pending ones).
        assert a.writes + b.writes < 200
    finally:
        await _close(conns, [a, b])


async def test_a_settlement_arriving_twice_counts_once(fresh_nats: NatsServer) -> None:
    conns, (a, b) = await _replicas(fresh_nats.url, 2)
    try:
        await a.change(TENANT, _budget("10"))  # type: ignore[arg-type]
        await a.reserve([TENANT], "req-1:chat", Decimal("2"), time.time() + 60)
        await a.settle([TENANT], "req-1:chat", Decimal("0.75"))
        await b.settle([TENANT], "req-1:chat", Decimal("0.75"))  # the same settlement, another replica
        await a.settle([TENANT], "req-1:chat", Decimal("0.75"))
        account, _ = await b.read(TENANT)
        now = time.time()
        assert account.spent_total == Decimal("0.75")
        assert account.spent_in("day", now) == Decimal("0.75")
        assert account.reserved(now) == 0  # the hold was released by the first settlement
        assert account.held == {}  # the document keeps only requests in flight, no history
    finally:
        await _close(conns, [a, b])


async def test_an_abandoned_hold_expires_and_frees_the_budget(fresh_nats: NatsServer) -> None:
    conns, (a,) = await _replicas(fresh_nats.url, 1)
    try:
        await a.change(TENANT, _budget("1"))  # type: ignore[arg-type]
        await a.reserve([TENANT], "dead-worker", Decimal("1"), time.time() + 0.3)
        with pytest.raises(Shortfall) as refused:
            await a.reserve([TENANT], "next", Decimal("0.5"), time.time() + 60)
        assert refused.value.limit == "day budget"
        deadline = time.monotonic() + 2.0
        while True:  # once the dead hold's time has passed, the budget is free again
            try:
                await a.reserve([TENANT], "next", Decimal("0.5"), time.time() + 60)
                break
            except Shortfall:
                assert time.monotonic() < deadline, "the abandoned hold never expired"
                await asyncio.sleep(0.02)
        account, _ = await a.read(TENANT)
        assert list(account.held) == ["next"]  # the expired hold was dropped by that write
    finally:
        await _close(conns, [a])


async def test_a_refused_hold_on_one_account_releases_the_others(fresh_nats: NatsServer) -> None:
    conns, (a,) = await _replicas(fresh_nats.url, 1)
    key = AccountRef("key", "k1", "acme")
    try:
        await a.change(TENANT, _budget("10"))  # type: ignore[arg-type]
        await a.change(key, _budget("1"))  # type: ignore[arg-type]
        with pytest.raises(Shortfall):
            await a.reserve([TENANT, key], "big", Decimal("2"), time.time() + 60)
        assert (await a.read(TENANT))[0].reserved(time.time()) == 0
    finally:
        await _close(conns, [a])


def test_budget_alerts_cross_50_80_100_once_each() -> None:
    account = Account(budgets={"day": Decimal("10")})
    now = time.time()
    for hold_id, spent, crossed in (
        ("a", "4", []),
        ("b", "4.5", [("day", 50), ("day", 80)]),
        ("c", "0.5", []),
        ("d", "1", [("day", 100)]),
    ):
        account.hold(hold_id, Decimal(spent), now + 60, now)
        assert account.settle(hold_id, Decimal(spent), now)
        assert account.crossed(now) == crossed


def test_a_prepaid_balance_refuses_what_it_cannot_pay() -> None:
    from datetime import UTC, datetime

    from aigw_contracts.spend import Credit

    account = Account()
    account.credit(Credit(id="c1", tenant="acme", amount=Decimal("1"), by_key="op", at=datetime.now(UTC)))
    now = time.time()
    account.hold("x", Decimal("0.6"), now + 60, now)
    with pytest.raises(Shortfall) as refused:
        account.hold("y", Decimal("0.6"), now + 60, now)
    assert refused.value.limit == "balance" and refused.value.remaining == Decimal("0.4")
    assert account.settle("x", Decimal("0.5"), now)
    assert not account.settle("x", Decimal("0.5"), now)  # twice: counted once
    assert account.balance == Decimal("0.5")
