"""The reply fast path (bus.py's hook inside nats-py's read loop) cannot wedge the edge: a message
it fails on is dropped and counted, and readiness turns red if nats-py's reader stops anyway."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client as NATS

from aigw_contracts import ChatEnvelope, subjects
from aigw_contracts.events import EventKind
from aigw_devstack.nats import NatsServer
from aigw_edge.bus import Bus

from .conftest import FakeRouter, completion, eventually, serve_edge

MESSAGES = [{"role": "user", "content": "hello"}]
POISON = b'{"poison": true}'


async def test_an_event_the_fast_path_fails_on_is_dropped_and_the_edge_keeps_serving(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver = Bus._deliver

    def fails_on_poison(self: Bus, subject: bytes, raw_headers: bytes | None, data: bytes) -> None:
        if data == POISON:
            raise RuntimeError("a bug in delivery")
        deliver(self, subject, raw_headers, data)

    monkeypatch.setattr(Bus, "_deliver", fails_on_poison)

    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        if "poison" in str(env.request.messages[0].content):
            await r.emit(env, EventKind.DELTA, 0, POISON)  # dropped by the edge
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "fine"))

    router.handler = answer
    async with serve_edge(nats_server.url, tmp_path) as edge, edge.client() as client:
        assert edge.app.bus.fast_path
        poisoned = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "poison"}]
        )
        assert poisoned.choices[0].message.content == "fine"  # its next event still arrived
        for _ in range(3):
            later = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert later.choices[0].message.content == "fine"
        assert edge.app.bus.dropped == 1
        async with httpx.AsyncClient(base_url=edge.url) as http:
            assert (await http.get("/readyz")).status_code == 200


async def test_readiness_turns_red_when_the_nats_reader_stops(
    nats_server: NatsServer, tmp_path: Path, bus_client: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_edge(nats_server.url, tmp_path) as edge, httpx.AsyncClient(base_url=edge.url) as http:
        assert (await http.get("/readyz")).status_code == 200
        nc = edge.app.bus.nc
        assert nc is not None

        async def broken_parse(data: bytes) -> None:
            raise RuntimeError("a failure inside nats-py's read loop")

        # Whatever ends nats-py's read loop (here: its parser raising on the next bytes it reads)
        # leaves the connection "connected" but deaf.
        monkeypatch.setattr(nc._ps, "parse", broken_parse)
        await bus_client.publish(subjects.reply_subject(edge.settings.edge_id, "any"), b"{}")
        await eventually(
            lambda: nc._reading_task is not None and nc._reading_task.done(), what="reader ended"
        )
        assert edge.app.bus.connected  # what readiness used to check
        resp = await http.get("/readyz")
        assert resp.status_code == 503
        assert "reader" in resp.json()["error"]["message"]
