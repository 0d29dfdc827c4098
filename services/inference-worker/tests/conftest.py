"""Fixtures for the worker's tests: the real upstream simulator, routed envelopes, and a harness that
runs the worker service against a real nats-server (envelope in, events and usage out)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from aigw_contracts import (
    ChatCompletionRequest,
    ChatEnvelope,
    Prices,
    RoutedCall,
    UpstreamTarget,
    headers,
    subjects,
)
from aigw_contracts.events import EventKind
from aigw_contracts.ids import uuid7
from aigw_devstack import NatsServer
from aigw_devstack.procs import Process, free_port
from aigw_runtime.bus import settle
from aigw_worker import WorkerSettings, create_app

HOST = "127.0.0.1"
EDGE = "wtest"
GATEWAY_SLUG = "support:50c3"
PARAMS = {"temperature": 0.5}
INSTRUCTIONS = "You are a test."
SIM_PRICES = Prices(input=Decimal("2.5E-7"), output=Decimal("0.000002"), cached_input=Decimal("2.5E-8"))


def binary(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else name


@dataclass
class Sim:
    url: str  # base URL of the OpenAI-compatible API (…/v1)
    root: str

    def requests(self, marker: str) -> list[dict[str, Any]]:
        """The simulator's records of requests whose last message mentions `marker`."""
        records = httpx.get(f"{self.root}/sim/requests", timeout=5).json()
        return [r for r in records if marker in str((r.get("body") or {}).get("messages"))]

    def wait_outcome(self, marker: str, outcome: str, within: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            found = self.requests(marker)
            if found and found[-1]["outcome"] == outcome:
                return found[-1]
            if time.monotonic() > deadline:
                raise AssertionError(f"simulator outcome for {marker!r}: {found and found[-1]['outcome']}")
            time.sleep(0.02)


def healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_sim(tmp: Path, *args: str) -> tuple[Sim, Process]:
    port = free_port()
    proc = Process(
        "simulator", [binary("aigw-simulator"), "--host", HOST, "--port", str(port), *args], tmp / "sim.log"
    ).start()
    root = f"http://{HOST}:{port}"
    proc.wait_ready(lambda: healthy(f"{root}/healthz"))
    return Sim(url=f"{root}/v1", root=root), proc


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s, proc = start_sim(tmp_path_factory.mktemp("sim"))
    yield s
    proc.stop()


@pytest.fixture(scope="session")
def keyed_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """A simulator that wants `Authorization: Bearer sk-sim-right`."""
    s, proc = start_sim(tmp_path_factory.mktemp("keyed-sim"), "--require-key", "sk-sim-right")
    yield s
    proc.stop()


def make_envelope(
    base_url: str,
    content: str,
    *,
    stream: bool = False,
    include_usage: bool = False,
    prefill: str | None = None,
    deadline_in: float = 30.0,
    tenant: str = "t-worker",
    kind: str = "catalog",
    provider: str = "sim",
    api_key: str | None = None,
    prices: Prices = SIM_PRICES,
    metadata: dict[str, str] | None = None,
    request_id: str | None = None,
    edge: str = EDGE,
) -> ChatEnvelope:
    request_id = request_id or uuid7()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": content},
    ]
    if prefill:
        messages.append({"role": "assistant", "content": prefill})
    request = ChatCompletionRequest.model_validate(
        {
            "model": GATEWAY_SLUG,
            "messages": [{"role": "user", "content": content}],
            "stream": stream or None,
            "stream_options": {"include_usage": True} if include_usage else None,
            "metadata": metadata,
        }
    )
    return ChatEnvelope(
        request_id=request_id,
        tenant=tenant,
        key_id="k-worker",
        reply=subjects.reply_subject(edge, request_id),
        deadline=time.time() + deadline_in,
        request=request,
        route=RoutedCall(
            gateway_id="01990000-0000-7000-8000-0000000050c3",
            gateway_slug=GATEWAY_SLUG,
            upstream=UpstreamTarget(
                id="@sim/sim-model",
                kind=kind,
                provider=provider,
                model="sim-model",
                base_url=base_url,
                api_key=api_key,
                prices=prices,
            ),
            body={"messages": messages, **PARAMS},
            prefill=prefill,
            params_used=dict(PARAMS),
            response_model="@sim/sim-model",
        ),
    )


