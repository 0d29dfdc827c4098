"""The worker service: a NATS connection, two subscriptions, and the `Worker` behind them.

* `WORKER_CHAT` in the `WORKER_QUEUE` queue group: routed envelopes. The message's own reply
  subject is the router's "bounce" subject and is ignored; events go to the envelope's `reply`.
* `CHAT_CANCEL`, without a queue group (every worker hears every cancel): the one running the
  request stops it, which closes its upstream connection.

Startup connects, picks the event publisher (`bus.bus_for`), makes sure the usage stream exists,
and only then subscribes. Shutdown unsubscribes from new requests first, then drains.
"""

from __future__ import annotations

from typing import Any, Literal

from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from aigw_contracts import subjects

from .bus import bus_for
from .settings import WorkerSettings
from .upstream import Upstream
from .worker import Worker

HotPath = Literal["raw", "broker"]


def create_app(
    settings: WorkerSettings, upstream: Upstream | None = None, hot_path: HotPath = "raw"
) -> tuple[FastStream, NatsBroker, Worker]:
    """The worker app; faststream runs its lifecycle (connect, signals, shutdown hooks).

    `hot_path="raw"` subscribes `WORKER_CHAT` and `CHAT_CANCEL` with nats-py directly: measured
    here, a faststream subscriber costs about 100 µs of CPU per message (dependency injection,
    middlewares, and a hop through an anyio worker thread for every message) against about 7 µs
    for a raw one. Service tests use `hot_path="broker"`, which feeds the same `Worker.submit` and
    `Worker.cancel` from faststream subscribers, so faststream's TestNatsBroker can drive them in
    memory.
    """
    broker = NatsBroker(
        settings.nats_url,
        logger=None,
        name=f"aigw-worker-{settings.worker_id}",
        max_reconnect_attempts=-1,  # a worker outlives NATS restarts
        reconnect_time_wait=1,  # seconds
    )
    worker = Worker(settings, upstream)
    raw_chat: list[Subscription] = []
    broker_chat: list[Any] = []

    if hot_path == "broker":
        chat = broker.subscriber(subjects.WORKER_CHAT, queue=subjects.WORKER_QUEUE, no_reply=True)

        @chat
        async def on_chat(msg: NatsMessage) -> None:
            worker.submit(msg.body)

        broker_chat.append(chat)

        @broker.subscriber(subjects.CHAT_CANCEL, no_reply=True)
        async def on_cancel(msg: NatsMessage) -> None:
            worker.cancel(msg.body)

    app = FastStream(broker, logger=None)

    @app.on_startup
    async def start() -> None:
        await broker.connect()
        await worker.start(bus_for(broker, settings.event_publisher))

    @app.after_startup
    async def subscribe_hot_path() -> None:
        if hot_path != "raw":
            return
        nc = broker.connection

        async def on_chat(msg: Msg) -> None:
            worker.submit(msg.data)

        async def on_cancel(msg: Msg) -> None:
            worker.cancel(msg.data)

        # Cancels first: a request must never be running here while its cancel cannot reach us.
        await nc.subscribe(subjects.CHAT_CANCEL, cb=on_cancel)
        raw_chat.append(await nc.subscribe(subjects.WORKER_CHAT, queue=subjects.WORKER_QUEUE, cb=on_chat))
        await nc.flush()

    @app.on_shutdown
    async def drain() -> None:
        # New requests go to other workers from now on; cancels keep arriving until the end.
        if hot_path == "raw":
            for sub in raw_chat:
                await sub.unsubscribe()
            raw_chat.clear()
        for subscriber in broker_chat:
            await subscriber.stop()
        await worker.shutdown(settings.shutdown_grace)

    return app, broker, worker
