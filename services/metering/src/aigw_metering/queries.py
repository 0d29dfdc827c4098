"""Usage reports: a `UsageQuery` → one SQL statement → a `UsageReport`.

Rows and totals come from one statement (GROUPING SETS: the asked groups, plus the empty set for
the totals), so they are one consistent read even while batches are being inserted. `FINAL` makes
ReplacingMergeTree collapse copies of a line that parts merges have not collapsed yet: billing
never counts a redelivered or republished line twice. Group columns come from a fixed map and
every value is a bound parameter, so no query text reaches SQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aigw_contracts.usage import UsageGroup, UsageQuery, UsageReport, UsageRow, UsageTotals

from .store import Store

_BUCKETS = {
    "hour": "toStartOfHour(ts)",
    "day": "toStartOfDay(ts)",
    "month": "toStartOfMonth(ts)",
}
_COLUMNS: dict[UsageGroup, str] = {
    "tenant": "tenant",
    "gateway": "gateway_id",
    "sku": "sku",
    "model": "model",
    "request": "request_id",
}
_FILTERS = (
    ("tenant", "tenant"),
    ("gateway", "gateway_id"),
    ("sku", "sku"),
    ("model", "model"),
    ("request", "request_id"),
)
_SETTINGS = {
    # Copies of a line share ts, so they are always in one partition: FINAL need not merge across.
    "do_not_merge_across_partitions_select_final": 1,
    "force_grouping_standard_compatibility": 1,  # grouping() = 1 on the totals row
}


def _group_expr(name: UsageGroup, bucket: str) -> str:
    if name == "bucket":
        return f"toDateTime({_BUCKETS[bucket]}, 'UTC')"
    return _COLUMNS[name]


def build_sql(query: UsageQuery, table: str) -> tuple[str, dict[str, Any]]:
    """The report's SQL and its parameters (tested against chDB like the dashboards)."""
    start, end = query.resolved_range()
    params: dict[str, Any] = {"start": start, "end": end}
    where = ["ts >= {start:DateTime64(6, 'UTC')}", "ts < {end:DateTime64(6, 'UTC')}"]
    for field, column in _FILTERS:
        value = getattr(query, field)
        if value is not None:
            params[field] = value
            where.append(f"{column} = {{{field}:String}}")
    metrics = "sum(quantity) AS quantity, sum(amount) AS amount, uniqExact(request_id) AS requests"
    groups = list(query.group_by)
    if not groups:
        sql = f"SELECT 1 AS is_total, {metrics} FROM {table} FINAL WHERE {' AND '.join(where)}"
        return sql, params
    selected = ", ".join(f"{_group_expr(g, query.bucket)} AS g_{g}" for g in groups)
    keys = ", ".join(f"g_{g}" for g in groups)
    order = ", ".join(f"g_{g} DESC" if g == "request" else f"g_{g}" for g in groups)  # newest first
    params["limit"] = query.limit + 2  # the totals row, and one more row to tell "truncated"
    sql = (
        f"SELECT grouping({keys}) != 0 AS is_total, {metrics}, {selected} "
        f"FROM {table} FINAL WHERE {' AND '.join(where)} "
        f"GROUP BY GROUPING SETS (({keys}), ()) "
        f"ORDER BY is_total DESC, {order} LIMIT {{limit:UInt32}}"
    )
    return sql, params


def run(store: Store, query: UsageQuery) -> UsageReport:
    """Blocking (the service runs it in a thread); raises StoreUnavailable."""
    sql, params = build_sql(query, store.table)
    result = store.query(sql, params, settings=_SETTINGS)
    names = list(result.column_names)
    totals = UsageTotals()
    rows: list[UsageRow] = []
    for raw in result.result_rows:
        record = dict(zip(names, raw, strict=True))
        quantity, amount, requests = (
            int(record["quantity"]),
            Decimal(record["amount"]),
            int(record["requests"]),
        )
        if record["is_total"]:
            totals = UsageTotals(quantity=quantity, amount=amount, requests=requests)
            continue
        row: dict[str, Any] = {"quantity": quantity, "amount": amount, "requests": requests}
        for g in query.group_by:
            value = record[f"g_{g}"]
            if g == "bucket":
                value = value.replace(tzinfo=UTC) if isinstance(value, datetime) else value
            elif g == "gateway":
                value = value or None
            row[g] = value
        rows.append(UsageRow.model_validate(row))
    truncated = len(rows) > query.limit
    start, end = params["start"], params["end"]
    return UsageReport(
        tenant=query.tenant,
        start=start,
        end=end,
        group_by=list(query.group_by),
        bucket=query.bucket,
        rows=rows[: query.limit],
        totals=totals,
        truncated=truncated,
    )
