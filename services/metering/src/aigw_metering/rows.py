"""Usage events → what one insert carries: validation, then the batch of canonical JSON events.

Everything a ClickHouse column would refuse is checked here, so an insert fails only when the
store does (and is retried) and never because of one bad event (which would block the stream):
such an event is a dead letter instead, with the reason.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime
from decimal import Context, Decimal
from typing import Any, get_args

from pydantic import ValidationError
from pydantic_core import from_json

from aigw_contracts.usage import UsageEvent

SCALE = 18  # Decimal(38, 18): fractional digits
_MAX_MONEY = Decimal(10) ** (38 - SCALE)
_QUANTUM = Decimal(1).scaleb(-SCALE)
_EXACT = Context(prec=120)  # enough digits that these products and roundings are exact
_MAX_QUANTITY = 2**63
_MAX_LINES = 2**16


class Malformed(ValueError):
    """An event metering will not store; the message says why (it goes to the dead letter)."""


def parse(data: bytes) -> UsageEvent:
    """Parse and check one event; raises Malformed with a readable reason."""
    try:
        event = UsageEvent.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "event"
        raise Malformed(f"invalid usage event: {where}: {first['msg']}") from None
    check(event)
    return event


_checked_prices: set[Decimal] = set()  # unit prices already found storable (few distinct ones)


def _check_price(value: Decimal, where: str) -> None:
    if not value.is_finite():
        raise Malformed(f"{where}: unit_price is not a finite number")
    if abs(value) >= _MAX_MONEY:
        raise Malformed(f"{where}: unit_price {value} is out of range")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -SCALE and value != _EXACT.quantize(value, _QUANTUM):
        raise Malformed(f"{where}: unit_price {value} has more than {SCALE} decimal places")
    if len(_checked_prices) < 65_536:
        _checked_prices.add(value)


def _where(event: UsageEvent, i: int) -> str:
    return f"lines[{i}] ({event.lines[i].sku})"


def _instant(value: datetime, what: str) -> None:
    # DateTime64 holds 1900..2299; a time far outside "now" is a producer's bug, not usage.
    if not 2000 <= value.year < 2200:
        raise Malformed(f"{what} {value.isoformat()} is out of range")


def check(event: UsageEvent) -> None:
    """What the schema can't say: ids present, one line per SKU, amount = unit_price × quantity
    exactly, and every value within its column (Decimal(38, 18), Int64, DateTime64).

    Hot path (once per event): reasons are formatted only on failure, and a unit price is checked
    once per process. An amount equal to unit_price × quantity has no more decimal places than the
    price, so checking the price's places covers the amount's.
    """
    if not event.request_id or not event.tenant:
        raise Malformed("request_id and tenant must not be empty")
    lines = event.lines
    if len(lines) >= _MAX_LINES:
        raise Malformed("too many lines in one event")
    if len(lines) > 1 and len({line.sku for line in lines}) != len(lines):
        seen: set[str] = set()
        for i, line in enumerate(lines):
            if line.sku in seen:
                raise Malformed(f"{_where(event, i)}: the sku appears twice (one line per SKU)")
            seen.add(line.sku)
    for i, line in enumerate(lines):
        quantity, price, amount = line.quantity, line.unit_price, line.amount
        if not line.sku:
            raise Malformed(f"lines[{i}]: empty sku")
        if not 0 <= quantity < _MAX_QUANTITY:
            raise Malformed(f"{_where(event, i)}: quantity {quantity} is out of range")
        if price not in _checked_prices:
            _check_price(price, _where(event, i))
        if amount != _EXACT.multiply(price, quantity):
            raise Malformed(
                f"{_where(event, i)}: amount {amount} != unit_price {price} × quantity {quantity}"
            )
        if not -_MAX_MONEY < amount < _MAX_MONEY:
            raise Malformed(f"{_where(event, i)}: amount {amount} is out of range")
    _instant(event.started_at, "started_at")
    _instant(event.finished_at, "finished_at")


def _canonical(event: UsageEvent, seq: int) -> bytes:
    """The event as the contract serializes it, with its stream sequence first."""
    return b'{"stream_seq":%d,%s' % (seq, event.model_dump_json().encode()[1:])


# ---------------------------------------------------------------------------------------------
# The fast path. Events as the contract serializes them (every field present, money as plain
# decimal strings, times as RFC 3339 UTC) are checked on the parsed JSON and inserted as they came:
# no model is built and nothing is re-serialized, which halves the CPU per event. Whatever is not
# in exactly that shape (an older producer writing numbers, a missing or extra field, another time
# format, a value the checks refuse) takes the model path above, which decides: a canonical copy
# or a dead letter. So the fast path never accepts what the model would refuse. The one thing it
# cannot see is a duplicate key (JSON parsers keep the last one); ClickHouse refuses such an
# insert, and the consumer then re-serializes the batch through the model (`canonicalize`).

# Spelled out, not read from the model: a field the contract adds later takes the model path (which
# validates it) until this path learns to check it too (a test compares the two lists).
FAST_FIELDS = frozenset(
    (
        "schema_version",
        "request_id",
        "source",
        "tenant",
        "key_id",
        "gateway_id",
        "upstream",
        "upstream_kind",
        "model",
        "lines",
        "metadata",
        "status",
        "started_at",
        "finished_at",
        "latency_ms",
        "ttft_ms",
    )
)
_LINE_FIELDS = frozenset(("sku", "amount", "unit_price", "quantity", "description"))
_SOURCES = frozenset(get_args(UsageEvent.model_fields["source"].annotation))
_KINDS = frozenset(("catalog", "own"))
_STATUSES = frozenset(("completed", "failed", "cancelled"))
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_INSTANT = re.compile(r"(2[01][0-9]{2})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?Z")
_prices: dict[str, Decimal] = {}  # unit price strings already checked → their value


def _fast_price(text: str) -> Decimal | None:
    price = _prices.get(text)
    if price is None:
        if not _DECIMAL.fullmatch(text):
            return None
        price = Decimal(text)
        try:
            _check_price(price, "")
        except Malformed:
            return None
        if len(_prices) < 65_536:
            _prices[text] = price
    return price


def parse_fast(data: bytes) -> tuple[str, str, int] | None:
    """(request_id, source, lines) of an event in the canonical shape that passes every check,
    else None (then `parse` decides)."""
    if b"\n" in data:  # one event per JSONEachRow line
        return None
    try:
        e = from_json(data)
    except ValueError:
        return None
    if type(e) is not dict or e.keys() != FAST_FIELDS:
        return None
    rid, tenant, lines, meta = e["request_id"], e["tenant"], e["lines"], e["metadata"]
    if not (
        type(e["schema_version"]) is int
        and e["schema_version"] == 1
        and type(rid) is str
        and rid
        and type(tenant) is str
        and tenant
        and type(e["key_id"]) is str
        and type(e["upstream"]) is str
        and type(e["model"]) is str
        and e["source"] in _SOURCES
        and e["upstream_kind"] in _KINDS
        and e["status"] in _STATUSES
        and (e["gateway_id"] is None or type(e["gateway_id"]) is str)
        and type(meta) is dict
        and all(type(v) is str for v in meta.values())
        and _finite_or_none(e["latency_ms"])
        and _finite_or_none(e["ttft_ms"])
        and _instant_text(e["started_at"])
        and _instant_text(e["finished_at"])
        and type(lines) is list
        and len(lines) < _MAX_LINES
    ):
        return None
    skus = set()
    for line in lines:
        if type(line) is not dict or line.keys() != _LINE_FIELDS:
            return None
        sku, quantity, amount = line["sku"], line["quantity"], line["amount"]
        if (
            type(sku) is not str
            or not sku
            or sku in skus
            or type(line["description"]) is not str
            or type(quantity) is not int
            or not 0 <= quantity < _MAX_QUANTITY
            or type(amount) is not str
            or type(line["unit_price"]) is not str
            or not _DECIMAL.fullmatch(amount)
        ):
            return None
        price = _fast_price(line["unit_price"])
        value = Decimal(amount)
        if price is None or value != _EXACT.multiply(price, quantity) or not -_MAX_MONEY < value < _MAX_MONEY:
            return None
        skus.add(sku)
    return rid, e["source"], len(lines)


def _instant_text(value: object) -> bool:
    """RFC 3339 UTC as the contract writes it, a real date and time, years 2000..2199."""
    if type(value) is not str or not _INSTANT.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _finite_or_none(value: object) -> bool:
    return value is None or (type(value) in (int, float) and math.isfinite(value))  # type: ignore[arg-type]


class Batch:
    """The events of one insert, as the JSON lines ClickHouse reads (`usage_events_in`), and the
    messages to acknowledge once they are stored."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []  # one JSON object per event, stream_seq first
        self.raw: list[Any] = []  # per payload: the message when it is the producer's own bytes
        self.events: list[tuple[str, str, int]] = []  # (request_id, source, lines) per payload
        self.lines = 0
        self.seqs: list[int] = []  # usage-stream sequences of the stored events, in order
        self.msgs: list[Any] = []  # to ack after the insert (stored events and their duplicates)
        self.dead: list[tuple[Any, str]] = []  # (message, reason): to the dead letter, then ack
        self.keys: set[str] = set()  # msg_id of every event in the batch
        self.redelivered: set[str] = set()  # request_ids delivered more than once by JetStream
        self.first_at = 0.0  # monotonic time of the first message
        self.canonical = False  # every payload re-serialized through the model

    def __len__(self) -> int:
        return len(self.msgs) + len(self.dead)

    def add(self, event: UsageEvent, seq: int) -> bool:
        """Append the event; False (nothing added) when the batch already holds it.

        The payload is re-serialized from the validated model rather than passed through: what
        ClickHouse parses is then exactly what was checked (no duplicate keys, numbers where
        strings belong, or defaults the two parsers would fill differently).
        """
        key = event.msg_id()
        if key in self.keys:
            return False
        self.keys.add(key)
        self.payloads.append(_canonical(event, seq))
        self.raw.append(None)
        self.events.append((event.request_id, event.source, len(event.lines)))
        self.lines += len(event.lines)
        self.seqs.append(seq)
        return True

    def add_raw(self, msg: Any, seq: int, request_id: str, source: str, lines: int) -> bool:
        """Append an event that passed `parse_fast`, as it came; False when the batch holds it."""
        key = f"{request_id}:{source}"
        if key in self.keys:
            return False
        self.keys.add(key)
        self.payloads.append(b'{"stream_seq":%d,%s' % (seq, msg.data.lstrip()[1:]))
        self.raw.append(msg)
        self.events.append((request_id, source, lines))
        self.lines += lines
        self.seqs.append(seq)
        return True

    def block(self) -> bytes:
        """The insert's body: JSONEachRow."""
        return b"\n".join(self.payloads)

    def drop_stored(self, stored: set[tuple[str, str]]) -> int:
        """Remove events already in the store (a redelivery after a crash between insert and ack);
        returns how many. An event's lines are stored in one block: all of them or none."""
        if not stored:
            return 0
        keep = [i for i, (rid, source, _) in enumerate(self.events) if (rid, source) not in stored]
        removed = len(self.events) - len(keep)
        self._keep(keep)
        return removed

    def canonicalize(self) -> list[tuple[Any, str]]:
        """Re-serialize every event that went in as the producer's bytes through the model (after
        ClickHouse refused the batch's data, e.g. a duplicate key the fast path could not see).
        Returns (message, reason) of any the model refuses; they leave the batch."""
        refused: list[tuple[Any, str]] = []
        keep = []
        for i, msg in enumerate(self.raw):
            if msg is not None:
                try:
                    event = parse(msg.data)
                except Malformed as err:
                    refused.append((msg, str(err)))
                    continue
                self.payloads[i] = _canonical(event, self.seqs[i])
                self.raw[i] = None
            keep.append(i)
        self._keep(keep)
        self.canonical = True
        return refused

    def _keep(self, keep: list[int]) -> None:
        self.payloads = [self.payloads[i] for i in keep]
        self.raw = [self.raw[i] for i in keep]
        self.events = [self.events[i] for i in keep]
        self.seqs = [self.seqs[i] for i in keep]
        self.lines = sum(n for _, _, n in self.events)

    def token(self, salt: bytes = b"") -> str:
        """insert_deduplication_token: the same batch (same events, same order) with the same salt
        gets the same one. The consumer salts it per process: see `Consumer.salt`."""
        digest = hashlib.blake2b(digest_size=16, key=salt)
        for seq in self.seqs:
            digest.update(seq.to_bytes(8, "little"))
        digest.update(len(self.payloads).to_bytes(8, "little"))
        digest.update(b"canonical" if self.canonical else b"as-published")
        return "aigw-usage-" + digest.hexdigest()
