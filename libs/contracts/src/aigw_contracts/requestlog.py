"""The request log (schema version 1): one event per HTTP request the edge answered.

Usage events say what was billed; these say what every client saw, refusals (401, 403, 404, 413,
429) and failures (502, 503, 504, a client that left: 499) included, which usage never sees. The
edge publishes them to `subjects.requests_subject(tenant)` gathered per tenant for 20 ms, as one
message holding a JSON array of events (a message may also hold one event, as an object), with a
`Nats-Msg-Id` unique to the batch, so a republish inside the stream's duplicate window is dropped;
metering stores each event in ClickHouse (`request_log`, a ReplacingMergeTree keyed on the
request: a copy delivered twice collapses, every read uses FINAL).

Tokens and cost are not repeated here: the usage lines of the same request id hold them exactly,
and `GET /v1/requests` joins them in. Payloads are captured only for gateways that opt in
(`Gateway.log_payloads`), redacted by the edge before they leave it.

Also here: `RequestLogQuery` → `RequestLogReport`, request-reply on `subjects.METERING_REQUESTS`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import streams, subjects
from .usage import ExactDecimal

REQUEST_LOG_SCHEMA_VERSION = 1
DEFAULT_REQUESTS_RANGE = timedelta(days=1)
MAX_REQUEST_ROWS = 1_000


class RequestLogEvent(BaseModel):
    """What one request got, as the edge saw it. Times are UTC; `latency_ms` runs from the request's
    arrival to its last byte; `ttft_ms` (streams only) to the first event relayed."""

    stream_name: ClassVar[str] = streams.REQUESTS_STREAM

    schema_version: Literal[1] = 1
    request_id: str
    tenant: str = ""  # empty when refused before a key said whose it was
    key_id: str = ""
    edge_id: str = ""
    method: str
    path: str
    status: int  # the HTTP status the client got; 499: it left before the answer
    error_code: str = ""  # the OpenAI-shaped error's code (or how the request ended), "" on success
    model: str = ""  # the `model` the client asked for
    gateway: str = ""  # the gateway's slug, when one answered
    gateway_id: str = ""  # and its id (usage lines name gateways by id)
    fallback: str = ""  # the fallback upstream that answered, when the gateway's own failed
    stream: bool = False
    started_at: datetime
    latency_ms: float
    ttft_ms: float | None = None
    request_payload: str | None = None  # only for gateways with log_payloads, redacted
    response_payload: str | None = None

    def msg_id(self) -> str:
        return f"request:{self.request_id}"

    def subject(self) -> str:
        return subjects.requests_subject(self.tenant)


# ---------------------------------------------------------------------------------------------
# Queries: request-reply on subjects.METERING_REQUESTS, answered by the metering service.


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RequestLogQuery(BaseModel):
    """Requests of a tenant (`None`: every tenant, the edge allows it to operator keys only),
    newest first, in `[since, until)` (defaults: the last day). `status` is one code (`429`) or a
    class (`4xx`, `5xx`); `gateway` a slug or a gateway's name."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None
    since: datetime | None = None
    until: datetime | None = None
    gateway: str | None = None
    status: str | None = Field(default=None, pattern=r"^(?:[1-5][0-9]{2}|[1-5]xx)$")
    limit: int = Field(default=100, ge=1, le=MAX_REQUEST_ROWS)

    @field_validator("since", "until")
    @classmethod
    def _as_utc(cls, value: datetime | None) -> datetime | None:
        return _utc(value)

    @model_validator(mode="after")
    def _range(self) -> RequestLogQuery:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("'since' must be before 'until'")
        return self

    def resolved_range(self, now: datetime | None = None) -> tuple[datetime, datetime]:
        until = self.until or now or datetime.now(UTC)
        return self.since or until - DEFAULT_REQUESTS_RANGE, until


class RequestLogRow(BaseModel):
    """One logged request, with its tokens and cost from the usage lines of the same id."""

    request_id: str
    tenant: str
    key_id: str
    method: str
    path: str
    status: int
    error_code: str
    model: str
    gateway: str
    gateway_id: str
    fallback: str
    stream: bool
    started_at: datetime
    latency_ms: float
    ttft_ms: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: ExactDecimal = Decimal(0)
    request_payload: str | None = None
    response_payload: str | None = None


class RequestLogReport(BaseModel):
    tenant: str | None
    since: datetime
    until: datetime
    rows: list[RequestLogRow]
    truncated: bool = False
