"""The request log: its durable consumer (stream → ClickHouse `request_log`) and its query.

The same path as usage, smaller: pull (`pull.Puller`) from the request log stream, validate each
message (a JSON array of `RequestLogEvent`s, one tenant's from one edge in one 20 ms window, or a
single event; a message that does not validate is dead-lettered whole with the reason, like a
usage event), insert the batch with an `insert_deduplication_token` derived from its stream
sequences, and ack only after the insert. While the store is down the batch is retried with
backoff and kept alive with in-progress acks; nothing is acked, nothing is lost.

Exactly once, as for usage: the edge publishes with `Nats-Msg-Id` (one per batch: JetStream drops
a republish inside the duplicate window), an insert holds one copy per request id, a retried insert carries the
same token, and the table (ReplacingMergeTree on the request) collapses what still gets through;
every read uses FINAL. Request log events are one small row each, so this consumer validates
through the model rather than the usage consumer's hand-checked fast path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import TypeAdapter, ValidationError

from aigw_contracts import skus
from aigw_contracts.requestlog import RequestLogEvent, RequestLogQuery, RequestLogReport, RequestLogRow

from .consumer import dead_letter, delivery
from .health import Health
from .pull import Puller
from .settings import MeteringSettings
from .store import Store, StoreUnavailable

log = logging.getLogger("aigw.metering.requests")


_BATCH: TypeAdapter[list[RequestLogEvent]] = TypeAdapter(list[RequestLogEvent])


def parse(data: bytes) -> list[RequestLogEvent]:
    """A message's events: the edge sends a JSON array per tenant and batch; one object is one
    event. Raises ValidationError (the message is then dead-lettered whole)."""
    if data.lstrip()[:1] == b"[":
        return _BATCH.validate_json(data)
    return [RequestLogEvent.model_validate_json(data)]


def row(event: RequestLogEvent, seq: int) -> dict[str, Any]:
    """The event as a `request_log` row (JSONEachRow)."""
    data = event.model_dump(mode="json")
    data["ts"] = data.pop("started_at")
    data["stream_seq"] = seq
    return data


class RequestLogConsumer:
    def __init__(
        self, settings: MeteringSettings, store: Store, health: Health, js: JetStreamContext, puller: Puller
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.js = js
        self.puller = puller
        self._held: list[Msg] = []  # received and not yet acked
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.salt = secrets.token_bytes(16)  # of this process's dedup tokens (`_token`)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="metering-requests")

    async def stop(self) -> None:
        """Stop pulling; a batch being inserted finishes within the grace, the rest goes back."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), self.settings.metering_shutdown_grace_s)
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for msg in [*self._held, *self.puller.take()]:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
        self._held = []

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            msgs = await self._collect()
            if not msgs:
                continue
            self._held = msgs
            rows: list[bytes] = []
            seqs: list[int] = []
            seen: set[str] = set()
            dead: list[tuple[Msg, str]] = []
            for msg in msgs:
                seq = delivery(msg)[0]
                try:
                    events = parse(msg.data)
                except ValidationError as err:
                    first = err.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "event"
                    dead.append((msg, f"invalid request log event: {where}: {first['msg']}"))
                    continue
                seqs.append(seq)
                for event in events:
                    if event.request_id in seen:
                        continue  # delivered twice into one batch: stored (and acked) once
                    seen.add(event.request_id)
                    rows.append(json.dumps(row(event, seq)).encode())
            for msg, reason in dead:
                if await dead_letter(self.js, msg, reason, kind="requests"):
                    self.health.request_log_dead += 1
                msgs.remove(msg)
            if rows and not await self._store(b"\n".join(rows), _token(seqs, self.salt)):
                return  # stopping: `stop` gives the held events back
            for msg in msgs:
                with contextlib.suppress(nats.errors.Error):
                    await msg.ack()  # a lost ack means a redelivery: the table collapses the copy
            self.health.request_log_rows += len(rows)
            self._held = []

    async def _collect(self) -> list[Msg]:
        """Up to a batch of events: as many as arrive within `metering_batch_delay_s` of the first."""
        s, puller = self.settings, self.puller
        loop = asyncio.get_running_loop()
        msgs: list[Msg] = []
        deadline: float | None = None
        while len(msgs) < s.metering_fetch:
            if not await puller.ready(s.metering_fetch, deadline, self._stopping):
                break
            if deadline is None:
                deadline = loop.time() + s.metering_batch_delay_s
            msgs.extend(puller.take(s.metering_fetch - len(msgs)))
        return msgs

    async def _store(self, block: bytes, token: str) -> bool:
        """Insert until it is stored (True) or the service stops (False)."""
        s = self.settings
        loop = asyncio.get_running_loop()
        attempt = 0
        kept_alive = loop.time()
        while True:
            try:
                if not self.store.is_open:  # the usage consumer opens and migrates it; so may we
                    await asyncio.to_thread(self.store.open)
                await asyncio.to_thread(self.store.insert, block, token, self.store.requests_table)
                return True
            except StoreUnavailable as err:
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "request log store unavailable; events stay in JetStream",
                        extra={"error": str(err), "attempt": attempt, "held_events": len(self._held)},
                    )
            if self._stopping.is_set():
                return False
            delay = min(s.metering_backoff_max_s, s.metering_backoff_initial_s * 2 ** (attempt - 1))
            await self._sleep(delay * random.uniform(0.8, 1.2))
            if loop.time() - kept_alive > s.metering_ack_wait_s / 3:
                kept_alive = loop.time()
                for msg in self._held:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()


