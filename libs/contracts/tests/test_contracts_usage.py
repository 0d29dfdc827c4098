import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from pydantic import ValidationError

from aigw_contracts.api import GeneratedUsage
from aigw_contracts.usage import SCHEMA_DIR, UsageEvent, UsageQuery, UsageReport, json_schemas


def _event(*lines: GeneratedUsage) -> UsageEvent:
    return UsageEvent(
        request_id="r1",
        source="inference",
        tenant="acme",
        key_id="k1",
        upstream="@sim/sim-model",
        model="sim-model",
        lines=list(lines),
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_committed_json_schemas_equal_the_generated_ones() -> None:
    for name, schema in json_schemas().items():
        committed = json.loads((SCHEMA_DIR / name).read_text())
        assert committed == schema, (
            f"{name} is stale: regenerate it with aigw_contracts.usage.write_schemas()"
        )


def test_usage_event_money_travels_as_exact_decimal_strings() -> None:
    # 20 significant digits: a JSON float would round this amount.
    line = GeneratedUsage.priced("inference.chat_completions.in", Decimal("1.23456789E-7"), 123456789123, "d")
    wire = json.loads(_event(line).model_dump_json())
    assert wire["lines"][0]["amount"] == "15241.578765375706047"
    assert wire["lines"][0]["unit_price"] == "0.000000123456789"
    back = UsageEvent.model_validate_json(_event(line).model_dump_json())
    assert back.lines[0].amount == line.amount == line.unit_price * line.quantity


def test_usage_event_still_accepts_numbers_for_money() -> None:
    raw = json.loads(_event().model_dump_json())
    raw["lines"] = [
        {"sku": "s", "amount": 0.5, "unit_price": 2.5e-8, "quantity": 20000000, "description": ""}
    ]
    event = UsageEvent.model_validate(raw)
    assert event.lines[0].unit_price == Decimal("2.5E-8") and event.lines[0].amount == Decimal("0.5")


def test_usage_query_defaults_to_the_last_30_days_in_utc() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    start, end = UsageQuery(tenant="acme").resolved_range(now)
    assert (start, end) == (now - timedelta(days=30), now)
    naive = UsageQuery(tenant=None, start=datetime(2026, 1, 1), end=datetime(2026, 2, 1))
    assert naive.start is not None and naive.start.tzinfo is UTC


@pytest.mark.parametrize(
    "bad",
    [
        {"tenant": "a", "group_by": ["sku", "sku"]},
        {"tenant": "a", "group_by": ["customer"]},
        {"tenant": "a", "bucket": "week"},
        {"tenant": "a", "start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
        {"tenant": "a", "limit": 0},
        {"tenant": "a", "sql": "DROP TABLE usage_lines"},
    ],
)
def test_usage_query_refuses_what_it_cannot_answer(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        UsageQuery.model_validate(bad)


def test_usage_report_amounts_round_trip_exactly() -> None:
    report = UsageReport.model_validate(
        {
            "tenant": "acme",
            "start": "2026-01-01T00:00:00Z",
            "end": "2026-02-01T00:00:00Z",
            "group_by": ["sku"],
            "bucket": "day",
            "rows": [{"sku": "s", "quantity": 3, "amount": "0.000000075000000001", "requests": 1}],
            "totals": {"quantity": 3, "amount": "0.000000075000000001", "requests": 1},
        }
    )
    again = UsageReport.model_validate_json(report.model_dump_json())
    assert again.rows[0].amount == Decimal("0.000000075000000001") == again.totals.amount
