"""The runtime's service loop against a real nats-server: routes, error replies, readiness, drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import httpx
import nats
import pytest

from aigw_contracts import errors, headers
from aigw_devstack import NatsServer
from aigw_runtime.bus import request
from aigw_runtime.service import Service


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _get(service: Service, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{service.health_port}{path}", timeout=2)


async def _ready(service: Service) -> int:
    return (await _get(service, "/readyz")).status_code


async def test_a_reply_route_answers_and_its_errors_come_back_typed(nats_server: NatsServer) -> None:
    service = Service("probe", "p1", nats_server.url, health_port=0)

    async def echo(data: bytes) -> tuple[bytes, dict[str, str] | None]:
        if data == b"missing":
            raise errors.NotFound("no such thing", param="thing")
        if data == b"bug":
            raise RuntimeError("boom")
        return data.upper(), None

    service.reply_route("aigw.test.echo", echo, "echo")
    await service.start()
    nc = await nats.connect(nats_server.url)
    try:
        assert (await request(nc, "aigw.test.echo", b"hi", 5, "probe", "echo")).data == b"HI"
        with pytest.raises(errors.NotFound) as found:
            await request(nc, "aigw.test.echo", b"missing", 5, "probe", "echo")
        assert found.value.param == "thing"
        with pytest.raises(errors.InternalError):  # a bug is an error reply, never a silent timeout
            await request(nc, "aigw.test.echo", b"bug", 5, "probe", "echo")
        with pytest.raises(errors.Unavailable):  # nobody subscribed: 503 at once
            await request(nc, "aigw.test.nobody", b"x", 5, "probe", "echo")
        with pytest.raises(errors.PayloadTooLarge):  # refused before it is sent
            await request(nc, "aigw.test.echo", b"x" * (nc.max_payload + 1), 5, "probe", "echo")
    finally:
        await nc.close()
        await service.stop(grace=1)


async def test_a_failing_handler_loses_its_message_not_the_subscription(nats_server: NatsServer) -> None:
    service = Service("probe", "p2", nats_server.url)
    seen: list[bytes] = []

    async def handle(msg: nats.aio.msg.Msg) -> None:
        if msg.data == b"bad":
            raise ValueError("a bug in one message")
        seen.append(msg.data)

    service.route("aigw.test.inline", handle)
    await service.start()
    nc = await nats.connect(nats_server.url)
    try:
        for data in (b"one", b"bad", b"two"):
            await nc.publish("aigw.test.inline", data)

        async def both() -> bool:
            return seen == [b"one", b"two"]

        await _eventually(both, what="the messages after the failing one")
        assert seen == [b"one", b"two"]  # the message after the failing one still arrived
        assert service.ready()  # and the service still counts itself able to work
    finally:
        await nc.close()
        await service.stop(grace=1)


async def test_readiness_follows_the_nats_connection(fresh_nats: NatsServer) -> None:
    service = Service("probe", "p3", fresh_nats.url, health_port=0)
    service.checks["store"] = lambda: True
    await service.start()
    try:
        assert await _ready(service) == 200
        body = (await _get(service, "/healthz")).json()
        assert body["service"] == "probe" and body["nats_connected"] is True

        async def unready() -> bool:
            return await _ready(service) == 503

        async def ready() -> bool:
            return await _ready(service) == 200

        fresh_nats.stop()
        await _eventually(unready, what="not ready without NATS")
        assert (await _get(service, "/healthz")).status_code == 200  # alive all the same
        fresh_nats.start()
        await _eventually(ready, within=15, what="ready again after NATS restarted")
    finally:
        await service.stop(grace=1)


async def test_a_failing_check_makes_the_service_unready(nats_server: NatsServer) -> None:
    store_up = [True]
    service = Service("probe", "p4", nats_server.url, health_port=0)
    service.checks["store"] = lambda: store_up[0]
    await service.start()
    try:
        assert await _ready(service) == 200
        store_up[0] = False
        response = await _get(service, "/readyz")
        assert response.status_code == 503 and json.loads(response.text)["checks"] == {"store": False}
    finally:
        await service.stop(grace=1)


def test_error_replies_name_their_status_header() -> None:
    payload, hdrs = errors.error_reply(errors.Unavailable("x"))
    assert hdrs == {headers.STATUS: "503"} and json.loads(payload)["error"]["message"] == "x"
