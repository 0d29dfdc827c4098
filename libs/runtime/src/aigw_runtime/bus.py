"""One NATS connection per service, with the publish and request-reply every service uses.

Raw nats-py, not faststream: measured on one core (`bench/bus.py`, median of 3; a 2-core AMD EPYC
VM, `nproc` 2, shared with other jobs; faststream 0.7.8, nats-py 2.16, uvloop; 160-byte JSON
requests), a faststream subscriber with a pydantic argument answering request-reply costs ≈ 170 µs
of CPU per message (dependency injection, a context and exit stack per message, the subject parsed
again for every message) against ≈ 16 µs for a nats-py callback doing the same validation and
reply, and ≈ 20 µs for a `Service` reply route (a task per request); `broker.publish` costs
≈ 18 µs against ≈ 5 µs for a raw publish (its middleware chain, plus `content-type` and
`correlation_id` headers on every message). Every request crosses three to four of these hops and
a stream publishes one message per delta batch, so this module is the only place that talks to
nats-py directly; services see `Bus`, `Outgoing` and the typed errors of `aigw_contracts.errors`.

What this layer guarantees, so no service has to remember it:
* **a publish is size-checked** against the server's `max_payload` before it is sent: an oversized
  message is a `PayloadTooLarge` (413), never a silent drop on the server;
* **a failed publish is never swallowed**: it is logged, and `send` turns it into an error event on
  the request's reply subject (`Outgoing.fail_to`), so the client learns at once instead of at its
  deadline;
* **request-reply has one error mapping**: no responders → 503 `Unavailable`, no answer in time →
  504 `DeadlineExceeded`, an `Aigw-Status` header on the answer → the `GatewayError` it names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from aigw_contracts import events, headers
from aigw_contracts.errors import (
    DeadlineExceeded,
    GatewayError,
    PayloadTooLarge,
    Unavailable,
    error_of_reply,
    error_reply,
)

from .metrics import NATS_RECONNECTS
from .natsauth import inbox_prefix_of

log = logging.getLogger("aigw.bus")

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default, used before the server said its own


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message a handler decided to send, apart from how it is sent.

    `fail_to` is the edge's reply subject of the request the message carries: if the message cannot
    be published (too large for the bus, the connection gone), the request ends there with an error
    event instead of waiting out its deadline.
    """

    subject: str
    payload: bytes
    headers: dict[str, str] | None = None
    reply: str = ""
    fail_to: str = ""


def error_outgoing(reply: str, err: GatewayError, seq: int = 0) -> Outgoing:
    """The error event ending the request whose events go to `reply`."""
    hdrs, payload = events.error_event(err, seq)
    return Outgoing(reply, payload, hdrs)