def _token(seqs: list[int], salt: bytes) -> str:
    """The batch's insert_deduplication_token, salted per process as the usage consumer's is
    (`Consumer.salt`): a token a killed process left must not swallow its redelivered batch."""
    digest = hashlib.blake2b(digest_size=16, key=salt)
    for seq in seqs:
        digest.update(seq.to_bytes(8, "little"))
    return "aigw-requests-" + digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Queries (`GET /v1/requests`)

_COLUMNS = (
    "request_id, tenant, key_id, method, path, status, error_code, model, gateway, gateway_id, fallback, "
    "stream, "
    "ts AS started_at, latency_ms, ttft_ms, request_payload, response_payload"
)
_SETTINGS = {"do_not_merge_across_partitions_select_final": 1}  # copies share ts: one partition
_INPUT_SKUS = [skus.CHAT_IN, skus.CHAT_IN_CACHED]


def build_sql(query: RequestLogQuery, table: str) -> tuple[str, dict[str, Any]]:
    since, until = query.resolved_range()
    params: dict[str, Any] = {"since": since, "until": until, "limit": query.limit + 1}
    where = ["ts >= {since:DateTime64(6, 'UTC')}", "ts < {until:DateTime64(6, 'UTC')}"]
    if query.tenant is not None:
        params["tenant"] = query.tenant
        where.append("tenant = {tenant:String}")
    if query.gateway is not None:
        params["gateway"] = query.gateway
        where.append(
            "(gateway = {gateway:String} OR gateway_id = {gateway:String} "
            "OR startsWith(gateway, concat({gateway:String}, ':')))"
        )
    if query.status is not None:
        if query.status.endswith("xx"):
            params["status_class"] = int(query.status[0])
            where.append("intDiv(status, 100) = {status_class:UInt8}")
        else:
            params["status"] = int(query.status)
            where.append("status = {status:UInt16}")
    sql = (
        f"SELECT {_COLUMNS} FROM {table} FINAL WHERE {' AND '.join(where)} "
        "ORDER BY ts DESC, request_id DESC LIMIT {limit:UInt32}"
    )
    return sql, params


def usage_sql(table: str) -> str:
    """Tokens and cost of the listed requests, from their usage lines."""
    return (
        "SELECT request_id, sumIf(quantity, sku IN {input:Array(String)}) AS input_tokens, "
        "sumIf(quantity, sku = {output:String}) AS output_tokens, sum(amount) AS cost "
        f"FROM {table} FINAL WHERE request_id IN {{ids:Array(String)}} AND ts >= {{since:DateTime64(6, 'UTC')}} "
        "GROUP BY request_id"
    )


def run(store: Store, query: RequestLogQuery) -> RequestLogReport:
    """Blocking (run in a thread); raises StoreUnavailable."""
    sql, params = build_sql(query, store.requests_table)
    result = store.query(sql, params, settings=_SETTINGS)
    names = list(result.column_names)
    records = [dict(zip(names, raw, strict=True)) for raw in result.result_rows]
    truncated = len(records) > query.limit
    records = records[: query.limit]
    usage: dict[str, tuple[int, int, Decimal]] = {}
    if records:
        found = store.query(
            usage_sql(store.table),
            {
                "ids": [r["request_id"] for r in records],
                "input": _INPUT_SKUS,
                "output": skus.CHAT_OUT,
                "since": params["since"],
            },
            settings=_SETTINGS,
        )
        usage = {r[0]: (int(r[1]), int(r[2]), Decimal(r[3])) for r in found.result_rows}
    rows = []
    for record in records:
        started = record["started_at"]
        record["started_at"] = started.replace(tzinfo=UTC) if isinstance(started, datetime) else started
        tokens_in, tokens_out, cost = usage.get(record["request_id"], (0, 0, Decimal(0)))
        rows.append(
            RequestLogRow.model_validate(
                {**record, "input_tokens": tokens_in, "output_tokens": tokens_out, "cost": cost}
            )
        )
    return RequestLogReport(
        tenant=query.tenant, since=params["since"], until=params["until"], rows=rows, truncated=truncated
    )
