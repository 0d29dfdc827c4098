"""Budgets from the spend stream into ClickHouse (`budgets.py`), against a real nats-server and
chDB: each `BudgetSet` becomes a row, the latest per account wins, and a duplicate delivery (the
same event published again past the stream's duplicate window) is kept once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from aigw_contracts import subjects
from aigw_contracts.spend import BudgetSet
from aigw_devstack.nats import NatsServer

from .conftest import connect, eventually, running, settings_for


def _budget(i: int, amount: str | None, at: datetime) -> BudgetSet:
    return BudgetSet(
        id=f"budget_{i}",
        tenant="acme",
        scope="key",
        account="key-1",
        period="day",
        budget=None if amount is None else Decimal(amount),
        by_key="op",
        at=at,
    )


async def test_budget_events_are_stored_and_the_latest_wins(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    now = datetime.now(UTC)
    events = [_budget(1, "5", now - timedelta(minutes=2)), _budget(2, "7.25", now - timedelta(minutes=1))]
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with running(settings) as service, connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        for n, event in enumerate([*events, events[1]]):  # the second one twice (another message id)
            await js.publish(
                subjects.spend_budget_subject("acme"),
                event.model_dump_json().encode(),
                headers={"Nats-Msg-Id": f"m{n}"},
            )
        table = f"{service.store.database}.spend_budgets"

        def latest() -> list[tuple[object, ...]]:
            query = f"SELECT budget, removed, event_id FROM {table} FINAL WHERE account = 'key-1'"
            return list(service.store.query(query, {}).result_rows)

        # The latest of the three deliveries (one of them a duplicate) is the one row read.
        await eventually(lambda: latest() == [(Decimal("7.25"), False, "budget_2")], what="budgets stored")

        await js.publish(
            subjects.spend_budget_subject("acme"), _budget(3, None, now).model_dump_json().encode()
        )
        await eventually(
            lambda: service.store.query(f"SELECT removed FROM {table} FINAL", {}).result_rows == [(True,)],
            what="the budget's removal",
        )
        # One row per account and period: the removal replaced both budgets set before it.
        rows = service.store.query(f"SELECT budget, removed, event_id FROM {table} FINAL", {}).result_rows
        assert [(r[1], r[2]) for r in rows] == [(True, "budget_3")]
