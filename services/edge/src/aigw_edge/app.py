"""The edge's ASGI application: `create_app(settings)` builds it; uvicorn serves it.

    EdgeApp = middleware₁(middleware₂(… dispatch))
    dispatch: POST /v1/chat/completions → ChatEndpoint        (raw ASGI: the hot path)
              everything else           → EdgeAPI (FastAPI)   (routes, errors, docs, lifespan)

One list of pure-ASGI middlewares (body limit, access log, and whatever `add_middleware` adds:
CORS, tracing…) wraps both branches, so no middleware can miss the main endpoint. Chat completions
skip FastAPI itself: its per-request layers (telemetry check, exception middlewares, route scan, a
wrapper around every `send`) cost about 80 µs of CPU per request (≈200 → ≈120 µs measured with
bench/edge.py's layout), and that endpoint answers every error itself. FastAPI still knows the
chat paths: other methods get its 405, and `/openapi.json` documents the endpoint.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware import Middleware
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aigw_contracts import ChatCompletionChunk
from aigw_runtime.bus import redact_url
from aigw_runtime.configstore import ConfigWatcher, ConfigWriter
from aigw_runtime.metrics import watch_connection
from aigw_runtime.netguard import parse_allowlist
from aigw_runtime.spend import SpendAccounts, ensure_spend_stream
from aigw_runtime.telemetry import setup as setup_tracing
from aigw_runtime.telemetry import tracing

from . import errors, manage
from .auth import KeyStore
from .bus import Bus
from .limits import BodyLimitMiddleware
from .logs import AccessLog
from .manage import ManagedConfig, UpstreamRules
from .openapi import add_components
from .ratelimit import SharedLimits
from .requestlog import RequestLog, RequestLogMiddleware
from .respcache import ResponseCache
from .responsestore import ResponseStore
from .routes import cachestats, chat, embeddings, health, messages, models, responses, usage
from .routes import requests as requests_route
from .settings import EdgeSettings
from .slowclients import BodyTimeoutMiddleware, KeyBeforeBodyMiddleware

log = logging.getLogger("aigw.edge")

_CHAT_PATHS = frozenset(chat.PATHS)
# Other APIs, translated onto the chat endpoint (`bridge.py`): they check the key before reading
# the body themselves, and answer a refusal in their own error shape.
_BRIDGED_PATHS = frozenset((*messages.PATHS, *responses.PATHS))
OTHER_API_MODELS = (messages.MessagesRequest, messages.CountTokensRequest, responses.ResponsesRequest)


class EdgeAPI(FastAPI):
    """FastAPI with the chat endpoint in its OpenAPI document (see `routes.chat.documented`)."""

    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            schema = get_openapi(
                title=self.title,
                version=self.version,
                openapi_version=self.openapi_version,
                description=self.description,
                routes=[*chat.documented.routes, *self.routes],
                tags=self.openapi_tags,
                servers=self.servers,
                separate_input_output_schemas=self.separate_input_output_schemas,
            )
            add_components(schema, ChatCompletionChunk, *OTHER_API_MODELS)
            self.openapi_schema = schema
        return self.openapi_schema


class EdgeApp:
    """The app uvicorn serves: the middleware stack around the dispatch described in the module doc."""

    def __init__(
        self, api: EdgeAPI, chat_endpoint: ASGIApp, settings: EdgeSettings, bus: Bus, keys: KeyStore
    ):
        self.api = api
        self.chat = chat_endpoint
        self.settings, self.bus, self.keys = settings, bus, keys
        self.middleware: list[Middleware] = []  # outermost first
        self._stack: ASGIApp = self._dispatch

    def add_middleware(self, cls: Any, *args: Any, **kwargs: Any) -> None:
        """Wrap every request, chat completions included, in `cls(app, *args, **kwargs)` (a pure
        ASGI middleware). As in Starlette, the last one added runs first."""
        self.middleware.insert(0, Middleware(cls, *args, **kwargs))
        app: ASGIApp = self._dispatch
        for factory, margs, mkwargs in reversed(self.middleware):
            app = factory(app, *margs, **mkwargs)
        self._stack = app

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _CHAT_PATHS:
            await self.chat(scope, receive, send)
            return
        await self.api(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._stack(scope, receive, send)


def create_app(settings: EdgeSettings) -> EdgeApp:
    """The edge app. API keys (and, for the management API, everything else) come from the config
    store, loaded before the first request is served and kept current by a watcher."""
    setup_tracing("edge", settings.edge_id)  # when the OTEL_* variables ask (`aigw_runtime.telemetry`)
    keys = KeyStore([], settings.key_pepper.get_secret_value())
    managed = ManagedConfig()
    bus = Bus(settings)
    requests = RequestLog(settings.edge_id, settings.request_log)
    watch_connection(lambda: bus.connected)

    def keys_changed(kind: str, *_: object) -> None:
        if kind == "key":
            keys.replace(managed.view.keys.values())
        elif kind == "gateway":
            requests.gateways_changed(managed.view.gateways.values())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        assert bus.nc is not None
        js = bus.nc.jetstream()
        watcher = ConfigWatcher(js, managed.view)
        await watcher.start()
        keys.replace(managed.view.keys.values())
        requests.gateways_changed(managed.view.gateways.values())
        cache.refresh("gateway")
        watcher.listeners.append(keys_changed)
        watcher.listeners.append(cache.refresh)
        managed.listeners.append(cache.refresh)
        bus.on_reconnect.append(watcher.reconnected)  # a NATS restart loses the watch: catch up
        managed.listeners.append(keys_changed)
        managed.attach(await ConfigWriter.open(js))
        await ensure_spend_stream(js)
        app.state.spend = await SpendAccounts.open(js)  # read and written by `manage.spend`
        endpoint.shared = await SharedLimits.open(js)  # plan rate limits, across replicas
        await requests.start(bus.nc)
        app.state.limits = endpoint.shared  # knowledge's: searches, insertions, collections
        log.info(
            "connected to nats",
            extra={"edge_id": settings.edge_id, "nats_url": redact_url(settings.nats_url), "keys": len(keys)},
        )
        try:
            yield
        finally:
            await watcher.stop()
            await requests.close()  # what is queued goes out before the connection closes
            await bus.close()
            tracing.shutdown()  # the last spans, exported before the process exits

    api = EdgeAPI(
        title="aigw edge",
        lifespan=lifespan,
        description="OpenAI-compatible chat completions, plus the management API (admin keys).",
        docs_url="/docs",
        redoc_url=None,
    )
    api.state.settings, api.state.bus, api.state.keys, api.state.config = settings, bus, keys, managed
    api.state.upstream_rules = UpstreamRules(
        parse_allowlist(settings.upstream_allowlist), settings.secrets_key.get_secret_value() or None
    )
    endpoint = chat.ChatEndpoint(settings, bus, keys, managed.view.tenants)
    # Gateways' response caches in front of it (a pass-through while no gateway has one).
    cache = ResponseCache(endpoint, keys, managed.view, bus, settings.cache_embed_model)
    endpoint.gateways = managed.view.gateways
    for path in chat.PATHS:
        # Reached only for other methods (405 with Allow): `EdgeApp` takes every POST first.
        api.router.routes.append(Route(path, endpoint, methods=["POST"]))
    api.state.chat_endpoint = cache
    api.state.responses = ResponseStore(bus, settings.responses_retention)
    other_apis = (messages.router, responses.router, embeddings.router)
    routers = (
        models.router,
        health.router,
        usage.router,
        requests_route.router,
        cachestats.router,
        manage.router,
    )
    for router in (*routers, *other_apis):
        api.include_router(router)
    errors.install(api)

    app = EdgeApp(api, cache, settings, bus, keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Slow and keyless clients (see slowclients.py); outside the body limit, so its refusals close
    # the connection too, and inside the access log, so their 401s and 408s are logged.
    app.add_middleware(KeyBeforeBodyMiddleware, keys=keys, skip_paths=_CHAT_PATHS | _BRIDGED_PATHS)
    app.add_middleware(BodyTimeoutMiddleware, timeout=settings.body_timeout)
    if settings.access_log or settings.request_log:  # outermost: it sees every refusal's status too
        app.add_middleware(RequestLogMiddleware, access=AccessLog(settings.access_log), requests=requests)
    return app
