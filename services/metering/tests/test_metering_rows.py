"""Event checks and batch building: what becomes a row, what becomes a dead letter, and why."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from aigw_contracts.usage import UsageEvent
from aigw_metering import sample
from aigw_metering.rows import Batch, Malformed, parse, parse_fast


def _wire(**changes: object) -> bytes:
    raw = json.loads(sample.event("acme", request_id="r1", tokens=(10, 5, 3)).model_dump_json())
    raw.update(changes)
    return json.dumps(raw).encode()


def _line(sku: str, unit_price: str, quantity: int, amount: str) -> dict[str, object]:
    return {"sku": sku, "unit_price": unit_price, "quantity": quantity, "amount": amount, "description": ""}


def test_a_well_formed_event_parses_exactly() -> None:
    event = parse(_wire())
    assert [line.amount for line in event.lines] == [
        Decimal("0.0000025"),
        Decimal("0.00001"),
        Decimal("7.5E-8"),
    ]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"tenant": ""}, "must not be empty"),
        ({"lines": [_line("a", "0.1", 3, "0.4")]}, "!= unit_price 0.1 × quantity 3"),
        ({"lines": [_line("a", "0.1", 1, "0.1"), _line("a", "0.1", 1, "0.1")]}, "appears twice"),
        ({"lines": [_line("a", "1E-19", 10, "1E-18")]}, "more than 18 decimal places"),
        ({"lines": [_line("a", "1E+20", 1, "1E+20")]}, "out of range"),
        ({"lines": [_line("a", "0.1", -1, "-0.1")]}, "quantity -1 is out of range"),
        ({"finished_at": "1899-01-01T00:00:00Z"}, "finished_at"),
        ({"schema_version": 2}, "schema_version"),
        ({"lines": "nope"}, "lines"),
    ],
)
def test_malformed_events_are_refused_with_a_reason(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(Malformed, match=reason.replace("(", r"\(").replace(")", r"\)")) as info:
        parse(_wire(**changes))
    assert "\n" not in str(info.value)


def test_garbage_is_refused_not_raised() -> None:
    with pytest.raises(Malformed, match="invalid usage event"):
        parse(b"\x00not json")


def test_exact_amounts_beyond_float_precision_are_accepted() -> None:
    wire = _wire(lines=[_line("a", "0.000000123456789", 123456789123, "15241.578765375706047")])
    assert parse(wire).lines[0].amount == Decimal("15241.578765375706047")


def test_a_batch_holds_one_canonical_copy_of_each_event() -> None:
    e = sample.event("acme", request_id="r1", tokens=(10, 5, 3), metadata={"k": "v"})
    batch = Batch()
    assert batch.add(e, seq=7) is True
    assert batch.add(e, seq=8) is False  # the same msg_id delivered twice
    assert batch.lines == 3 and batch.events == [("r1", "inference", 3)] and batch.seqs == [7]
    (row,) = [json.loads(line) for line in batch.block().split(b"\n")]
    assert row["stream_seq"] == 7
    assert UsageEvent.model_validate({k: v for k, v in row.items() if k != "stream_seq"}) == e
    amounts = [line["amount"] for line in row["lines"]]
    assert all(isinstance(a, str) and "E" not in a for a in amounts)  # plain decimal strings
    assert [Decimal(a) for a in amounts] == [Decimal("0.0000025"), Decimal("0.00001"), Decimal("7.5E-8")]


def test_events_already_stored_are_dropped_from_a_batch() -> None:
    batch = Batch()
    batch.add(sample.event("acme", request_id="r1"), seq=1)
    batch.add(sample.event("acme", request_id="r2", tokens=(1, 1, 1)), seq=2)
    batch.add(sample.event("acme", request_id="r2", source="routing"), seq=3)
    removed = batch.drop_stored({("r1", "inference"), ("r2", "routing")})
    assert removed == 2 and batch.lines == 3
    assert [json.loads(p)["request_id"] for p in batch.payloads] == ["r2"]
    assert batch.events == [("r2", "inference", 3)]


def test_the_dedup_token_is_the_same_for_the_same_batch_only() -> None:
    def batch_of(*seqs: int) -> Batch:
        b = Batch()
        for s in seqs:
            b.add(sample.event("acme", request_id=f"r{s}"), seq=s)
        return b

    assert batch_of(1, 2, 3).token() == batch_of(1, 2, 3).token()
    assert batch_of(1, 2, 3).token() != batch_of(1, 2).token()
    assert batch_of(1, 2, 3).token(b"run-1") != batch_of(1, 2, 3).token(b"run-2")  # per process


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.AIGW_USAGE.aigw-metering.2.17.5.1763800000000000000.3",
        "$JS.ACK.hub.ACCHASH.AIGW_USAGE.aigw-metering.4.1017.99.1763800000000000000.0.rnd",
    ],
)
def test_delivery_reads_the_same_fields_as_nats_metadata(reply: str) -> None:
    from nats.aio.msg import Msg

    from aigw_metering.consumer import delivery

    msg = Msg(_client=None, subject="aigw.v1.usage.acme", reply=reply)  # type: ignore[arg-type]
    assert delivery(msg) == (msg.metadata.sequence.stream, msg.metadata.num_delivered)


def test_the_fast_path_takes_events_as_the_contract_serializes_them() -> None:
    e = sample.event("acme", request_id="r9", tokens=(10, 5, 3), metadata={"k": "v"})
    assert parse_fast(e.model_dump_json().encode()) == ("r9", "inference", 3)
    assert parse_fast(sample.event("acme", gateway_id=None).model_dump_json().encode()) is not None


def _variant(change: Any) -> bytes:
    raw = json.loads(sample.event("acme", request_id="r1", tokens=(10, 5, 3)).model_dump_json())
    change(raw)
    return json.dumps(raw, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("change", "model_accepts"),
    [
        (lambda r: r["lines"][0].update(amount=0.0000025), True),  # money as a JSON number
        (lambda r: r.pop("status"), True),  # a default the model fills in
        (lambda r: r.update(extra="x"), True),  # a field this version doesn't know
        (lambda r: r.update(finished_at="2026-01-01T10:00:00+02:00"), True),  # another time format
        (lambda r: r.update(finished_at="2026-01-01T10:00:00"), True),  # naive: UTC for the model
        (lambda r: r["lines"][0].update(quantity="10"), True),  # a number as a string
        (lambda r: r["lines"][0].update(amount="1"), False),  # amount != unit_price × quantity
        (lambda r: r["lines"][0].update(unit_price="1E-7", amount="0.000001"), True),  # exponent
        (lambda r: r["lines"][0].update(quantity=True), False),  # a bool: 1 for the model, then amount ≠
        (lambda r: r["lines"].append(dict(r["lines"][0])), False),  # the same SKU twice
        (lambda r: r.update(latency_ms=float("inf")), True),
        (lambda r: r.update(tenant=""), False),
        (lambda r: r.update(schema_version=True), True),  # lax: 1 for the model
        (lambda r: r.update(finished_at="2026-13-45T10:00:00Z"), False),  # no such date
        (lambda r: r.update(started_at="1999-12-31T23:59:59Z"), False),  # out of range
    ],
)
def test_anything_else_takes_the_model_path_which_decides(change: Any, model_accepts: bool) -> None:
    data = _variant(change)
    assert parse_fast(data) is None
    if model_accepts:
        assert parse(data).request_id == "r1"
    else:
        with pytest.raises(Malformed):
            parse(data)


def test_a_pretty_printed_event_takes_the_model_path() -> None:
    data = json.dumps(json.loads(sample.event("acme").model_dump_json()), indent=2).encode()
    assert parse_fast(data) is None and parse(data).tenant == "acme"


def test_canonicalize_re_serializes_what_went_in_as_published() -> None:
    from nats.aio.msg import Msg

    e = sample.event("acme", request_id="r1")
    dup = e.model_dump_json().replace('"tenant":"acme"', '"tenant":"acme","tenant":"acme"').encode()
    fast = parse_fast(dup)
    assert fast == ("r1", "inference", 2)  # the parser can't see the duplicate key
    batch = Batch()
    batch.add_raw(Msg(_client=None, data=dup), 5, *fast)  # type: ignore[arg-type]
    token = batch.token()
    assert batch.canonicalize() == []
    assert batch.payloads == [b'{"stream_seq":5,' + e.model_dump_json().encode()[1:]]
    assert batch.token() != token  # different bytes, different dedup token


def test_the_fast_path_checks_every_field_of_the_contract() -> None:
    """When the contract gains a field, events take the model path (correct, slower) and this
    test says the fast path needs to learn the field."""
    from aigw_metering.rows import FAST_FIELDS

    assert set(UsageEvent.model_fields) == FAST_FIELDS
