"""The request log path against a real nats-server and chDB: every event stored once whatever is
published or delivered twice, malformed ones dead-lettered, and the query joins tokens and cost."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from aigw_contracts import streams, subjects, usage
from aigw_contracts.requestlog import RequestLogEvent, RequestLogQuery
from aigw_devstack.nats import NatsServer
from aigw_metering import requestlog, sample

from .conftest import connect, eventually, publish, running, settings_for


def _event(request_id: str, status: int, tenant: str = "acme", **fields: object) -> RequestLogEvent:
    return RequestLogEvent.model_validate(
        {
            "request_id": request_id,
            "tenant": tenant,
            "method": "POST",
            "path": "/v1/chat/completions",
            "status": status,
            "started_at": datetime.now(UTC) - timedelta(seconds=5),
            "latency_ms": 12.5,
            **fields,
        }
    )


async def _publish(js: object, events: list[RequestLogEvent]) -> None:
    """One event per message (a message may hold one)."""
    for event in events:
        await js.publish(  # type: ignore[attr-defined]
            event.subject(), event.model_dump_json().encode(), headers={"Nats-Msg-Id": event.msg_id()}
        )


async def _publish_batch(js: object, events: list[RequestLogEvent], batch_id: str) -> None:
    """As the edge does: one tenant's events in one message, a JSON array."""
    body = b"[" + b",".join(e.model_dump_json().encode() for e in events) + b"]"
    await js.publish(events[0].subject(), body, headers={"Nats-Msg-Id": batch_id})  # type: ignore[attr-defined]


async def _all_acked(js: object) -> None:
    """Nothing pending or unacked on the request log's durable (acks follow the insert, unawaited)."""

    async def settled() -> bool:
        info = await js.consumer_info(streams.REQUESTS_STREAM, subjects.REQUESTS_DURABLE)  # type: ignore[attr-defined]
        return (info.num_pending, info.num_ack_pending) == (0, 0)

    await eventually(settled, what="every event acked")


