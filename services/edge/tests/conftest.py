"""Edge test fixtures: the edge served by a real uvicorn on a free port, a real nats-server, and the
test itself playing router and worker (it subscribes to the router subject and publishes scripted
events to each envelope's reply subject), so the edge's relay protocol is tested on its own."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import uvicorn
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from openai import AsyncOpenAI

from aigw_contracts import ApiKey, CancelRequest, ChatEnvelope, ConfigSnapshot, Tenant, headers, subjects
from aigw_contracts.events import EventKind, event_headers
from aigw_contracts.keys import hash_secret, new_secret
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import free_port
from aigw_edge import EdgeApp, EdgeSettings, create_app
from aigw_edge.server import server_config
from aigw_runtime.configstore import ConfigWriter

PEPPER = "test-pepper-not-secret"


async def eventually(probe: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    """Poll `probe` until true, failing past the deadline (tests never sleep a fixed time)."""
    deadline = time.monotonic() + within
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.01)


@dataclass
class Keys:
    """Secrets of the keys written to the config store the edge watches."""

    good: str = field(default_factory=new_secret)
    public: str = field(default_factory=new_secret)
    revoked: str = field(default_factory=new_secret)
    expired: str = field(default_factory=new_secret)

    def snapshot(self) -> ConfigSnapshot:
        return ConfigSnapshot(
            tenants=[Tenant(id="acme")],
            keys=[
                ApiKey(id="k-good", tenant="acme", hash=hash_secret(self.good, PEPPER)),
                ApiKey(id="k-public", tenant="acme", kind="public", hash=hash_secret(self.public, PEPPER)),
                ApiKey(id="k-revoked", tenant="acme", hash=hash_secret(self.revoked, PEPPER), revoked=True),
                ApiKey(
                    id="k-expired",
                    tenant="acme",
                    hash=hash_secret(self.expired, PEPPER),
                    expires_at=time.time() - 1,
                ),
            ],
        )


@dataclass
class Edge:
    app: EdgeApp
    settings: EdgeSettings
    keys: Keys
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def client(self, key: str | None = None) -> AsyncOpenAI:
        return AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=key or self.keys.good, max_retries=0, timeout=15
        )


async def seed_store(nats_url: str, snapshot: ConfigSnapshot) -> None:
    nc = await nats.connect(nats_url)
    try:
        await (await ConfigWriter.open(nc.jetstream())).load(snapshot)
    finally:
        await nc.close()


@asynccontextmanager
async def serve_edge(
    nats_url: str, tmp_path: Path, prepare: Callable[[EdgeApp], None] | None = None, **overrides: Any
) -> AsyncIterator[Edge]:
    """The edge on a free port; `prepare` may change the app before it serves (add a middleware)."""
    keys = Keys()
    await seed_store(nats_url, keys.snapshot())
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "port": free_port(),
        "key_pepper": PEPPER,
        "request_timeout": 5.0,
        "stream_idle_timeout": 1.0,
        "models_timeout": 1.0,
        **overrides,
    }
    settings = EdgeSettings(**values)
    app = create_app(settings)
    if prepare is not None:
        prepare(app)
    # The production config (`aigw-edge` uses the same), on the test's own event loop.
    server = uvicorn.Server(server_config(app, settings, loop="none", timeout_graceful_shutdown=2))
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), 15, "edge startup")
        assert server.started, "the edge failed to start"
        yield Edge(app, settings, keys, server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


Handler = Callable[[ChatEnvelope, "FakeRouter"], Coroutine[Any, Any, None]]


class FakeRouter:
    """Stands in for router + worker: records envelopes and cancels, and plays scripted events."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.envelopes: list[ChatEnvelope] = []
        self.raw: list[Msg] = []
        self.cancels: list[CancelRequest] = []
        self.handler: Handler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FakeRouter:
        await self.nc.subscribe(subjects.ROUTER_CHAT, cb=self._on_chat)
        await self.nc.subscribe(subjects.CHAT_CANCEL, cb=self._on_cancel)
        await self.nc.flush()
        return self

    async def _on_chat(self, msg: Msg) -> None:
        envelope = ChatEnvelope.model_validate_json(msg.data)
        self.raw.append(msg)
        self.envelopes.append(envelope)
        if self.handler is not None:
            task = asyncio.create_task(self.handler(envelope, self))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _on_cancel(self, msg: Msg) -> None:
        self.cancels.append(CancelRequest.model_validate_json(msg.data))

    async def emit(
        self, envelope: ChatEnvelope, kind: EventKind, seq: int, payload: bytes | dict[str, Any], **extra: str
    ) -> None:
        hdrs = event_headers(kind, seq)
        hdrs.update(extra)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.nc.publish(envelope.reply, data, headers=hdrs)
        await self.nc.flush()

    async def error(self, envelope: ChatEnvelope, seq: int, status: int, message: str, **extra: str) -> None:
        body = {"error": {"message": message, "type": "test_error", "param": None, "code": "test"}}
        await self.emit(envelope, EventKind.ERROR, seq, body, **{headers.STATUS: str(status), **extra})


def chunk(rid: str, content: str | None = None, finish: str | None = None, **kw: Any) -> dict[str, Any]:
    """A `chat.completion.chunk` as a worker serializes it."""
    delta: dict[str, Any] = {} if content is None else {"content": content}
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "@sim/sim-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **kw,
    }


def completion(rid: str, content: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "@sim/sim-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


@pytest.fixture
async def bus_client(nats_server: NatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url)
    yield nc
    await nc.close()


@pytest.fixture
async def router(bus_client: NATS) -> FakeRouter:
    return await FakeRouter(bus_client).start()


@pytest.fixture
async def edge(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Edge]:
    async with serve_edge(nats_server.url, tmp_path) as e:
        yield e
