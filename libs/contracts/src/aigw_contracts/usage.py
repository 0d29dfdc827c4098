"""Usage events (schema version 1): what every priced action publishes to the usage stream.

One event per request and producer, holding one line per SKU. Published to JetStream with
`Nats-Msg-Id = UsageEvent.msg_id()`, so a republish inside the duplicate window is dropped; the
metering store deduplicates again on (request_id, source, sku), so a republish after the window
is not counted twice either.

On the wire (JSON) every money field of a line is an exact decimal string (`"0.000000025"`), not a
JSON number: a float cannot hold every amount exactly, and billing reads these. Parsing accepts
both strings and numbers, so events written before this rule still validate.

Also here: the usage query contract (`UsageQuery` → `UsageReport`, NATS request-reply on
`subjects.METERING_QUERY`, answered by the metering service, which owns the usage store), and the
JSON Schemas other teams read (`json_schemas()`, committed under `libs/contracts/schemas/`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    field_serializer,
    field_validator,
    model_validator,
)
from typing_extensions import TypedDict

from . import subjects
from .api import GeneratedUsage

USAGE_SCHEMA_VERSION = 1


class UsageEvent(BaseModel):
    """What one producer priced for one request: one line per SKU (amount = unit_price × quantity).

    Published to `subjects.usage_subject(tenant)` with `Nats-Msg-Id: msg_id()`; metering stores one
    ClickHouse row per line. Times are UTC; a line's billing time is `finished_at`.
    """

    stream_name: ClassVar[str] = subjects.USAGE_STREAM

    schema_version: Literal[1] = 1
    request_id: str
    # Which producer priced these lines.
    source: Literal["inference", "routing", "retrieval", "rewrite", "rerank", "cache"]
    tenant: str
    key_id: str
    gateway_id: str | None = None
    upstream: str  # upstream id, e.g. "@openai/gpt-5-mini"
    upstream_kind: Literal["catalog", "own"] = "catalog"
    model: str  # the model name the upstream was asked for
    lines: list[GeneratedUsage]
    metadata: dict[str, str] = Field(default_factory=dict)
    status: Literal["completed", "failed", "cancelled"] = "completed"
    started_at: datetime
    finished_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    latency_ms: float | None = None
    ttft_ms: float | None = None

    def msg_id(self) -> str:
        return f"{self.request_id}:{self.source}"

    def subject(self) -> str:
        return subjects.usage_subject(self.tenant)

    def total(self) -> Decimal:
        return sum((line.amount for line in self.lines), Decimal(0))

    @field_serializer("lines", when_used="json")
    def _exact_lines(self, lines: list[GeneratedUsage]) -> list[UsageLineJson]:
        return [
            {
                "sku": line.sku,
                "amount": exact_decimal(line.amount),
                "unit_price": exact_decimal(line.unit_price),
                "quantity": line.quantity,
                "description": line.description,
            }
            for line in lines
        ]


# An exact decimal written out in full (no exponent), e.g. "0.000000025".
DecimalString = Annotated[str, Field(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="an exact decimal number")]


class UsageLineJson(TypedDict):
    """One line of a usage event as it travels in JSON: money as exact decimal strings."""

    sku: str
    amount: DecimalString
    unit_price: DecimalString
    quantity: int
    description: str


def exact_decimal(value: Decimal) -> str:
    """A Decimal as a plain decimal string that parses back to an equal Decimal."""
    return format(value, "f")


def _tidy_decimal(value: Decimal) -> str:
    """Like exact_decimal, without trailing zeros ("0.01408425", not "0.014084250000000000")."""
    return format(value.normalize(), "f") if value else "0"


# Money in reports: an exact Decimal in Python, a plain decimal string in JSON.
ExactDecimal = Annotated[Decimal, PlainSerializer(_tidy_decimal, return_type=DecimalString, when_used="json")]


# ---------------------------------------------------------------------------------------------
# Usage queries: request-reply on subjects.METERING_QUERY, answered by the metering service.

UsageGroup = Literal["tenant", "gateway", "sku", "model", "bucket", "request"]
UsageBucket = Literal["hour", "day", "month"]
USAGE_GROUPS: tuple[UsageGroup, ...] = ("tenant", "gateway", "sku", "model", "bucket", "request")
DEFAULT_USAGE_RANGE = timedelta(days=30)
MAX_USAGE_ROWS = 10_000
_DEFAULT_GROUPS: tuple[UsageGroup, ...] = ("gateway", "sku")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class BilledQuery(BaseModel):
    """Whether any usage of `request_id` (of `tenant`) reached the usage stream: request-reply on
    `subjects.METERING_BILLED`, answered with `BilledAnswer`."""

    tenant: str
    request_id: str


class BilledAnswer(BaseModel):
    billed: bool


class UsageQuery(BaseModel):
    """A usage report request: NATS request-reply on `subjects.METERING_QUERY`.

    The metering service owns the usage store (a chDB path can be opened by one process only), so
    `GET /v1/usage` and `aigw usage` ask it rather than reading ClickHouse themselves.

    * `tenant`: whose usage. `None` means every tenant: only for admin keys. Metering trusts the
      bus, so the caller (the edge) decides which tenant a key may ask for.
    * `start`, `end`: the half-open UTC range `[start, end)` over each line's time (the event's
      `finished_at`). Naive datetimes are UTC. Defaults: `end` = now, `start` = `end` - 30 days.
    * `group_by`: an ordered subset of `tenant`, `gateway`, `sku`, `model`, `bucket`, `request`;
      rows come sorted by these columns in this order (requests newest first: their ids are
      UUIDv7). Empty: no rows, only the totals. `request` lists request-level rows.
    * `bucket`: the size of the `bucket` group (`hour`, `day`, `month`, in UTC).
    * `gateway`, `sku`, `model`, `request`: optional exact filters (`request`: one request's id,
      as in the `x-request-id` header and the completion's `chatcmpl-` id).
    * `limit`: at most this many rows (the report says `truncated` when there were more).

    Reply: a `UsageReport` as JSON. On failure the reply carries the header
    `headers.STATUS` (`Aigw-Status`) with an HTTP status and an `errors.ErrorBody` JSON payload:
    400 for a query that does not validate, 503 while the usage store is unavailable. No reply
    at all ("no responders") means no metering service runs: answer 503; a timeout: 504.
    """

    model_config = ConfigDict(extra="forbid")

    tenant: str | None
    start: datetime | None = None
    end: datetime | None = None
    group_by: list[UsageGroup] = Field(default_factory=lambda: list(_DEFAULT_GROUPS))
    bucket: UsageBucket = "day"
    gateway: str | None = None
    sku: str | None = None
    model: str | None = None
    request: str | None = None
    limit: int = Field(default=MAX_USAGE_ROWS, ge=1, le=MAX_USAGE_ROWS)

    @field_validator("start", "end")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @field_validator("group_by")
    @classmethod
    def _distinct(cls, value: list[UsageGroup]) -> list[UsageGroup]:
        if len(set(value)) != len(value):
            raise ValueError("group_by names a column twice")
        return value

    @model_validator(mode="after")
    def _range(self) -> UsageQuery:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("'start' must be before 'end'")
        return self

    def resolved_range(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        """The `[start, end)` range with the defaults applied."""
        end = self.end or now or datetime.now(UTC)
        start = self.start or end - DEFAULT_USAGE_RANGE
        return start, end


class UsageRow(BaseModel):
    """One group of a report. Columns not in `group_by` are null; `gateway` is null for
    requests made to a model directly (no gateway)."""

    tenant: str | None = None
    gateway: str | None = None
    sku: str | None = None
    model: str | None = None
    bucket: datetime | None = None  # the UTC start of the hour, day or month
    request: str | None = None  # a request id (UUIDv7)
    quantity: int  # summed over the group's lines (units differ per SKU: tokens, searches …)
    amount: ExactDecimal  # exact; a decimal string in JSON
    requests: int  # distinct requests with at least one line in the group


class UsageTotals(BaseModel):
    """Totals over every line the query matched (not only the rows returned)."""

    quantity: int = 0
    amount: ExactDecimal = Decimal(0)
    requests: int = 0


class UsageReport(BaseModel):
    """The answer to a `UsageQuery`: grouped rows and totals, read from one consistent query."""

    tenant: str | None
    start: datetime
    end: datetime
    group_by: list[UsageGroup]
    bucket: UsageBucket
    rows: list[UsageRow]
    totals: UsageTotals
    truncated: bool = False


# ---------------------------------------------------------------------------------------------
# Dead letters: a usage event metering cannot store is published to subjects.USAGE_DEAD_LETTER
# (kept by the stream `streams.USAGE_DEAD_STREAM`) with its original bytes as the payload and why
# in these headers, so the stream is never blocked and nothing is silently dropped.

DEAD_REASON = "Aigw-Dead-Reason"  # why metering refused it, human-readable
DEAD_SUBJECT = "Aigw-Dead-Subject"  # the subject it was published to
DEAD_SEQUENCE = "Aigw-Dead-Seq"  # its sequence in the usage stream


# ---------------------------------------------------------------------------------------------
# JSON Schemas for other teams (committed under libs/contracts/schemas/, checked by a test).

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
_SCHEMA_BASE = "https://aigw.dev/schemas/"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema: what travels on the wire (serialization form)."""
    from .requestlog import RequestLogEvent, RequestLogReport  # it builds on this module

    out: dict[str, dict[str, Any]] = {}
    models: tuple[tuple[str, type[BaseModel], str], ...] = (
        (f"usage-event.v{USAGE_SCHEMA_VERSION}.json", UsageEvent, "serialization"),
        ("usage-query.v1.json", UsageQuery, "validation"),
        ("usage-report.v1.json", UsageReport, "serialization"),
        ("request-log-event.v1.json", RequestLogEvent, "serialization"),
        ("request-log-report.v1.json", RequestLogReport, "serialization"),
    )
    for name, model, mode in models:
        schema = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
        out[name] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": _SCHEMA_BASE + name,
            **schema,
        }
    return out


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Regenerate the committed schema files (after changing a model above):

    uv run python -c "from aigw_contracts.usage import write_schemas; write_schemas()"
    """
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / name
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