async def test_every_request_is_stored_once_and_listed_with_its_tokens_and_cost(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    billed = sample.event("acme", tokens=(100, 40, 20))
    events = [
        _event(billed.request_id, 200, gateway="support:ab12", model="support", key_id="k1", ttft_ms=3.0),
        _event("r-401", 401, tenant="", error_code="invalid_api_key"),
        _event("r-429", 429, gateway="support:ab12", error_code="rate_limit_exceeded"),
        _event(
            "r-502", 502, tenant="other", gateway="faq:cd34", error_code="upstream_error", fallback="@b/m"
        ),
    ]
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with running(settings) as service:
        async with connect(fresh_nats.url) as nc:
            js = nc.jetstream()
            await publish(js, [billed])
            await _publish_batch(js, events[:1] + events[2:3], "batch-1")  # acme's, as the edge sends
            await _publish(js, [events[1], events[3]])
            # A republish with the same id inside the window: JetStream drops it.
            await _publish_batch(js, events[:1] + events[2:3], "batch-1")
            await js.publish(subjects.requests_subject("acme"), b'{"request_id": 1}')  # malformed
            await eventually(lambda: service.health.request_log_dead == 1, what="malformed dead-lettered")
            await eventually(lambda: service.health.inserted_lines == 3, what="usage stored")
            await eventually(lambda: service.health.request_log_rows == 4, what="request log stored")
            # The same request again under another msg id, in a later batch (a producer republishing
            # past the window): stored, and collapsed by the table (reads use FINAL).
            copy = events[1]
            await js.publish(copy.subject(), copy.model_dump_json().encode(), headers={"Nats-Msg-Id": "x"})
            await eventually(lambda: service.health.request_log_rows == 5, what="the copy stored")
            await _all_acked(js)
            dead = await js.get_last_msg(streams.USAGE_DEAD_STREAM, subjects.USAGE_DEAD_LETTER)
            assert "request_id" in (dead.headers or {})[usage.DEAD_REASON]

        store = service.store
        everyone = requestlog.run(store, RequestLogQuery(tenant=None))
        assert sorted(r.request_id for r in everyone.rows) == sorted(e.request_id for e in events)
        ok = next(r for r in everyone.rows if r.status == 200)
        assert (ok.input_tokens, ok.output_tokens, ok.cost) == (120, 40, billed.total())
        assert (ok.gateway, ok.key_id, ok.ttft_ms, ok.stream) == ("support:ab12", "k1", 3.0, False)

        acme = requestlog.run(store, RequestLogQuery(tenant="acme"))
        assert {r.request_id for r in acme.rows} == {billed.request_id, "r-429"}
        errors_4xx = requestlog.run(store, RequestLogQuery(tenant=None, status="4xx"))
        assert {(r.status, r.error_code) for r in errors_4xx.rows} == {
            (401, "invalid_api_key"),
            (429, "rate_limit_exceeded"),
        }
        by_name = requestlog.run(store, RequestLogQuery(tenant=None, gateway="faq"))
        assert [(r.request_id, r.fallback, r.cost) for r in by_name.rows] == [("r-502", "@b/m", Decimal(0))]
        assert requestlog.run(store, RequestLogQuery(tenant=None, status="502")).rows[0].request_id == "r-502"
        page = requestlog.run(store, RequestLogQuery(tenant=None, limit=2))
        assert len(page.rows) == 2 and page.truncated
        past = requestlog.run(
            store, RequestLogQuery(tenant=None, until=datetime.now(UTC) - timedelta(minutes=5))
        )
        assert past.rows == []
        physical = store.query(f"SELECT count() FROM {store.requests_table}", {}).result_rows[0][0]
        assert physical in (4, 5)  # the copy under another msg id, until parts merge; FINAL reads 4


async def test_request_log_waits_in_the_stream_while_the_store_is_down(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with running(settings) as service:
        store = service.store
        real_insert = store.insert
        refused: list[str] = []

        def failing(block: bytes, token: str, table: str | None = None) -> None:
            if table == store.requests_table and len(refused) < 3:
                refused.append(token)
                from aigw_metering.store import StoreUnavailable

                raise StoreUnavailable("down for the test")
            real_insert(block, token, table)

        store.insert = failing  # type: ignore[method-assign]
        async with connect(fresh_nats.url) as nc:
            js = nc.jetstream()
            await _publish(js, [_event("r-1", 200), _event("r-2", 503)])
            await eventually(lambda: service.health.request_log_rows == 2, what="stored after the outage")
            await _all_acked(js)
        assert len(refused) == 3 and len(set(refused)) == 1  # the same batch, the same dedup token
        rows = requestlog.run(store, RequestLogQuery(tenant="acme")).rows
        assert sorted(r.status for r in rows) == [200, 503]


async def test_a_dedup_token_left_by_a_killed_instance_cannot_swallow_the_redelivered_requests(
    fresh_nats: NatsServer, chdb_dir: Path, database: str
) -> None:
    """As for usage (`test_metering_consumer`): a process killed after ClickHouse recorded its
    batch's dedup token but before the part was committed leaves the token without the rows; the
    next process forms the same batch from the redelivery. Tokens are salted per process, so that
    batch is stored, not dropped as a duplicate and acked. (The token here is the unsalted one the
    consumer used before: it swallowed every row.)"""
    events = [_event(f"r-{i}", 200) for i in range(5)]
    settings = settings_for(fresh_nats.url, f"chdb://{chdb_dir}", database)
    async with connect(fresh_nats.url) as nc:
        js = nc.jetstream()
        async with running(settings) as service:  # declares the stream, the durable and the tables
            pass
        await _publish(js, events)
        dying = await js.pull_subscribe_bind(
            durable=subjects.REQUESTS_DURABLE, stream=streams.REQUESTS_STREAM
        )
        taken = await dying.fetch(len(events), timeout=5)
        assert len(taken) == len(events)  # delivered, never acked
        seqs = [m.metadata.sequence.stream for m in taken]
        rows = b"\n".join(
            json.dumps(requestlog.row(RequestLogEvent.model_validate_json(m.data), seq)).encode()
            for m, seq in zip(taken, seqs, strict=True)
        )
        store = service.store
        await asyncio.to_thread(store.open)
        await asyncio.to_thread(store.insert, rows, requestlog._token(seqs, b""), store.requests_table)
        table = store.requests_table
        store.query(f"ALTER TABLE {table} DELETE WHERE 1", {}, settings={"mutations_sync": 2})
        await asyncio.to_thread(store.close)
        async with running(settings) as service:
            await _all_acked(js)
            stored = requestlog.run(service.store, RequestLogQuery(tenant=None))
    assert sorted(r.request_id for r in stored.rows) == sorted(e.request_id for e in events)
