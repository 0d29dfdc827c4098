"""Where events and usage go: the publishing seam between the request logic and NATS.

Two implementations of one small protocol (usage acks: see `aigw_runtime.usage_publisher`):

* `NatsBus` publishes with the raw nats-py client under faststream's broker. Chosen for the
  per-token path because it measured about twice as fast as `broker.publish` (see the bench script
  `bench/worker.py`): faststream runs its publish middleware chain and
  adds `content-type` and `correlation_id` headers to every message, which a token does not need.
* `BrokerBus` publishes through `broker.publish`, so the same request logic runs under faststream's
  `TestNatsBroker`, where the broker's connection is a mock.

`bus_for(broker, choice)` picks one; "auto" picks `NatsBus` exactly when the broker holds a real
nats-py connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import Header

from aigw_contracts import streams
from aigw_contracts.errors import DeadlineExceeded, Unavailable
from aigw_runtime.usage_publisher import NATS_EXPECTED_STREAM, JetStreamUsageBus, OnAck, UsageBus

log = logging.getLogger("aigw.worker.bus")

_STATUS = Header.STATUS  # how nats-py hands over a status line
_DESCRIPTION = Header.DESCRIPTION
_NO_RESPONDERS = "503"


class Bus(UsageBus, Protocol):
    async def event(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        """Publish one stream event (core NATS, fire and forget)."""

    async def ensure_usage_stream(self) -> None:
        """Create the usage stream if it is missing (never changes an existing one)."""

    async def request(self, subject: str, payload: bytes, within: float) -> tuple[dict[str, str], bytes]:
        """A request-reply to another service: the reply's headers and payload. No responders is a
        503 and no answer `within` seconds a 504, as `GatewayError`s."""


class NatsBus(JetStreamUsageBus):
    """Stream events with the raw client; usage through the shared JetStream usage bus."""

    async def event(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.nc.publish(subject, payload, headers=headers)

    async def request(self, subject: str, payload: bytes, within: float) -> tuple[dict[str, str], bytes]:
        try:
            msg = await self.nc.request(subject, payload, timeout=max(within, 0.001))
        except NoRespondersError:
            raise Unavailable(f"No service answers {subject}; try again shortly", retry_after=1) from None
        except (TimeoutError, NatsTimeout):
            raise DeadlineExceeded(f"{subject} did not answer before the request's deadline") from None
        return dict(msg.headers or {}), msg.data


class BrokerBus:
    """Through faststream's `broker.publish`, for TestNatsBroker (which answers every publish at
    once): each usage publish is awaited in a task of its own and reported like a real ack."""

    def __init__(self, broker: NatsBroker, ack_wait: float = 2.0) -> None:
        self.broker = broker
        self.ack_wait = ack_wait
        self._on_ack: OnAck | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def event(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        await self.broker.publish(payload, subject=subject, headers=headers)

    async def start_usage_acks(self, on_ack: OnAck) -> None:
        self._on_ack = on_ack

    async def request(self, subject: str, payload: bytes, within: float) -> tuple[dict[str, str], bytes]:
        try:
            msg = await self.broker.request(payload, subject=subject, timeout=max(within, 0.001))
        except TimeoutError:
            raise DeadlineExceeded(f"{subject} did not answer before the request's deadline") from None
        return dict(msg.headers or {}), bytes(msg.body)

    async def send_usage(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        task = asyncio.create_task(self._publish(token, subject, payload, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish(self, token: int, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        assert self._on_ack is not None
        hdrs = {k: v for k, v in headers.items() if k != NATS_EXPECTED_STREAM}  # `stream=` adds it
        try:
            ack = await self.broker.publish(
                payload, subject=subject, headers=hdrs, stream=streams.USAGE_STREAM, timeout=self.ack_wait
            )
        except Exception as exc:
            self._on_ack(token, False, repr(exc))
            return
        self._on_ack(token, bool(getattr(ack, "duplicate", False)), None)

    async def ensure_usage_stream(self) -> None:
        connection = self.broker.connection
        if isinstance(connection, NatsClient):
            await NatsBus(connection).ensure_usage_stream()
        # else: TestNatsBroker, which has no JetStream to prepare


def bus_for(broker: NatsBroker, choice: str = "auto") -> Bus:
    connection = broker.connection
    real = isinstance(connection, NatsClient)
    if choice == "nats" or (choice == "auto" and real):
        if not real:
            raise RuntimeError("event_publisher=nats needs a real NATS connection")
        return NatsBus(connection)
    return BrokerBus(broker)
