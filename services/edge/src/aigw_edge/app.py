"""The edge's ASGI application: `create_app(settings)` builds it; uvicorn serves it.

FastAPI serves every route, error and the lifespan (NATS connect and drain). Chat completions are
registered as a route too, but `EdgeApp.__call__` hands a `POST` to them straight to the endpoint
(through the body limit): FastAPI's per-request layers (telemetry check, exception middlewares,
route scan, a wrapper around every `send`) cost about 80 µs of CPU per request (≈200 → ≈120 µs
measured with bench/edge.py's layout), and that endpoint answers every error itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aigw_runtime.bus import redact_url
from aigw_runtime.configstore import ConfigWatcher, ConfigWriter
from aigw_runtime.netguard import parse_allowlist

from . import errors, manage
from .auth import KeyStore
from .bus import Bus
from .limits import BodyLimitMiddleware
from .logs import AccessLog, AccessLogMiddleware
from .manage import ManagedConfig, UpstreamRules
from .routes import chat, health, models, usage
from .settings import EdgeSettings

log = logging.getLogger("aigw.edge")


class EdgeApp(FastAPI):
    chat_app: ASGIApp
    bus: Bus
    keys: KeyStore
    settings: EdgeSettings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in chat.PATHS:
            await self.chat_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: EdgeSettings) -> EdgeApp:
    """The edge app. API keys (and, for the management API, everything else) come from the config
    store, loaded before the first request is served and kept current by a watcher."""
    keys = KeyStore([], settings.key_pepper.get_secret_value())
    managed = ManagedConfig()
    bus = Bus(settings)
    access = AccessLog(settings.access_log)

    def keys_changed(kind: str, *_: object) -> None:
        if kind == "key":
            keys.replace(managed.view.keys.values())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        assert bus.nc is not None
        js = bus.nc.jetstream()
        watcher = ConfigWatcher(js, managed.view)
        await watcher.start()
        keys.replace(managed.view.keys.values())
        watcher.listeners.append(keys_changed)
        managed.listeners.append(keys_changed)
        managed.attach(await ConfigWriter.open(js))
        log.info(
            "connected to nats",
            extra={"edge_id": settings.edge_id, "nats_url": redact_url(settings.nats_url), "keys": len(keys)},
        )
        try:
            yield
        finally:
            await watcher.stop()
            await bus.close()

    app = EdgeApp(
        title="aigw edge",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions, plus the management API (admin keys).",
        docs_url="/docs",
        redoc_url=None,
    )
    app.settings, app.bus, app.keys = settings, bus, keys
    app.chat_app = BodyLimitMiddleware(
        chat.ChatEndpoint(settings, bus, keys, access), settings.max_body_bytes
    )
    for path in chat.PATHS:
        # Reached only for other methods (405 with Allow) or if the fast path above is removed.
        app.router.routes.append(Route(path, app.chat_app, methods=["POST"]))
    app.include_router(models.router(bus, keys))
    app.include_router(health.router(bus))
    app.include_router(usage.router(bus, keys))
    rules = UpstreamRules(
        parse_allowlist(settings.upstream_allowlist), settings.secrets_key.get_secret_value() or None
    )
    app.include_router(manage.router(managed, keys, rules))
    app.include_router(manage.knowledge_router(managed, keys, bus))
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.access_log:
        app.add_middleware(AccessLogMiddleware, access=access)
    return app
