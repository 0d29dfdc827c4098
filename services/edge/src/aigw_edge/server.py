"""How uvicorn serves the edge: `server_config(app, settings)`, used by `aigw-edge` and the tests alike.

uvicorn bounds an idle keep-alive connection (`timeout_keep_alive`) but nothing else a client can
hold without sending: a connection that never finishes its request headers stays open forever, so
a few hundred half-open sockets (slowloris) tie up the process. `EdgeHttpProtocol` adds the missing
timer on top of uvicorn's httptools protocol, and answers uvicorn's own connection limit
(`limit_concurrency`) with OpenAI's error body. Slow request *bodies* are bounded one layer up, in
`slowclients.BodyTimeoutMiddleware`, where the answer can be a proper 408.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from aigw_contracts.errors import Unavailable

from .errors import send_error
from .settings import EdgeSettings

log = logging.getLogger("aigw.edge")

_CLOSE = [(b"connection", b"close")]
_WARN_EVERY = 10.0  # seconds between "over the connection limit" warnings: a flood logs one line
_last_warned = -math.inf


class EdgeServerConfig(uvicorn.Config):
    """uvicorn's config plus what `EdgeHttpProtocol` reads from it (uvicorn hands each protocol
    instance the config and nothing else)."""

    def __init__(self, app: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout


async def _overloaded(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer past the connection limit: 503, which the SDKs retry after `retry-after`."""
    global _last_warned
    now = time.monotonic()
    if now - _last_warned >= _WARN_EVERY:
        _last_warned = now
        log.warning("over the connection limit (AIGW_MAX_CONNECTIONS): answering 503")
    err = Unavailable(
        "The gateway has too many open connections; retry shortly.", retry_after=1, code="overloaded"
    )
    await send_error(send, err, _CLOSE)


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline on request headers and an OpenAI-shaped 503.

    Header deadline: armed when the connection opens, and again when bytes arrive while no request
    is being answered: the start of the next request on a keep-alive connection, a stray CRLF
    (which httptools skips without starting a message), or the rest of a body the app answered
    without reading (a 401). Any of these cancels uvicorn's keep-alive timer and would otherwise
    leave no timer at all. `on_headers_complete` disarms it. When it fires, the connection is
    closed without an answer, as nginx does (`client_header_timeout`). Bytes that bring the headers
    complete in the same read (the usual case) never arm a timer, so a keep-alive request costs
    nothing extra.

    Connection limit: uvicorn's own check answers a plain-text 503 and refuses the limit-th
    connection already; this one answers OpenAI's error body and serves up to `limit_concurrency`
    connections (and that many requests in flight), refusing only beyond. Either way the refused
    connection is closed after the answer.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout = (
            config.header_timeout
            if isinstance(config, EdgeServerConfig)
            else EdgeSettings.model_fields["header_timeout"].default
        )
        self.header_timer: asyncio.TimerHandle | None = None
        self.in_headers = False  # a request has begun and its headers are not complete yet
        # Taken over from uvicorn, whose check in `on_headers_complete` is skipped when this is None.
        self.max_connections, self.limit_concurrency = self.limit_concurrency, None
        self.edge_app = self.app

    # ------------------------------------------------------------------ header deadline
    def _arm(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _answering(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _headers_overdue(self) -> None:
        self.header_timer = None
        if self._answering():
            # Headers of a pipelined request, queued behind one still being answered (uvicorn reads
            # them only after it): that request is bounded by its own timeouts; check again later.
            self._arm()
            return
        if not self.transport.is_closing():
            log.debug("request headers not complete in time: closing", extra={"client": self.client})
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # uvicorn cancelled its keep-alive timer on these bytes: unless they completed a request's
        # headers (which are being answered now), the header deadline takes over.
        waiting = self.in_headers or not self._answering()
        if waiting and self.header_timer is None and not self.transport.is_closing():
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers = True

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self._disarm()
        limit = self.max_connections
        over = limit is not None and (len(self.connections) > limit or len(self.tasks) >= limit)
        self.app = _overloaded if over else self.edge_app
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def server_config(app: Any, settings: EdgeSettings, **overrides: Any) -> EdgeServerConfig:
    """The uvicorn config the edge runs with; `overrides` are uvicorn options (tests use a
    different event loop and a shorter graceful shutdown)."""
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": EdgeHttpProtocol,
        "lifespan": "on",
        "access_log": False,  # ours is structured and knows tenant and model
        "log_config": None,  # keep the JSON handler `aigw-edge` set up
        "log_level": settings.log_level.lower(),
        "server_header": False,
        # Only per-IP key limits read the client address; without trusted proxies, skip the rewrite.
        "proxy_headers": settings.forwarded_allow_ips is not None,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "timeout_graceful_shutdown": math.ceil(settings.shutdown_grace) or None,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        "backlog": settings.backlog,
        **overrides,
    }
    return EdgeServerConfig(app, header_timeout=settings.header_timeout, **options)
