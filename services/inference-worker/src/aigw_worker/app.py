"""The worker service: two subscriptions on the runtime's service loop, and the `Worker` behind them.

* `WORKER_CHAT` in the `WORKER_QUEUE` queue group: routed envelopes. The message's own reply
  subject is the router's "bounce" subject and is ignored; events go to the envelope's `reply`.
* `CHAT_CANCEL`, without a queue group (every worker hears every cancel): the one running the
  request stops it, which closes its upstream connection. Subscribed first and kept until the very
  end: a request must never run here while its cancel cannot reach us.

Startup makes sure the usage stream exists before subscribing. Shutdown unsubscribes from new
requests first (NATS hands them to other workers), lets running ones finish within the grace, then
publishes the usage still queued.
"""

from __future__ import annotations

from nats.aio.msg import Msg

from aigw_contracts import subjects
from aigw_runtime.service import Service
from aigw_runtime.spend import SpendAccounts, ensure_spend_stream
from aigw_runtime.usage_publisher import JetStreamUsageBus

from .settings import WorkerSettings
from .spend import SpendControl
from .upstream import Upstream
from .worker import Worker


def create_app(settings: WorkerSettings, upstream: Upstream | None = None) -> tuple[Service, Worker]:
    service = Service(
        "worker",
        settings.worker_id,
        settings.nats_url,
        health_host=settings.health_host,
        health_port=settings.health_port,
        # The worker ends its own requests at its grace (`Worker.shutdown`); the loop waits for that.
        shutdown_grace=0,
    )
    worker = Worker(settings, upstream)

    async def start() -> None:
        usage = JetStreamUsageBus(service.bus.nc)
        await usage.ensure_usage_stream()
        spend = None
        if settings.spend_enabled:
            js = service.bus.nc.jetstream()
            await ensure_spend_stream(js)
            accounts = await SpendAccounts.open(js)
            await accounts.watch()
            service.bus.on_reconnect.append(accounts.reconnected)
            spend = SpendControl(accounts, js, settings)
        await worker.start(service.bus, usage, spend)

    async def on_chat(msg: Msg) -> None:
        worker.submit(msg.data)  # parses and starts a task: the subscription never waits

    async def on_embed(msg: Msg) -> None:
        worker.embed(msg.data, msg.reply)

    async def on_cancel(msg: Msg) -> None:
        worker.cancel(msg.data)

    async def drain() -> None:
        await worker.shutdown(settings.shutdown_grace)

    service.on_start.append(start)
    service.on_stop.append(drain)
    service.checks["accepting"] = lambda: worker.accepting
    service.ready_fields = {"max_inflight": settings.max_inflight}
    service.route(subjects.CHAT_CANCEL, on_cancel, takes_work=False)
    service.route(subjects.WORKER_CHAT, on_chat, queue=subjects.WORKER_QUEUE)
    service.route(subjects.WORKER_EMBED, on_embed, queue=subjects.WORKER_QUEUE)
    return service, worker
