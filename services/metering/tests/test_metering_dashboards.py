"""Every Grafana panel's SQL (and every template variable's) runs against chDB with the service's
own schema, with the ClickHouse plugin's macros and Grafana's variables expanded the way they are
at query time, so a dashboard can't ship broken SQL.

Expansion follows grafana/clickhouse-datasource pkg/macros (`$__timeFilter(c)` → `c >=
toDateTime(from) AND c <= toDateTime(to)`, `$__timeInterval(c)` → `toStartOfInterval(toDateTime(c),
INTERVAL n second)`, …) and Grafana's template service (a custom "All" value is inserted raw,
selected values with `:singlequote` as `'a','b'`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest

from aigw_contracts.requestlog import RequestLogEvent
from aigw_contracts.spend import BudgetSet
from aigw_metering import requestlog, sample
from aigw_metering.budgets import TABLE as BUDGETS
from aigw_metering.budgets import rows as budget_rows
from aigw_metering.rows import Batch
from aigw_metering.store import Store

GRAFANA = Path(__file__).resolve().parents[3] / "deploy" / "grafana"
# The dashboards over ClickHouse (the Prometheus one is checked in tests/test_deploy_files.py).
DASHBOARDS = sorted(
    p for p in (GRAFANA / "dashboards").glob("*.json") if "grafana-clickhouse-datasource" in p.read_text()
)
DATASOURCE = (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
DATASOURCE_UID = re.search(r"^\s*uid:\s*([\w-]+)", DATASOURCE, re.M).group(1)  # type: ignore[union-attr]

NOW = datetime.now(UTC).replace(microsecond=0)
FROM, TO = NOW - timedelta(hours=24), NOW
INTERVAL_S = 60


def _macro(sql: str) -> str:
    frm, to = int(FROM.timestamp()), int(TO.timestamp())
    frm_ms, to_ms = frm * 1000, to * 1000
    rules = [
        (
            r"\$__timeFilter_ms\(([^)]+)\)",
            lambda m: (
                f"{m[1]} >= fromUnixTimestamp64Milli({frm_ms}) AND {m[1]} <= fromUnixTimestamp64Milli({to_ms})"
            ),
        ),
        (
            r"\$__timeFilter\(([^)]+)\)",
            lambda m: f"{m[1]} >= toDateTime({frm}) AND {m[1]} <= toDateTime({to})",
        ),
        (
            r"\$__timeInterval_ms\(([^)]+)\)",
            lambda m: f"toStartOfInterval(toDateTime64({m[1]}, 3), INTERVAL {INTERVAL_S * 1000} millisecond)",
        ),
        (
            r"\$__timeInterval\(([^)]+)\)",
            lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {INTERVAL_S} second)",
        ),
        (r"\$__fromTime_ms\b", lambda m: f"fromUnixTimestamp64Milli({frm_ms})"),
        (r"\$__toTime_ms\b", lambda m: f"fromUnixTimestamp64Milli({to_ms})"),
        (r"\$__fromTime\b", lambda m: f"toDateTime({frm})"),
        (r"\$__toTime\b", lambda m: f"toDateTime({to})"),
        (r"\$__interval_s\b", lambda m: str(INTERVAL_S)),
    ]
    for pattern, repl in rules:
        sql = re.sub(pattern, repl, sql)
    return sql


def expand(sql: str, variables: dict[str, Any], selection: dict[str, list[str] | None]) -> str:
    """Grafana's variables, then the plugin's macros; nothing `$…` may be left."""

    def var(m: re.Match[str]) -> str:
        name, fmt = m[1], m[2]
        assert name in variables, f"unknown variable ${{{name}}}"
        chosen = selection.get(name)
        if chosen is None:  # "All" with a custom all value: inserted raw, unformatted
            return str(variables[name]["allValue"])
        assert fmt == "singlequote", f"${{{name}:{fmt}}}: only :singlequote is expanded here"
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in chosen)

    sql = re.sub(r"\$\{(\w+)(?::(\w+))?\}", var, sql)
    sql = _macro(sql)
    assert "$" not in sql, f"unexpanded macro or variable in: {sql}"
    return sql


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries() -> Iterator[Any]:
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                yield pytest.param(path.name, panel, target, id=f"{path.stem}:{panel['title']}")


@pytest.fixture(scope="module")
def dashboard_db(tmp_path_factory: pytest.TempPathFactory, chdb_dir: Path) -> Iterator[tuple[Any, list[Any]]]:
    """A database with the service's schema and a day of usage for three tenants."""
    from aigw_metering.store import parse_dsn

    database = "grafana_panels"
    store = Store(parse_dsn(f"chdb://{chdb_dir}", database))
    store.open()
    events = list(sample.events(600, seed=21, start=FROM + timedelta(minutes=1), spread=timedelta(hours=23)))
    events[3] = events[3].model_copy(update={"status": "failed"})
    batch = Batch()
    for i, e in enumerate(events):
        batch.add(e, seq=i + 1)
    store.insert(batch.block(), "grafana")
    # The request log: one row per usage event's request, then refusals the usage never sees.
    logged = [
        RequestLogEvent(
            request_id=e.request_id,
            tenant=e.tenant,
            key_id=e.key_id,
            method="POST",
            path="/v1/chat/completions",
            status=200,
            model=e.model,
            gateway_id=e.gateway_id or "",
            stream=i % 2 == 0,
            started_at=e.started_at,
            latency_ms=e.latency_ms or 10.0,
            ttft_ms=e.ttft_ms if i % 2 == 0 else None,
        )
        for i, e in enumerate(events)
    ]
    for i, e in enumerate(events[:60]):
        refused = 401 if i % 3 == 0 else 429 if i % 3 == 1 else 502
        logged.append(
            logged[i].model_copy(
                update={
                    "request_id": f"refused-{i}",
                    "tenant": "" if refused == 401 else e.tenant,
                    "status": refused,
                    "error_code": {401: "invalid_api_key", 429: "rate_limit_exceeded", 502: "upstream_error"}[
                        refused
                    ],
                }
            )
        )
    rows = b"\n".join(json.dumps(requestlog.row(r, i + 1)).encode() for i, r in enumerate(logged))
    store.insert(rows, "grafana-requests", store.requests_table)
    # Budgets as metering stores them from the spend stream (`budgets.py`): the latest wins.
    budgets = [
        BudgetSet(
            id=f"b{i}",
            tenant=f"tenant-{i}",
            scope="tenant",
            account=f"tenant-{i}",
            period="month",
            budget=Decimal(amount),
            by_key="op",
            at=NOW - timedelta(minutes=10 - i),
        )
        for i, amount in enumerate(("1", "2", "3"))
    ]
    budgets.append(budgets[1].model_copy(update={"id": "b9", "budget": Decimal("5"), "at": NOW}))
    budgets.append(budgets[0].model_copy(update={"id": "b8", "period": "day", "budget": None, "at": NOW}))
    store.insert_json(BUDGETS, budget_rows(budgets))
    client = clickhouse_connect.get_client(interface="chdb", path=str(chdb_dir), database=database)
    yield client, events
    client.close()
    store.close()


