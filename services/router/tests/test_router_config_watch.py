"""The router against a real nats-server: configuration changes take effect without a restart."""

import asyncio
import json
import time

import nats
from nats.aio.msg import Msg

from aigw_contracts import ChatCompletionRequest, ChatEnvelope, Gateway, headers, subjects
from aigw_devstack import NatsServer
from aigw_router.app import create_app
from aigw_router.settings import RouterSettings
from aigw_runtime.configstore import ConfigWriter

GID = "01990000-0000-7000-8000-00000000c0de"


async def _route(nc: nats.NATS, model: str) -> Msg:
    """Publish an envelope as the edge does and return the first message it causes (worker or reply)."""
    got: asyncio.Queue[Msg] = asyncio.Queue()
    reply = subjects.reply_subject("e1", f"r{time.monotonic_ns()}")
    subs = [await nc.subscribe(s, cb=got.put) for s in (subjects.WORKER_CHAT, reply)]
    env = ChatEnvelope(
        request_id="r1",
        tenant="t1",
        key_id="k",
        reply=reply,
        deadline=time.time() + 10,
        request=ChatCompletionRequest(model=model, messages=[{"role": "user", "content": "hi"}]),
    )
    await nc.publish(subjects.ROUTER_CHAT, env.model_dump_json().encode(), reply=reply)
    try:
        return await asyncio.wait_for(got.get(), 5)
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def test_gateway_written_to_the_store_is_routable_within_a_second(fresh_nats: NatsServer) -> None:
    app = create_app(RouterSettings(nats_url=fresh_nats.url, router_id="rw"))
    await app.start()
    nc = await nats.connect(fresh_nats.url)
    try:
        first = await _route(nc, "watched")
        assert first.headers and first.headers[headers.STATUS] == "404"

        writer = await ConfigWriter.open(nc.jetstream())
        gw = Gateway(id=GID, name="watched", tenant="t1", upstream="@openai/gpt-5-mini", instructions="v1")
        await writer.put("gateway", gw)
        deadline = time.monotonic() + 1.0
        while True:
            msg = await _route(nc, "watched")
            if msg.subject == subjects.WORKER_CHAT:
                break
            assert time.monotonic() < deadline, "the router did not see the new gateway within 1 s"
        routed = ChatEnvelope.routed(msg.data)
        assert routed.route and routed.route.body["messages"][0]["content"] == "v1"

        await writer.put("gateway", gw.model_copy(update={"instructions": "v2", "name": "renamed"}))
        deadline = time.monotonic() + 1.0
        while True:
            msg = await _route(nc, "renamed")
            if msg.subject == subjects.WORKER_CHAT:
                break
            assert time.monotonic() < deadline
        routed = ChatEnvelope.routed(msg.data)
        assert routed.route and routed.route.body["messages"][0]["content"] == "v2"
        gone = await _route(nc, "watched")
        assert json.loads(gone.data)["error"]["code"] == "model_not_found"
    finally:
        await nc.close()
        await app.stop()


async def test_gateway_created_after_a_nats_restart_is_routable_within_two_seconds(
    fresh_nats: NatsServer,
) -> None:
    """The router's config watch is an in-memory consumer on nats-server: a restart loses it, and
    the router must re-open it on reconnect rather than wait for missed heartbeats (7–17 s)."""
    app = create_app(RouterSettings(nats_url=fresh_nats.url, router_id="rr"))
    await app.start()
    try:
        fresh_nats.stop()
        fresh_nats.start()
        deadline = time.monotonic() + 10
        while not app.bus.connected:
            assert time.monotonic() < deadline, "the router did not reconnect"
            await asyncio.sleep(0.01)
        nc = await nats.connect(fresh_nats.url)
        try:
            writer = await ConfigWriter.open(nc.jetstream())
            gw = Gateway(id=GID, name="after-restart", tenant="t1", upstream="@openai/gpt-5-mini")
            await writer.put("gateway", gw)
            written = time.monotonic()
            while True:
                msg = await _route(nc, "after-restart")
                if msg.subject == subjects.WORKER_CHAT:
                    break
                assert time.monotonic() - written < 2.0, "the router did not see the new gateway within 2 s"
                await asyncio.sleep(0.02)
        finally:
            await nc.close()
    finally:
        await app.stop()
