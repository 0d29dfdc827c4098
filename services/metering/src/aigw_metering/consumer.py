"""The durable JetStream consumer: usage events → batches → ClickHouse → acks.

Flow: a collector pulls events (`pull.Puller`), validates each (`rows.parse`) and fills a batch
until it holds `batch_lines` lines or its first event is `batch_delay_s` old; an inserter (one
batch at a time, in a thread: the chDB client is blocking) stores it and only then acks its
events. The collector fills the next batch meanwhile, so validating overlaps inserting, and the
insert itself (JSON → rows, in ClickHouse) runs outside the GIL. While the store is down the inserter retries the same batch with
backoff, the collector stops after one more batch, and every held event is kept alive with
in-progress acks: nothing is acked, nothing is lost, readiness says unhealthy.

Counting each line once, against at-least-once delivery (JetStream) and republishing producers:
1. Producers publish with `Nats-Msg-Id`: JetStream drops a republish inside the duplicate window.
2. A batch has one copy of each event (`msg_id`), whatever JetStream delivered twice into it.
3. A retried insert of the same batch carries the same `insert_deduplication_token` (derived from
   its stream sequences): if the first attempt was stored but its answer lost (server timeout),
   ClickHouse drops the retry. The token is salted per process: a process killed after the
   token reached the dedup log but before its part was committed left the token without the
   rows, and its redelivered events often form the very same batch in the next process, which an
   unsalted token would have dropped as a duplicate and then acked (measured: one whole batch
   lost in a SIGKILL test). Across processes, 4 and 5 do the work.
4. Events JetStream delivers again (num_delivered > 1: the previous holder crashed, or missed the
   ack deadline, between insert and ack) are checked against the store before inserting, and
   events already stored are skipped (an event's lines are stored in one block: all or none).
   This keeps the table free of copies in the common failure, at one lookup per such batch.
5. What 1-4 cannot see (a producer republishing after the window, two replicas racing on one
   redelivery) is caught by the table: ReplacingMergeTree whose key ends (…, request_id, source)
   with sku and the hour in it, so a copy of a line has the same key; every billing read uses
   FINAL. Tokens alone can't do it (batches differ after restarts) and the table alone would keep
   copies until merges (and make count() lie); together, totals are exact and copies are rare.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import OrderedDict

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.trace import Link

from aigw_contracts import subjects, usage
from aigw_runtime import telemetry

from .health import Health
from .observe import BATCH_ROWS, INSERT_SECONDS, PENDING
from .pull import Puller
from .rows import Batch, Malformed, parse, parse_fast
from .settings import MeteringSettings
from .store import Store, StoreRefused, StoreUnavailable

log = logging.getLogger("aigw.metering")

_TENANT_AT = len(subjects.USAGE_SUBJECT_PREFIX) + 1
RECENT_REQUESTS = 200_000  # requests "was it billed?" answers from memory (minutes of traffic)


def delivery(msg: Msg) -> tuple[int, int]:
    """(stream sequence, times delivered) from a JetStream message's ack subject, the two fields
    this consumer needs, without building nats-py's full metadata objects on the hot path:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`, or with a domain and
    account hash after `$JS.ACK` (12 tokens)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[4])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[6])
    meta = msg.metadata
    return meta.sequence.stream, meta.num_delivered


async def dead_letter(js: JetStreamContext, msg: Msg, reason: str, kind: str = "usage") -> bool:
    """Publish a malformed event to the dead-letter stream with why, then ack it (True); False
    when the publish failed (it stays unacked and comes back later)."""
    seq = delivery(msg)[0]
    hdrs = {
        usage.DEAD_REASON: " ".join(reason.split())[:1000],
        usage.DEAD_SUBJECT: msg.subject,
        usage.DEAD_SEQUENCE: str(seq),
        "Nats-Msg-Id": f"aigw-{kind}-dead-{seq}",
    }
    try:
        await js.publish(subjects.USAGE_DEAD_LETTER, msg.data, headers=hdrs, timeout=5)
        await msg.ack()
    except (nats.errors.Error, TimeoutError) as err:
        log.warning("could not dead-letter an event", extra={"seq": seq, "error": repr(err)})
        return False
    log.warning("event dead-lettered", extra={"seq": seq, "kind": kind, "reason": hdrs[usage.DEAD_REASON]})
    return True


def _link(msg: Msg) -> Link | None:
    return telemetry.link_of(msg.headers)


def pending(msg: Msg) -> int | None:
    """Messages the consumer had yet to deliver when `msg` was sent (the last token of its ack
    subject: see `delivery`)."""
    tokens = (msg.reply or "").split(".")
    at = 8 if len(tokens) == 9 else 10 if len(tokens) >= 11 else None
    if at is None or not tokens[at].isdigit():
        return None
    return int(tokens[at])