@dataclass
class Event:
    headers: dict[str, str]
    body: bytes

    @property
    def kind(self) -> str:
        return self.headers[headers.EVENT]

    @property
    def seq(self) -> int:
        return int(self.headers[headers.SEQ])


TERMINAL = (EventKind.FINAL.value, EventKind.ERROR.value)


class Harness:
    """The worker service, started in-process against a real nats-server: publish an envelope,
    collect its events and usage as the edge and metering would see them."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.service, self.worker = create_app(settings)
        self.nc: nats.NATS | None = None
        self.replies: dict[str, list[Event]] = defaultdict(list)
        self.usage: list[Event] = []

    async def start(self) -> None:
        self.nc = await nats.connect(self.service.bus.url)

        async def on_reply(msg: Msg) -> None:
            request_id = subjects.request_id_from_reply(msg.subject)
            self.replies[request_id].append(Event(dict(msg.headers or {}), msg.data))

        async def on_usage(msg: Msg) -> None:  # a core subscription sees what the stream stores
            self.usage.append(Event(dict(msg.headers or {}), msg.data))

        await self.nc.subscribe(subjects.reply_wildcard(EDGE), cb=on_reply)
        await self.nc.subscribe(subjects.USAGE_WILDCARD, cb=on_usage)
        await settle(self.nc)
        await self.service.start()

    async def stop(self) -> None:
        await self.service.stop()
        if self.nc is not None:
            await self.nc.close()

    async def publish(self, subject: str, payload: bytes) -> None:
        assert self.nc is not None
        await self.nc.publish(subject, payload)

    async def send(self, envelope: ChatEnvelope) -> None:
        await self.publish(subjects.WORKER_CHAT, envelope.forward_json())

    async def cancel(self, request_id: str, reason: str = "client_disconnected") -> None:
        body = f'{{"request_id":"{request_id}","reason":"{reason}"}}'.encode()
        await self.publish(subjects.CHAT_CANCEL, body)

    async def wait_for(self, check: Callable[[], Any], within: float = 10.0, what: str = "events") -> Any:
        deadline = time.monotonic() + within
        while True:
            result = check()
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.005)

    async def events(self, request_id: str, within: float = 10.0) -> list[Event]:
        """All of a request's events, once its final or error event arrived."""

        def ended() -> list[Event] | None:
            got = self.replies.get(request_id) or []
            return got if got and got[-1].kind in TERMINAL else None

        return list(await self.wait_for(ended, within, f"the last event of {request_id}"))

    async def run(self, envelope: ChatEnvelope, within: float = 10.0) -> list[Event]:
        await self.send(envelope)
        return await self.events(envelope.request_id, within)

    async def usage_for(self, request_id: str, within: float = 5.0) -> list[Event]:
        def found() -> list[Event]:
            return [e for e in self.usage if request_id.encode() in e.body]

        return list(await self.wait_for(found, within, f"the usage event of {request_id}"))


_NATS_URL: list[str] = []  # the session's nats-server (`_session_nats`), for `worker_settings`


@pytest.fixture(scope="session", autouse=True)
def _session_nats(nats_server: NatsServer) -> Iterator[None]:
    _NATS_URL.append(nats_server.url)
    yield
    _NATS_URL.clear()


def worker_settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "nats_url": _NATS_URL[0] if _NATS_URL else "nats://127.0.0.1:1",
        "upstream_idle_timeout": 3.0,
        "shutdown_grace": 2.0,
        "worker_id": "test",
    }
    values.update(overrides)
    return WorkerSettings(**values)


@asynccontextmanager
async def running(settings: WorkerSettings) -> AsyncIterator[Harness]:
    h = Harness(settings)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with running(worker_settings()) as h:
        yield h
