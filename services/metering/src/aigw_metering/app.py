"""The metering service: NATS connection, streams, the consumer, the query responder, health.

`MeteringService(settings).run()` is what `aigw-metering` runs; tests start the same object
in-process or the console script as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client as NATS

from aigw_contracts import streams, subjects
from aigw_runtime.service import Service
from aigw_runtime.usage_publisher import requests_stream_config

from . import billed, jetstream
from .budgets import Budgets
from .consumer import Consumer
from .health import Health
from .pull import Puller
from .requestlog import RequestLogConsumer
from .responder import answer, answer_requests
from .settings import MeteringSettings
from .store import Store, parse_dsn

log = logging.getLogger("aigw.metering")


class MeteringService:
    """Metering on the runtime's service loop: the usage consumer starts with it, the query
    responder is its one route, and readiness means NATS connected and the store taking inserts."""

    def __init__(self, settings: MeteringSettings, store: Store | None = None) -> None:
        self.settings = settings
        target = parse_dsn(settings.metering_dsn, settings.metering_database)
        self.store = store or Store(target, settings.metering_insert_timeout_s)
        self.health = Health(store=self.store.target.redacted)
        self.service = Service(
            "metering",
            "metering",
            settings.nats_url,
            health_host=settings.metering_health_host,
            health_port=settings.metering_health_port or None,
            shutdown_grace=settings.metering_shutdown_grace_s,
        )
        self.service.checks["store"] = lambda: self.health.store_ok
        self.service.details = self._details
        self.service.ready_fields = {"store": self.store.target.redacted}
        self.service.on_start.append(self._start_consumer)
        self.service.on_stop.append(self._stop_consumer)
        # With a server store every replica can answer; the queue group shares the durable's name.
        self.service.reply_route(
            subjects.METERING_QUERY,
            lambda data: answer(self.store, data),
            "usage query",
            queue=subjects.METERING_DURABLE,
        )
        self.service.reply_route(
            subjects.METERING_BILLED,
            lambda data: billed.answer(self.consumer, self.store, data),
            "billed query",
            queue=subjects.METERING_DURABLE,
        )
        self.service.reply_route(
            subjects.METERING_REQUESTS,
            lambda data: answer_requests(self.store, data),
            "request log query",
            queue=subjects.METERING_DURABLE,
        )
        self.consumer: Consumer | None = None
        self.requests: RequestLogConsumer | None = None
        self.budgets: Budgets | None = None  # budgets for the dashboards (`budgets.py`)

    @property
    def nc(self) -> NATS:
        return self.service.bus.nc

    def _details(self) -> dict[str, Any]:
        self.health.nats_ok = self.service.bus.connected
        return self.health.snapshot()

    async def _start_consumer(self) -> None:
        """Declare streams and the consumer, start consuming. The store is opened by the consumer
        (and retried there): an unavailable store delays inserts, never the start."""
        s = self.settings
        js = self.nc.jetstream()
        await jetstream.ensure_stream(js, jetstream.usage_stream(s))
        await jetstream.ensure_stream(js, jetstream.dead_letter_stream(s))
        await jetstream.ensure_consumer(js, s)
        puller = Puller(self.nc, streams.USAGE_STREAM, subjects.METERING_DURABLE)
        await puller.start()
        self.health.nats_ok = True
        self.consumer = Consumer(s, self.store, self.health, js, puller)
        self.consumer.start()
        # The request log: its own stream and durable, the same store.
        await jetstream.ensure_stream(js, requests_stream_config(s.metering_stream_replicas))
        await jetstream.ensure_consumer(js, s, streams.REQUESTS_STREAM, subjects.REQUESTS_DURABLE)
        requests_puller = Puller(self.nc, streams.REQUESTS_STREAM, subjects.REQUESTS_DURABLE)
        await requests_puller.start()
        self.requests = RequestLogConsumer(s, self.store, self.health, js, requests_puller)
        self.requests.start()
        self.budgets = Budgets(self.nc, js, self.store)
        await self.budgets.start()

    async def _stop_consumer(self) -> None:
        """Let the batch being inserted finish and ack it, give held events back to JetStream,
        flush the acks, close the store."""
        if self.requests is not None:
            await self.requests.stop()
        if self.budgets is not None:
            await self.budgets.stop()
        if self.consumer is not None:
            await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)
        await asyncio.to_thread(self.store.close)

    async def start(self) -> None:
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()

    def request_stop(self) -> None:
        self.service.request_stop()

    async def run(self) -> None:
        """Start, say ready, run until SIGTERM/SIGINT or `request_stop()`, then stop gracefully."""
        await self.service.run()
