"""Usage reports over NATS request-reply (subjects.METERING_QUERY), against a real nats-server:
what the edge's GET /v1/usage and `aigw usage` ask."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from aigw_contracts import errors, headers, subjects
from aigw_contracts.usage import UsageQuery, UsageReport
from aigw_devstack.nats import NatsServer
from aigw_metering import sample

from .conftest import connect, eventually, publish, running, settings_for


async def test_reports_answer_grouped_rows_and_exact_totals_per_tenant(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    at = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    events = [
        sample.event("acme", gateway_id="gw-a", model="m1", tokens=(1000, 100, 0), at=at),
        sample.event("acme", gateway_id="gw-b", model="m2", tokens=(10, 1, 7), at=at + timedelta(hours=1)),
        sample.event("globex", gateway_id="gw-z", model="m1", tokens=(5, 5, 0), at=at),
    ]
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with running(settings) as service, connect(fresh_nats.url) as nc:
        lines = await publish(nc.jetstream(), events)
        await eventually(lambda: service.health.inserted_lines == lines, what="stored")

        async def ask(query: UsageQuery) -> UsageReport:
            reply = await nc.request(subjects.METERING_QUERY, query.model_dump_json().encode(), timeout=10)
            assert not (reply.headers or {}).get(headers.STATUS), reply.data
            return UsageReport.model_validate_json(reply.data)

        acme = await ask(UsageQuery(tenant="acme", group_by=["gateway", "sku", "model"]))
        assert {r.gateway for r in acme.rows} == {"gw-a", "gw-b"}
        assert acme.totals.amount == events[0].total() + events[1].total()
        assert sum((r.amount for r in acme.rows), Decimal(0)) == acme.totals.amount
        assert acme.totals.requests == 2
        cached = [r for r in acme.rows if r.sku == "inference.chat_completions.in.cached"]
        assert [(r.gateway, r.model, r.quantity, r.amount) for r in cached] == [
            ("gw-b", "m2", 7, Decimal("1.75E-7"))
        ]

        hourly = await ask(UsageQuery(tenant="acme", group_by=["bucket"], bucket="hour"))
        assert [(r.bucket, r.requests) for r in hourly.rows] == [(at, 1), (at + timedelta(hours=1), 1)]

        everyone = await ask(UsageQuery(tenant=None, group_by=["tenant"]))  # an admin's question
        assert [(r.tenant, r.requests) for r in everyone.rows] == [("acme", 2), ("globex", 1)]
        assert everyone.totals.amount == sum((e.total() for e in events), Decimal(0))

        # request-level rows, newest first (UUIDv7 ids), and one request's own lines
        per_request = await ask(UsageQuery(tenant="acme", group_by=["request"]))
        assert [r.request for r in per_request.rows] == sorted(
            (e.request_id for e in events[:2]), reverse=True
        )
        assert [r.amount for r in per_request.rows] == [
            e.total() for e in sorted(events[:2], key=lambda e: e.request_id, reverse=True)
        ]
        one = await ask(UsageQuery(tenant="acme", group_by=["sku"], request=events[1].request_id))
        assert {(r.sku, r.quantity) for r in one.rows} == {
            (line.sku, line.quantity) for line in events[1].lines
        }
        assert one.totals.requests == 1
        theirs = await ask(UsageQuery(tenant="acme", group_by=["sku"], request=events[2].request_id))
        assert theirs.rows == [] and theirs.totals.requests == 0  # globex's request, asked as acme

        past = await ask(UsageQuery(tenant="acme", end=at - timedelta(days=1)))
        assert past.rows == [] and past.totals.amount == 0


async def test_an_invalid_query_gets_a_400_error_body(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    async with (
        running(settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)),
        connect(fresh_nats.url) as nc,
    ):
        reply = await nc.request(
            subjects.METERING_QUERY, b'{"tenant": "a", "group_by": ["nope"]}', timeout=10
        )
        assert reply.headers == {headers.STATUS: "400"}
        body = errors.ErrorBody.model_validate_json(reply.data)
        assert body.error.type == "invalid_request_error" and body.error.param == "group_by.0"
        reply = await nc.request(subjects.METERING_QUERY, b"not json", timeout=10)
        assert reply.headers == {headers.STATUS: "400"}