def redact_url(url: str) -> str:
    """A NATS URL fit for a log line: any user or password in it replaced."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"***@{host}", parts.path, parts.query, parts.fragment))


async def settle(nc: NatsClient) -> None:
    """Return once nats-server has processed every subscription made so far on `nc`.

    One `flush()` does not promise that in nats-py 2.16: it writes its PING straight to the socket,
    ahead of the SUB commands still waiting in the client's pending buffer, so the PONG can come
    back before the server knows the subscriptions, and a message published right then by another
    connection is dropped (measured: 1–7 of 300 such publishes lost). By the time the first PONG
    is back the buffer has been written, so the second PING goes out behind the SUBs.
    """
    await nc.flush()
    await nc.flush()


def check_size(payload: bytes, limit: int, what: str) -> None:
    """Raise `PayloadTooLarge` when `payload` cannot travel on a bus that takes `limit` bytes."""
    if len(payload) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(payload)} bytes once the gateway adds its routing data, over the "
            f"message bus limit of {limit} bytes; send a smaller request."
        )


async def request(
    nc: NatsClient, subject: str, payload: bytes, within: float, service: str, doing: str
) -> Msg:
    """A request-reply to another service, with the one error mapping (see the module docstring).

    `service` and `doing` make the messages ("No retrieval service is available to search…")."""
    if not nc.is_connected:
        raise Unavailable("The gateway is not connected to its message bus; try again shortly", retry_after=1)
    check_size(payload, nc.max_payload or DEFAULT_MAX_PAYLOAD, f"The message to the {service}")
    try:
        reply = await nc.request(subject, payload, timeout=max(within, 0.001))
    except nats.errors.NoRespondersError:
        raise Unavailable(f"No {service} is available to {doing}; try again shortly", retry_after=1) from None
    except (TimeoutError, nats.errors.TimeoutError):
        raise DeadlineExceeded(f"The {service} did not {doing} in time") from None
    except nats.errors.Error as err:
        log.warning("request failed", extra={"subject": subject, "error": repr(err)})
        raise Unavailable(f"The gateway could not reach the {service}; try again shortly") from err
    status = (reply.headers or {}).get(headers.STATUS)
    if status is not None:
        raise error_of_reply(status, reply.data, f"The {service} could not {doing}")
    return reply


class Bus:
    """A service's NATS connection: connect (retrying while NATS starts), publish, send, request."""

    def __init__(self, url: str, name: str, client: type[NatsClient] = NatsClient) -> None:
        self.url = url
        self.name = name
        self._client = client  # a subclass, for a connection that handles some messages itself
        self.nc = client()
        self.closing = False
        self.on_reconnect: list[Callable[[], Awaitable[None]]] = []

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload or DEFAULT_MAX_PAYLOAD

    async def connect(self, attempts: int = 40) -> None:
        """Connect, retrying while nats-server is not up yet; afterwards reconnect forever (a
        service outlives NATS restarts; readiness says whether it is connected right now)."""
        for attempt in range(1, attempts + 1):
            try:
                await self.nc.connect(
                    servers=[self.url],
                    name=self.name,
                    # The user's own inbox prefix: its permissions allow it no other (`natsauth`).
                    inbox_prefix=inbox_prefix_of(self.url),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,  # type: ignore[arg-type]  # annotated int, used as seconds
                    connect_timeout=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                return
            except (nats.errors.Error, OSError) as err:
                if attempt == attempts:
                    raise
                log.warning(
                    "nats not reachable yet",
                    extra={"nats_url": redact_url(self.url), "error": repr(err), "attempt": attempt},
                )
                self.nc = self._client()
                await asyncio.sleep(min(0.1 * attempt, 2.0))

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = ""
    ) -> None:
        """Publish, size-checked; a failure is logged and raised as a `GatewayError`."""
        check_size(payload, self.max_payload, "The message")
        try:
            await self.nc.publish(subject, payload, reply=reply, headers=headers)
        except nats.errors.Error as err:  # closed, draining, reconnect buffer full…
            log.warning("publish failed", extra={"subject": subject, "error": repr(err)})
            raise Unavailable("The gateway could not reach its message bus; try again shortly") from err

    async def send(self, out: Outgoing | None) -> None:
        """Publish what a handler decided; if that fails, end its request with the error at once."""
        if out is None:
            return
        try:
            await self.publish(out.subject, out.payload, out.headers, out.reply)
        except GatewayError as err:
            log.warning(
                "could not forward a message",
                extra={"subject": out.subject, "bytes": len(out.payload), "error": err.message},
            )
            if out.fail_to:
                hdrs, payload = events.error_event(err, 0)
                try:
                    await self.nc.publish(out.fail_to, payload, headers=hdrs)
                except nats.errors.Error as again:
                    log.error("could not report a failed forward", extra={"error": repr(again)})

    async def send_reply(self, reply: str, payload: bytes, headers: dict[str, str] | None) -> None:
        """Answer a request-reply message; an answer too large for the bus becomes that error."""
        try:
            await self.publish(reply, payload, headers)
        except PayloadTooLarge as err:
            payload, headers = error_reply(err)
            with contextlib.suppress(GatewayError):
                await self.publish(reply, payload, headers)
        except GatewayError:
            pass  # logged by publish; the asker gets its timeout

    async def request(self, subject: str, payload: bytes, within: float, service: str, doing: str) -> Msg:
        return await request(self.nc, subject, payload, within, service, doing)

    async def close(self) -> None:
        """Drain: finish the subscriptions' callbacks and flush what was published, then close."""
        self.closing = True
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:  # already closing, or NATS is gone: nothing left to flush
                await self.nc.close()

    async def _on_error(self, err: Exception) -> None:
        log.warning("nats error", extra={"error": repr(err)})

    async def _on_disconnected(self) -> None:
        if not self.closing:
            log.warning("disconnected from nats")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to nats")
        NATS_RECONNECTS.inc()
        for hook in self.on_reconnect:
            try:
                await hook()
            except Exception:
                log.exception("a reconnect hook failed")