def test_dashboards_exist_and_use_the_provisioned_datasource() -> None:
    assert DASHBOARDS, "no dashboard under deploy/grafana/dashboards"
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["timezone"] == "utc"
        for panel in _panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, panel["title"]
            assert panel["targets"], f"{panel['title']} has no query"
            for target in panel["targets"]:
                assert target["editorType"] == "sql" and target["format"] in (0, 1)
                assert target["datasource"]["uid"] == DATASOURCE_UID


@pytest.mark.parametrize(("dashboard", "panel", "target"), list(_queries()))
@pytest.mark.parametrize("tenants", [None, ["tenant-1"], ["tenant-0", "tenant-2"]], ids=["all", "one", "two"])
def test_every_panel_query_runs_and_returns_data(
    dashboard_db: tuple[Any, list[Any]],
    dashboard: str,
    panel: dict[str, Any],
    target: dict[str, Any],
    tenants: list[str] | None,
) -> None:
    client, _ = dashboard_db
    variables = {
        v["name"]: v
        for v in json.loads((GRAFANA / "dashboards" / dashboard).read_text())["templating"]["list"]
    }
    sql = expand(target["rawSql"], variables, {"tenant": tenants, "gateway": None})
    result = client.query(sql)
    assert result.result_rows, f"{panel['title']}: no rows for {tenants}"
    if target["format"] == 0:  # time series: a time column first, then numbers
        assert result.column_names[0] == "time"
        assert isinstance(result.result_rows[0][0], datetime)


