"""The bus permission table (`aigw_runtime.natsauth`) against a real nats-server running the config
rendered from it: who may connect, who may write the config bucket, read answers, publish usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from aigw_contracts import Tenant, streams, subjects
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.usage import UsageEvent
from aigw_devstack import NatsServer
from aigw_runtime import natsauth
from aigw_runtime.configstore import BUCKET, ConfigWatcher, ConfigWriter, kv_key
from aigw_runtime.usage_publisher import JetStreamUsageBus


async def _eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 10.0, what: str = ""
) -> None:
    deadline = time.monotonic() + within
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


class Client:
    """A connection as one bus user, keeping the errors the server sends it (refusals)."""

    def __init__(self, nc: NatsClient, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def refused(self, verb: str, subject: str) -> None:
        """Wait for the server's permissions violation for `verb` ("publish"/"subscription")."""
        wanted = f'permissions violation for {verb} to "{subject}"'.lower()
        await _eventually(lambda: any(wanted in e.lower() for e in self.errors), 5.0, wanted)


@asynccontextmanager
async def connected(server: NatsServer, user: str) -> AsyncIterator[Client]:
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    url = server.url_for(user)
    nc = await nats.connect(url, inbox_prefix=natsauth.inbox_prefix_of(url), error_cb=on_error)
    try:
        yield Client(nc, errors)
    finally:
        await nc.close()


def _usage(request_id: str, tenant: str = "acme") -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        source="inference",
        tenant=tenant,
        key_id="k1",
        upstream="@sim/sim-model",
        model="sim-model",
        lines=[GeneratedUsage.priced("inference.chat_completions.in", Decimal("0.001"), 1000, "forged")],
        started_at=datetime.now(UTC),
    )


async def _stored_usage(server: NatsServer) -> int:
    async with connected(server, natsauth.METERING) as metering:
        info = await metering.nc.jetstream().stream_info(streams.USAGE_STREAM)
        return info.state.messages


async def test_a_client_without_the_right_password_cannot_connect(authed_nats: NatsServer) -> None:
    for url in (authed_nats.url, authed_nats.url_for(natsauth.ROUTER).replace("router:", "router:x")):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)


async def test_only_the_edge_and_admin_may_write_the_config_bucket(authed_nats: NatsServer) -> None:
    async with connected(authed_nats, natsauth.ADMIN) as admin:
        writer = await ConfigWriter.open(admin.nc.jetstream())
        await writer.put("tenant", Tenant(id="acme", name="Acme"))
        subject = f"$KV.{BUCKET}.{kv_key('tenant', 'acme')}"
        for user in (natsauth.ROUTER, natsauth.WORKER, natsauth.RETRIEVAL, natsauth.METERING):
            async with connected(authed_nats, user) as other:
                await other.nc.publish(subject, Tenant(id="acme", name="OWNED").model_dump_json().encode())
                await other.refused("publish", subject)
        async with connected(authed_nats, natsauth.EDGE) as edge:
            edge_writer = await ConfigWriter.open(edge.nc.jetstream())
            current = await edge_writer.get("tenant", "acme")
            assert current is not None
            assert current[0].name == "Acme"  # nothing the others sent was stored
            # Every operation of the management API: update on a revision, create, history, delete.
            revision = await edge_writer.put(
                "tenant", Tenant(id="acme", name="Acme 2"), expect_revision=current[1]
            )
            await edge_writer.put("tenant", Tenant(id="beta", name="Beta"), expect_revision=0)
            assert [t.name for _, t in await edge_writer.history("tenant", "acme")] == ["Acme", "Acme 2"]  # type: ignore[union-attr]
            await edge_writer.delete("tenant", "beta")
            assert revision > current[1] and await edge_writer.get("tenant", "beta") is None
            assert edge.errors == []


async def test_the_worker_may_not_even_read_the_config_bucket(authed_nats: NatsServer) -> None:
    async with connected(authed_nats, natsauth.ADMIN) as admin:
        await ConfigWriter.open(admin.nc.jetstream())
    async with connected(authed_nats, natsauth.WORKER) as worker:
        with pytest.raises(Exception):  # noqa: B017  # refused: the lookup gets no answer in time
            await worker.nc.jetstream(timeout=1).key_value(BUCKET)
        await worker.refused("publish", f"$JS.API.STREAM.INFO.{natsauth.kv_stream(BUCKET)}")