class Consumer:
    def __init__(
        self,
        settings: MeteringSettings,
        store: Store,
        health: Health,
        js: JetStreamContext,
        puller: Puller,
    ) -> None:
        self.settings = settings
        self.store = store
        self.health = health
        self.js = js
        self.puller = puller
        self._held: list[Batch] = []  # received and not yet acked (or nakked), oldest first
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=1)
        self._stopping = asyncio.Event()
        self._store_lock = asyncio.Lock()
        # (tenant, request id) of the events received lately, stored or not yet: "was it billed?"
        # is answered from here first (`billed.py`), the store holds the rest.
        self.recent: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: list[asyncio.Task[None]] = []
        self._collector: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # the inserter holds no batch
        self._idle.set()
        self.salt = secrets.token_bytes(16)  # of this process's dedup tokens (docstring, 3.)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._collector = asyncio.create_task(self._collect_loop(), name="metering-collect")
        self._tasks = [
            self._collector,
            asyncio.create_task(self._insert_loop(), name="metering-insert"),
            asyncio.create_task(self._keepalive_loop(), name="metering-keepalive"),
            asyncio.create_task(self._store_loop(), name="metering-store"),
        ]

    async def stop(self) -> None:
        """Stop pulling, let the batch being inserted finish (within the grace), give the
        rest back to JetStream (nak: redelivered at once to whoever consumes next)."""
        self._stopping.set()
        if self._collector is not None:
            self._collector.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.metering_shutdown_grace_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for batch in list(self._held):
            await self._nak(batch)
        self._held.clear()
        for msg in self.puller.take():  # delivered to us after the last batch closed
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        delay = min(s.metering_backoff_max_s, s.metering_backoff_initial_s * 2 ** max(attempt - 1, 0))
        return delay * random.uniform(0.8, 1.2)

    # ------------------------------------------------------------------ collecting
    async def _collect_loop(self) -> None:
        while not self._stopping.is_set():
            batch = Batch()
            self._held.append(batch)
            self._count_held()
            await self._fill(batch)
            if len(batch) == 0:
                self._held.remove(batch)
                continue
            await self._queue.put(batch)

    async def _fill(self, batch: Batch) -> None:
        s = self.settings
        puller = self.puller
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while batch.lines < s.metering_batch_lines and len(batch) < s.metering_batch_lines:
            # Keep about one pull's worth of messages on the way while this batch has room.
            if not await puller.ready(s.metering_fetch, deadline, self._stopping):
                return
            if deadline is None:
                deadline = loop.time() + s.metering_batch_delay_s
                batch.first_at = time.monotonic()
            # Take no more events than the batch has lines left (an event has at least one line).
            msgs = puller.take(max(1, s.metering_batch_lines - batch.lines))
            for msg in msgs:
                self._take(msg, batch)
            if msgs:
                left = pending(msgs[-1])
                if left is not None:
                    PENDING.set(left)
            self._count_held()

    def _take(self, msg: Msg, batch: Batch) -> None:
        seq, delivered = delivery(msg)
        fast = parse_fast(msg.data)
        if fast is not None:
            request_id = fast[0]
            added = batch.add_raw(msg, seq, *fast)
            self._seen(msg.subject[_TENANT_AT:], request_id)  # usage subjects end in the tenant
        else:
            self.health.noncanonical_events += 1
            try:
                event = parse(msg.data)
            except Malformed as err:
                batch.dead.append((msg, str(err)))
                return
            request_id = event.request_id
            added = batch.add(event, seq)
            self._seen(event.tenant, request_id)
        if not added:
            self.health.duplicates_skipped += 1
        elif delivered > 1:
            batch.redelivered.add(request_id)
        batch.msgs.append(msg)

    def _seen(self, tenant: str | None, request_id: str) -> None:
        recent = self.recent
        recent[(tenant or "", request_id)] = None
        if len(recent) > RECENT_REQUESTS:
            recent.popitem(last=False)

    # ------------------------------------------------------------------ inserting
    async def _insert_loop(self) -> None:
        while True:
            batch = await self._queue.get()
            self._idle.clear()
            try:
                await self._dead_letter(batch)
                # A batch of dead letters only has nothing to store: don't wait for the store.
                if not batch.payloads or await self._store(batch):
                    await self._ack(batch)
            finally:
                self._idle.set()

    async def _store(self, batch: Batch) -> bool:
        attempt = 0
        token: str | None = None
        while True:
            async with self._store_lock:
                try:
                    await self._open_store()
                    if token is None:
                        if batch.redelivered:
                            stored = await asyncio.to_thread(
                                self.store.stored_events, sorted(batch.redelivered)
                            )
                            skipped = batch.drop_stored(stored)
                            if skipped:
                                self.health.duplicates_skipped += skipped
                                log.info("skipped events already stored", extra={"events": skipped})
                        token = batch.token(self.salt)
                    if batch.lines:
                        await self._insert(batch, token)
                except StoreRefused as err:
                    if batch.canonical:
                        attempt += 1  # the model's own output refused: a bug; keep it, say so
                        await self._store_failed(str(err), held=sum(len(b) for b in self._held))
                    else:
                        await self._canonicalize(batch, str(err))
                        token = batch.token(self.salt)
                        continue
                except StoreUnavailable as err:
                    attempt += 1
                    await self._store_failed(str(err), held=sum(len(b) for b in self._held))
                else:
                    self.health.store_recovered()
                    return True
            if self._stopping.is_set():
                return False
            await self._sleep(self._backoff(attempt))

    async def _insert(self, batch: Batch, token: str) -> None:
        """Insert the batch, timed; with tracing, as a span linked to each event's request span."""
        began = time.perf_counter()
        if telemetry.tracing.on:
            links = [link for link in map(_link, batch.msgs) if link is not None]
            with telemetry.tracing.tracer.start_as_current_span(
                "metering.insert",
                links=links,
                attributes={"aigw.rows": batch.lines, "aigw.events": len(batch)},
            ):
                await asyncio.to_thread(self.store.insert, batch.block(), token)
        else:
            await asyncio.to_thread(self.store.insert, batch.block(), token)
        INSERT_SECONDS.observe(time.perf_counter() - began)
        BATCH_ROWS.observe(batch.lines)

    async def _canonicalize(self, batch: Batch, error: str) -> None:
        refused = batch.canonicalize()
        self.health.reserialized_batches += 1
        log.warning(
            "ClickHouse refused a batch as published; storing it re-serialized", extra={"error": error}
        )
        if refused:
            held = {id(m) for m, _ in refused}
            batch.msgs = [m for m in batch.msgs if id(m) not in held]
            batch.dead.extend(refused)
            await self._dead_letter(batch)

    async def _open_store(self) -> None:
        if not self.store.is_open:
            await asyncio.to_thread(self.store.open)
            log.info("usage store open", extra={"store": self.store.target.redacted})

    async def _store_failed(self, error: str, held: int = 0) -> None:
        self.health.store_failed(error)
        log.warning(
            "usage store unavailable; events stay in JetStream",
            extra={
                "error": error,
                "store": self.store.target.redacted,
                "attempt": self.health.consecutive_failures,
                "held_events": held,
            },
        )
        await asyncio.to_thread(self.store.close)  # reconnect (and re-migrate) on the next try

    async def _ack(self, batch: Batch) -> None:
        self._held.remove(batch)
        for msg in batch.msgs:
            with contextlib.suppress(nats.errors.Error):
                await msg.ack()  # a lost ack means a redelivery, which step 4 above absorbs
        self.health.inserted_lines += batch.lines
        self.health.inserted_events += len(batch.events)
        self.health.batches += 1
        self._count_held()

    async def _nak(self, batch: Batch) -> None:
        for msg in [*batch.msgs, *(m for m, _ in batch.dead)]:
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()

    async def _dead_letter(self, batch: Batch) -> None:
        """Malformed events go to the dead-letter stream with the reason, then are acked: they
        never block the stream. If that publish fails they stay unacked and come back later."""
        for msg, reason in batch.dead:
            if await dead_letter(self.js, msg, reason):
                self.health.dead_letters += 1
        batch.dead.clear()

    # ------------------------------------------------------------------ keeping things alive
    async def _keepalive_loop(self) -> None:
        """Held events (store down, or a long insert) get in-progress acks well before their ack
        deadline, so JetStream does not redeliver them to another replica meanwhile."""
        period = self.settings.metering_ack_wait_s / 3
        while not self._stopping.is_set():
            await self._sleep(period)
            cutoff = time.monotonic() - period
            for batch in list(self._held):
                if batch.first_at and batch.first_at < cutoff:
                    for msg in [*batch.msgs, *(m for m, _ in batch.dead)]:
                        with contextlib.suppress(nats.errors.Error):
                            await msg.in_progress()
            for msg in list(self.puller.received):  # arrived while the batches above wait
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

    async def _store_loop(self) -> None:
        """While no batch is waiting, open a closed store (so readiness recovers without traffic)
        and ping an open one (so readiness notices an outage before traffic does)."""
        s = self.settings
        await self._try_store()
        while not self._stopping.is_set():
            wait = (
                s.metering_ping_interval_s
                if self.health.store_ok
                else self._backoff(self.health.consecutive_failures)
            )
            await self._sleep(min(wait, s.metering_ping_interval_s))
            if not any(len(b) for b in self._held) and not self._store_lock.locked():
                await self._try_store()

    async def _try_store(self) -> None:
        async with self._store_lock:
            try:
                if self.store.is_open:
                    await asyncio.to_thread(self.store.ping)
                else:
                    await self._open_store()
            except StoreUnavailable as err:
                await self._store_failed(str(err))
                return
            self.health.store_recovered()

    def _count_held(self) -> None:
        self.health.held_events = sum(len(b) for b in self._held) + len(self.puller.received)
