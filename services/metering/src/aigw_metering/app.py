"""The metering service: NATS connection, streams, the consumer, the query responder, health.

`MeteringService(settings).run()` is what `aigw-metering` runs; tests start the same object
in-process or the console script as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aigw_contracts import streams, subjects

from . import jetstream
from .consumer import Consumer
from .health import Health, HealthServer
from .pull import Puller
from .responder import respond
from .settings import MeteringSettings
from .store import Store, parse_dsn

log = logging.getLogger("aigw.metering")


class MeteringService:
    def __init__(self, settings: MeteringSettings, store: Store | None = None) -> None:
        self.settings = settings
        target = parse_dsn(settings.metering_dsn, settings.metering_database)
        self.store = store or Store(target, settings.metering_insert_timeout_s)
        self.health = Health(store=self.store.target.redacted)
        self.nc: NATS | None = None
        self.consumer: Consumer | None = None
        self._query_sub: Subscription | None = None
        self._health_server: HealthServer | None = None
        self._stop = asyncio.Event()

    async def start(self) -> None:
        """Connect, declare streams and the consumer, start consuming and answering queries.
        The store is opened by the consumer (and retried there): an unavailable store delays
        inserts, never the start."""
        s = self.settings
        if s.metering_health_port:
            self._health_server = HealthServer(self.health, s.metering_health_host, s.metering_health_port)
            await self._health_server.start()
        self.nc = await self._connect()
        js = self.nc.jetstream()
        await jetstream.ensure_stream(js, jetstream.usage_stream(s))
        await jetstream.ensure_stream(js, jetstream.dead_letter_stream(s))
        await jetstream.ensure_consumer(js, s)
        puller = Puller(self.nc, streams.USAGE_STREAM, subjects.METERING_DURABLE)
        await puller.start()
        self.health.nats_ok = True
        self.consumer = Consumer(s, self.store, self.health, js, puller)
        self.consumer.start()
        nc = self.nc

        async def on_query(msg: Msg) -> None:
            await respond(nc, self.store, msg)

        # With a server store every replica can answer; the queue group shares the durable's name.
        self._query_sub = await nc.subscribe(
            subjects.METERING_QUERY, queue=subjects.METERING_DURABLE, cb=on_query
        )
        await nc.flush()

    async def _connect(self) -> NATS:
        async def disconnected() -> None:
            self.health.nats_ok = False
            if not self._stop.is_set():
                log.warning("disconnected from nats")

        async def reconnected() -> None:
            self.health.nats_ok = True
            log.info("reconnected to nats")

        async def error(err: Exception) -> None:
            log.warning("nats error", extra={"error": repr(err)})

        attempt = 0
        while True:
            try:
                return await nats.connect(
                    self.settings.nats_url,
                    name="aigw-metering",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    disconnected_cb=disconnected,
                    reconnected_cb=reconnected,
                    error_cb=error,
                )
            except (nats.errors.Error, OSError) as err:
                attempt += 1
                if attempt >= 20 or self._stop.is_set():
                    raise
                log.warning("nats not reachable yet", extra={"error": repr(err), "attempt": attempt})
                await asyncio.sleep(min(0.25 * attempt, 3.0))

    def request_stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Graceful: stop answering, let the batch being inserted finish and ack it, give held
        events back to JetStream, flush acks, close the store."""
        self._stop.set()
        if self._query_sub is not None:
            with contextlib.suppress(Exception):
                await self._query_sub.unsubscribe()
        if self.consumer is not None:
            await self.consumer.stop()
        if self.nc is not None:
            # Flush, then close: drain() would wait forever on the pull subscription's queue
            # (nats-py counts fetched messages as unfinished), and every ack is out after flush.
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self._health_server is not None:
            await self._health_server.stop()
        await asyncio.to_thread(self.store.close)

    async def run(self, ready: Any = None) -> None:
        """Start, call `ready()`, run until `request_stop()`, then stop gracefully."""
        try:
            await self.start()
            if ready is not None:
                ready()
            await self.wait()
        finally:
            await self.stop()