async def test_the_router_reads_the_config_but_no_one_elses_answers(authed_nats: NatsServer) -> None:
    async with connected(authed_nats, natsauth.ADMIN) as admin:
        await (await ConfigWriter.open(admin.nc.jetstream())).put("tenant", Tenant(id="acme", name="Acme"))
    async with (
        connected(authed_nats, natsauth.ROUTER) as router,
        connected(authed_nats, natsauth.WORKER) as worker,
        connected(authed_nats, natsauth.EDGE) as edge,
    ):
        watcher = ConfigWatcher(router.nc.jetstream())
        assert "acme" in (await watcher.start()).tenants  # what a router needs, it gets
        await watcher.stop()

        seen: list[Msg] = []

        async def spy(msg: Msg) -> None:
            seen.append(msg)

        forbidden = (
            subjects.REPLY_WILDCARD,  # every client's answers
            f"{subjects.PREFIX}.>",  # everything aigw says
            subjects.inbox_wildcard(natsauth.EDGE),  # the edge's request-reply answers
            subjects.WORKER_CHAT,  # prompts on their way to the workers
            subjects.USAGE_WILDCARD,
        )
        for subject in forbidden:
            await router.nc.subscribe(subject, cb=spy)
            await router.refused("subscription", subject)
        # Prompts and answers still flow between those allowed, and none reach the router.
        got: list[Msg] = []

        async def keep(msg: Msg) -> None:
            got.append(msg)

        await edge.nc.subscribe(subjects.reply_subject("e1", "r1"), cb=keep)
        await edge.nc.flush()
        await worker.nc.publish(subjects.reply_subject("e1", "r1"), b"the answer")
        await _eventually(lambda: bool(got), 5.0, "the answer at the edge")
        await router.nc.flush()
        assert seen == []


async def test_only_the_worker_and_retrieval_may_publish_usage(authed_nats: NatsServer) -> None:
    async with connected(authed_nats, natsauth.WORKER) as worker:
        await JetStreamUsageBus(worker.nc).ensure_usage_stream()
        subject = subjects.usage_subject("acme")
        for user in (natsauth.EDGE, natsauth.ROUTER, natsauth.METERING, natsauth.ADMIN):
            async with connected(authed_nats, user) as other:
                await other.nc.publish(subject, _usage(f"forged-by-{user}").model_dump_json().encode())
                await other.refused("publish", subject)
        assert await _stored_usage(authed_nats) == 0
        # A KV reader cannot launder config entries into the stream through a push consumer's
        # deliver subject either (nats-server does not check that subject against the creator's
        # permissions, but a stream does not capture a consumer's deliveries).
        async with connected(authed_nats, natsauth.ADMIN) as admin:
            await (await ConfigWriter.open(admin.nc.jetstream())).put(
                "tenant", Tenant(id="acme", name="Acme")
            )
        async with connected(authed_nats, natsauth.ROUTER) as router:
            await router.nc.jetstream().add_consumer(
                natsauth.kv_stream(BUCKET), ConsumerConfig(deliver_subject=subject, ack_policy="none")
            )
        for user in (natsauth.WORKER, natsauth.RETRIEVAL):
            async with connected(authed_nats, user) as producer:
                ack = await producer.nc.jetstream().publish(
                    subject, _usage(f"genuine-{user}").model_dump_json().encode()
                )
                assert ack.stream == streams.USAGE_STREAM
        await asyncio.sleep(0.5)  # room for a delivery the consumer above might still make
        assert await _stored_usage(authed_nats) == 2


async def test_a_config_reader_waits_for_the_bucket_it_may_not_create(authed_nats: NatsServer) -> None:
    async with connected(authed_nats, natsauth.ROUTER) as router:
        watcher = ConfigWatcher(router.nc.jetstream(timeout=1))
        starting = asyncio.create_task(watcher.start())
        await router.refused("publish", f"$JS.API.STREAM.CREATE.{natsauth.kv_stream(BUCKET)}")
        await asyncio.sleep(2.5)  # past the refused create's timeout (1 s) and the look after it
        assert not starting.done()  # the router could not create it, and did not give up
        async with connected(authed_nats, natsauth.ADMIN) as admin:
            await (await ConfigWriter.open(admin.nc.jetstream())).put(
                "tenant", Tenant(id="acme", name="Acme")
            )
        view = await asyncio.wait_for(starting, 15)
        assert "acme" in view.tenants
        await watcher.stop()


def test_every_subject_of_the_table_comes_from_the_contracts_or_the_nats_api() -> None:
    """Nothing in the table is spelled by hand: each entry is an aigw subject from
    `aigw_contracts.subjects`/`streams`, an inbox, or nats-server's own API."""
    aigw = {
        value
        for value in (*vars(subjects).values(), *vars(streams).values())
        if isinstance(value, str) and value.startswith(subjects.PREFIX)
    } | {*streams.USAGE_SUBJECTS, *streams.USAGE_DEAD_SUBJECTS}
    for user, perms in natsauth.PERMISSIONS.items():
        for subject in (*perms.publish, *perms.subscribe):
            assert (
                subject in aigw
                or subject.startswith(("$JS.", "$KV."))
                or subject in {subjects.inbox_wildcard(u) for u in natsauth.USERS}
            ), (user, subject)
