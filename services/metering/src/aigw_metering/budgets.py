"""Budgets into ClickHouse: metering's second, small consumer, of the spend stream's `BudgetSet`
events, so the dashboards can draw each budget against the spend the usage lines hold.

Low volume (an operator's changes), so it is simple: pull a batch, insert it, acknowledge it after
the insert (a failed insert leaves the batch unacknowledged: JetStream delivers it again after its
ack wait). A duplicate delivery writes a row with the same key and version, which
ReplacingMergeTree keeps once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError

from aigw_contracts import streams, subjects
from aigw_contracts.spend import BudgetSet
from aigw_runtime.spend import ensure_spend_stream

from .pull import Puller
from .store import Store

log = logging.getLogger("aigw.metering.budgets")

ACK_WAIT_S = 30.0
TABLE = "spend_budgets"


def rows(events: list[BudgetSet]) -> bytes:
    """The events as `spend_budgets` rows, JSONEachRow (amounts as exact decimal strings)."""
    lines = []
    for e in events:
        row = {
            "tenant": e.tenant,
            "scope": e.scope,
            "account": e.account,
            "period": e.period,
            "budget": str(e.budget if e.budget is not None else 0),
            "removed": e.budget is None,
            "at": e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
            "event_id": e.id,
        }
        lines.append(json.dumps(row))
    return ("\n".join(lines) + "\n").encode()


class Budgets:
    """Consumes `BudgetSet` events into `<db>.spend_budgets` until `stop`."""

    def __init__(self, nc: NATS, js: JetStreamContext, store: Store, retry_s: float = 1.0) -> None:
        self.nc, self.js, self.store = nc, js, store
        self.retry_s = retry_s
        self._task: asyncio.Task[None] | None = None
        self._puller: Puller | None = None

    async def start(self) -> None:
        await ensure_spend_stream(self.js)
        config = ConsumerConfig(
            durable_name=subjects.METERING_SPEND_DURABLE,
            filter_subject=subjects.SPEND_BUDGET_WILDCARD,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S,
            max_deliver=-1,
        )
        try:
            await self.js.add_consumer(streams.SPEND_STREAM, config)
        except BadRequestError as err:  # changed by an operator: used as it is
            log.warning("could not update the budgets consumer", extra={"error": err.description})
        self._puller = Puller(self.nc, streams.SPEND_STREAM, subjects.METERING_SPEND_DURABLE)
        await self._puller.start()
        self._task = asyncio.create_task(self._run(self._puller), name="aigw-metering-budgets")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._puller is not None:
            await self._puller.stop()

    async def _run(self, puller: Puller) -> None:
        while True:
            puller.forget_stale_credit()
            if puller.credit == 0:
                await puller.request(100)
            await puller.wait(1.0)
            msgs = puller.take()
            if not msgs:
                continue
            events = []
            for msg in msgs:
                try:
                    events.append(BudgetSet.model_validate_json(msg.data))
                except ValueError:
                    log.warning("ignored an unreadable budget event", extra={"subject": msg.subject})
            try:
                if events:
                    await asyncio.to_thread(self.store.insert_json, TABLE, rows(events))
            except Exception as err:  # left unacknowledged: delivered again after the ack wait
                log.warning("budgets not stored yet", extra={"error": repr(err)})
                await asyncio.sleep(self.retry_s)
                continue
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.ack()
