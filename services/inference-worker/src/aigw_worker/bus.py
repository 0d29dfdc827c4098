"""What the request logic needs of NATS: stream events out, request-reply to other services.

The production implementation is the runtime's `aigw_runtime.bus.Bus` (raw nats-py, size-checked
publishes, one error mapping for request-reply); the protocol keeps the request logic independent
of it, so it can be exercised without a connection.
"""

from __future__ import annotations

from typing import Protocol

from nats.aio.msg import Msg


class Bus(Protocol):
    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        """Publish one message (core NATS, fire and forget); failures raise `GatewayError`s."""

    async def request(self, subject: str, payload: bytes, within: float, service: str, doing: str) -> Msg:
        """A request-reply to another service. No responders is a 503, no answer `within` seconds a
        504, an error answer the `GatewayError` it carries."""

    async def send_reply(self, reply: str, payload: bytes, headers: dict[str, str] | None) -> None:
        """Answer a request-reply message (an embedding job's answer); one too large for the bus
        becomes that error."""

    @property
    def max_payload(self) -> int:
        """The largest message the server takes."""