def test_template_variable_queries_run(dashboard_db: tuple[Any, list[Any]]) -> None:
    client, _ = dashboard_db
    for path in DASHBOARDS:
        variables = {v["name"]: v for v in json.loads(path.read_text())["templating"]["list"]}
        for v in variables.values():
            if v["type"] != "query":
                continue
            for tenants in (None, ["tenant-1"]):
                rows = client.query(
                    expand(v["query"], variables, {"tenant": tenants, "gateway": None})
                ).result_rows
                assert rows, v["name"]
        tenants = client.query(expand(variables["tenant"]["query"], variables, {})).result_rows
        assert [r[0] for r in tenants] == ["tenant-0", "tenant-1", "tenant-2"]


def test_selected_gateways_filter_the_panels(dashboard_db: tuple[Any, list[Any]]) -> None:
    client, events = dashboard_db
    dashboard = json.loads(DASHBOARDS[0].read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    spend = next(p for p in _panels(dashboard) if p["title"] == "Spend" and p.get("targets"))["targets"][0][
        "rawSql"
    ]
    only_a = client.query(expand(spend, variables, {"tenant": None, "gateway": ["gw-a"]})).result_rows[0][0]
    expected = sum((e.total() for e in events if e.gateway_id == "gw-a"), Decimal(0))
    assert math.isclose(only_a, float(expected), rel_tol=1e-12)


def test_the_spend_and_requests_stats_match_the_events(dashboard_db: tuple[Any, list[Any]]) -> None:
    client, events = dashboard_db
    dashboard = json.loads(DASHBOARDS[0].read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in _panels(dashboard) if p.get("targets")}
    one = [e for e in events if e.tenant == "tenant-1"]
    spend = client.query(expand(by_title["Spend"], variables, {"tenant": ["tenant-1"]})).result_rows[0][0]
    assert math.isclose(spend, float(sum((e.total() for e in one), Decimal(0))), rel_tol=1e-12)
    requests = client.query(expand(by_title["Requests"], variables, {})).result_rows[0][0]
    assert requests == len(events)
    errors = client.query(expand(by_title["Errors"], variables, {})).result_rows[0][0]
    assert math.isclose(errors, 60 / (len(events) + 60))  # refusals included: 401s have no tenant
    one_errors = client.query(expand(by_title["Errors"], variables, {"tenant": ["tenant-1"]})).result_rows[0][
        0
    ]
    refused_one = sum(1 for i, e in enumerate(events[:60]) if i % 3 and e.tenant == "tenant-1")
    assert math.isclose(one_errors, refused_one / (len(one) + refused_one))


def test_the_request_panels_read_the_request_log(dashboard_db: tuple[Any, list[Any]]) -> None:
    client, events = dashboard_db
    dashboard = json.loads(DASHBOARDS[0].read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    by_title = {p["title"]: p["targets"][0]["rawSql"] for p in _panels(dashboard) if p.get("targets")}
    by_status: dict[str, int] = {}
    for _, status, n in client.query(expand(by_title["Requests by status"], variables, {})).result_rows:
        by_status[status] = by_status.get(status, 0) + n
    assert by_status == {"200": len(events), "401": 20, "429": 20, "502": 20}
    codes = {r[1] for r in client.query(expand(by_title["Errors by code"], variables, {})).result_rows}
    assert codes == {"401 invalid_api_key", "429 rate_limit_exceeded", "502 upstream_error"}
    recent = client.query(expand(by_title["Recent errors"], variables, {})).result_rows
    assert len(recent) == 60 and all(r[1] >= 400 for r in recent)


def test_spend_against_budgets_shows_the_latest_budget_and_this_months_spend(
    dashboard_db: tuple[Any, list[Any]],
) -> None:
    client, events = dashboard_db
    dashboard = json.loads(DASHBOARDS[0].read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    sql = next(p for p in _panels(dashboard) if p["title"] == "Spend against budgets")["targets"][0]["rawSql"]
    result = client.query(expand(sql, variables, {"tenant": ["tenant-1", "tenant-0"]}))
    rows = {(r[0], r[3]): dict(zip(result.column_names, r, strict=True)) for r in result.result_rows}
    assert set(rows) == {("tenant-1", "month"), ("tenant-0", "month")}  # a removed budget is not shown
    month = NOW.replace(day=1, hour=0, minute=0, second=0)
    spent = sum((e.total() for e in events if e.tenant == "tenant-1" and e.finished_at >= month), Decimal(0))
    row = rows[("tenant-1", "month")]
    assert row["budget_usd"] == 5.0  # the latest of its two
    assert math.isclose(row["spent_usd"], float(spent), rel_tol=1e-9)
    assert math.isclose(row["percent"], round(100 * float(spent) / 5, 1), abs_tol=0.05)
