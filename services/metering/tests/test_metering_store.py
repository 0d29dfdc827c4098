"""The store on chDB: schema migrations, exact round trips, and duplicates that never count twice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from aigw_contracts.usage import UsageQuery
from aigw_metering import queries, sample
from aigw_metering.rows import Batch
from aigw_metering.schema import migrate, migrations
from aigw_metering.store import Store, parse_dsn


def _batch(events: list[Any], first_seq: int = 1) -> Batch:
    b = Batch()
    for i, e in enumerate(events):
        b.add(e, seq=first_seq + i)
    return b


def _scalar(store: Store, sql: str) -> Any:
    return store.query(sql.format(t=store.table), {}).result_rows[0]


def test_dsns_name_a_chdb_path_or_a_server_and_never_log_the_password() -> None:
    assert parse_dsn("chdb:///var/lib/aigw/usage", "aigw").location == "/var/lib/aigw/usage"
    assert parse_dsn("chdb://.aigw/usage.chdb", "aigw").location == ".aigw/usage.chdb"
    server = parse_dsn("http://default:s3cret@clickhouse:8123/billing", "aigw")
    assert (server.kind, server.database) == ("http", "billing")
    assert "s3cret" not in server.redacted and server.redacted == "http://clickhouse:8123/billing"
    assert parse_dsn("https://ch.example.com:8443", "aigw").database == "aigw"
    with pytest.raises(ValueError):
        parse_dsn("postgres://x", "aigw")


def test_migrations_apply_once_and_record_their_versions(store: Store) -> None:
    # The fixture opened (and so migrated) the store: running again applies nothing.
    assert migrate(store._writer, store.database) == []
    recorded = store.query(
        f"SELECT version FROM {store.database}.schema_migrations FINAL ORDER BY version", {}
    )
    assert [r[0] for r in recorded.result_rows] == [m.version for m in migrations()]
    engine = _scalar(
        store,
        f"SELECT engine, sorting_key, partition_key FROM system.tables WHERE database = '{store.database}' AND name = 'usage_lines'",
    )
    assert engine[0] == "ReplacingMergeTree"
    assert engine[1] == "tenant, sku, toStartOfHour(ts), request_id, source"
    assert engine[2] == "toYYYYMM(ts)"


def test_lines_round_trip_exactly(store: Store) -> None:
    e = sample.event("acme", tokens=(123456789, 1, 7), metadata={"team": "search"})
    store.insert(_batch([e]).block(), "t1")
    rows = store.query(
        f"SELECT sku, quantity, unit_price, amount, description, metadata, ts, started_at, gateway_id "
        f"FROM {store.table} ORDER BY line_no",
        {},
    ).result_rows
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (line.sku, line.quantity, line.unit_price, line.amount, line.description) for line in e.lines
    ]
    assert rows[0][5] == {"team": "search"} and rows[0][8] == "gw-1"
    assert rows[0][6].replace(tzinfo=UTC) == e.finished_at  # microseconds kept
    assert rows[0][7].replace(tzinfo=UTC) == e.started_at


def test_a_retried_batch_with_the_same_token_is_stored_once(store: Store) -> None:
    batch = _batch(list(sample.events(50, seed=3)))
    store.insert(batch.block(), batch.token())
    store.insert(batch.block(), batch.token())  # e.g. the first answer was lost to a timeout
    count, unique = _scalar(store, "SELECT count(), uniqExact(request_id, source, sku) FROM {t}")
    assert count == unique == batch.lines


def test_copies_inserted_later_never_change_billing_totals(store: Store) -> None:
    events = list(sample.events(200, seed=4))
    expected = sum((e.total() for e in events), Decimal(0))
    store.insert(_batch(events).block(), "first")
    # The same events again as a different batch (a restart regrouped them; a producer
    # republished after the duplicate window): physically stored twice, billed once.
    store.insert(_batch(events[50:150], first_seq=1000).block(), "second")
    physical = _scalar(store, "SELECT count() FROM {t}")[0]
    assert physical > _batch(events).lines
    report = queries.run(store, UsageQuery(tenant=None, group_by=["tenant", "sku"]))
    assert report.totals.amount == expected
    assert report.totals.requests == len(events)
    assert sum(r.amount for r in report.rows) == expected
    store.query(f"OPTIMIZE TABLE {store.table} FINAL", {})
    assert _scalar(store, "SELECT count() FROM {t}")[0] == _batch(events).lines


def test_reports_group_filter_and_total_exactly(store: Store) -> None:
    at = datetime(2026, 3, 10, 15, 30, tzinfo=UTC)
    events = [
        sample.event("acme", gateway_id="gw-a", model="m1", tokens=(100, 10, 0), at=at),
        sample.event("acme", gateway_id="gw-a", model="m1", tokens=(300, 30, 5), at=at + timedelta(hours=1)),
        sample.event("acme", gateway_id=None, model="m2", tokens=(1, 1, 0), at=at + timedelta(days=1)),
        sample.event("other", gateway_id="gw-z", model="m1", tokens=(999, 99, 0), at=at),
    ]
    store.insert(_batch(events).block(), "x")
    window = {"start": at - timedelta(days=1), "end": at + timedelta(days=2)}

    by_gateway = queries.run(store, UsageQuery(tenant="acme", group_by=["gateway"], **window))
    assert [(r.gateway, r.requests) for r in by_gateway.rows] == [(None, 1), ("gw-a", 2)]
    assert by_gateway.totals.amount == sum((e.total() for e in events[:3]), Decimal(0))
    assert by_gateway.totals.requests == 3

    hourly = queries.run(
        store, UsageQuery(tenant="acme", group_by=["bucket", "sku"], bucket="hour", **window)
    )
    assert hourly.rows[0].bucket == datetime(2026, 3, 10, 15, tzinfo=UTC)
    assert {r.bucket for r in hourly.rows} == {
        datetime(2026, 3, 10, 15, tzinfo=UTC),
        datetime(2026, 3, 10, 16, tzinfo=UTC),
        datetime(2026, 3, 11, 15, tzinfo=UTC),
    }
    monthly = queries.run(store, UsageQuery(tenant=None, group_by=["bucket"], bucket="month", **window))
    assert [(r.bucket, r.requests) for r in monthly.rows] == [(datetime(2026, 3, 1, tzinfo=UTC), 4)]

    only_m1 = queries.run(store, UsageQuery(tenant=None, group_by=["tenant"], model="m1", **window))
    assert [(r.tenant, r.requests) for r in only_m1.rows] == [("acme", 2), ("other", 1)]
    assert only_m1.totals.quantity == 100 + 10 + 300 + 30 + 5 + 999 + 99

    none = queries.run(store, UsageQuery(tenant="nobody", **window))
    assert none.rows == [] and none.totals.amount == 0 and none.totals.requests == 0

    limited = queries.run(store, UsageQuery(tenant=None, group_by=["tenant", "sku"], limit=2, **window))
    assert len(limited.rows) == 2 and limited.truncated
    assert limited.totals.requests == 4  # totals cover every matching line, not just the rows


def test_a_closed_store_says_unavailable(chdb_dir: Any, database: str) -> None:
    from aigw_metering.store import StoreUnavailable

    s = Store(parse_dsn(f"chdb://{chdb_dir}", database))
    with pytest.raises(StoreUnavailable, match="not open"):
        s.insert([], "t")


def test_the_fast_path_and_the_model_path_store_identical_rows(store: Store) -> None:
    from nats.aio.msg import Msg

    from aigw_metering.rows import parse_fast

    events = list(sample.events(200, seed=8))
    as_published, through_model = Batch(), Batch()
    for i, e in enumerate(events):
        data = e.model_dump_json().encode()
        fast = parse_fast(data)
        assert fast is not None
        as_published.add_raw(Msg(_client=None, data=data), i, *fast)  # type: ignore[arg-type]
        through_model.add(e, i)
    store.insert(as_published.block(), "as-published")
    columns = "* EXCEPT (inserted_at)"
    first = store.query(f"SELECT {columns} FROM {store.table} ORDER BY stream_seq, line_no", {}).result_rows
    store.query(f"TRUNCATE TABLE {store.table}", {})
    store.insert(through_model.block(), "through-model")
    second = store.query(f"SELECT {columns} FROM {store.table} ORDER BY stream_seq, line_no", {}).result_rows
    assert len(first) == as_published.lines and first == second
