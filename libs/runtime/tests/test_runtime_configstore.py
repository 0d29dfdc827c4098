"""The config store against a real nats-server: load, watch, versions, optimistic concurrency."""

import asyncio
import shutil
import time

import nats
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from aigw_contracts import ApiKey, ConfigSnapshot, Gateway, Tenant, Upstream
from aigw_devstack import NatsServer
from aigw_runtime.bus import Bus
from aigw_runtime.configstore import ConfigWatcher, ConfigWriter, decode_id, encode_id, kv_key


def test_ids_with_any_characters_make_valid_keys() -> None:
    for raw in ("@openai/gpt-5-mini", "01990000-0000-7000-8000-000000000001", "a b:c"):
        assert decode_id(encode_id(raw)) == raw
        assert all(c.isalnum() or c in "-_." for c in kv_key("upstream", raw))


async def test_watcher_starts_on_empty_store_and_sees_changes_fast(fresh_nats: NatsServer) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        watcher = ConfigWatcher(js)
        view = await watcher.start()
        assert view.gateways == {}
        changes: list[tuple[str, str]] = []
        watcher.listeners.append(lambda kind, eid, old, new: changes.append((kind, eid)))
        writer = await ConfigWriter.open(js)
        gw = Gateway(id="01990000-0000-7000-8000-000000000001", name="g", tenant="t", upstream="@x/y")
        started = time.monotonic()
        await writer.put("gateway", gw)
        while "01990000-0000-7000-8000-000000000001" not in view.gateways:
            assert time.monotonic() - started < 1.0, "change not seen within 1 s"
            await asyncio.sleep(0.005)
        assert changes == [("gateway", gw.id)]
        await writer.delete("gateway", gw.id)
        while gw.id in view.gateways:
            assert time.monotonic() - started < 2.0
            await asyncio.sleep(0.005)
        await watcher.stop()
    finally:
        await nc.close()


async def test_second_watcher_loads_existing_entries_and_history_keeps_versions(
    fresh_nats: NatsServer,
) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        writer = await ConfigWriter.open(js)
        await writer.load(
            ConfigSnapshot(
                tenants=[Tenant(id="t")],
                upstreams=[Upstream(id="@sim/m", model="m", base_url="http://127.0.0.1:1/v1")],
            )
        )
        await writer.put("tenant", Tenant(id="t", name="renamed"))
        view = await ConfigWatcher(js).start()
        assert view.tenants["t"].name == "renamed" and "@sim/m" in view.upstreams
        versions = await writer.history("tenant", "t")
        assert [v.name for _, v in versions if isinstance(v, Tenant)] == ["", "renamed"]
    finally:
        await nc.close()


async def test_update_with_a_stale_revision_is_refused(fresh_nats: NatsServer) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        writer = await ConfigWriter.open(nc.jetstream())
        first = await writer.put("tenant", Tenant(id="t"), expect_revision=0)
        await writer.put("tenant", Tenant(id="t", name="a"), expect_revision=first)
        with pytest.raises(KeyWrongLastSequenceError):
            await writer.put("tenant", Tenant(id="t", name="b"), expect_revision=first)
    finally:
        await nc.close()


async def _wait_connected(nc: nats.NATS, within: float) -> None:
    deadline = time.monotonic() + within
    while not nc.is_connected:
        assert time.monotonic() < deadline, "the client did not reconnect"
        await asyncio.sleep(0.01)


async def test_watch_resumes_after_a_nats_restart_and_sees_puts_and_deletes_within_two_seconds(
    fresh_nats: NatsServer,
) -> None:
    """nats-server loses its ephemeral consumers when it restarts; the watcher must open a new one
    on reconnect (from the last revision it applied) instead of waiting for missed heartbeats."""
    bus = Bus(fresh_nats.url, "watcher-test")
    await bus.connect()
    try:
        writer = await ConfigWriter.open(bus.nc.jetstream())
        await writer.put("key", ApiKey(id="k1", tenant="t", hash="h"))
        watcher = ConfigWatcher(bus.nc.jetstream())
        view = await watcher.start()
        assert "k1" in view.keys
        bus.on_reconnect.append(watcher.reconnected)  # as the services wire it

        fresh_nats.stop()
        fresh_nats.start()
        await _wait_connected(bus.nc, 10)

        other = await nats.connect(fresh_nats.url)
        try:
            other_writer = await ConfigWriter.open(other.jetstream())
            gw = Gateway(id="01990000-0000-7000-8000-0000000000aa", name="late", tenant="t", upstream="@x/y")
            await other_writer.put("gateway", gw)
            written = time.monotonic()
            while gw.id not in view.gateways:
                assert time.monotonic() - written < 2.0, "a gateway written after the restart was not seen"
                await asyncio.sleep(0.01)
            await other_writer.delete("key", "k1")
            written = time.monotonic()
            while "k1" in view.keys:
                assert time.monotonic() - written < 2.0, "a key deleted after the restart was not seen"
                await asyncio.sleep(0.01)
        finally:
            await other.close()
        await watcher.stop()
    finally:
        await bus.close()


async def test_watch_reloads_when_the_restarted_server_lost_the_bucket(fresh_nats: NatsServer) -> None:
    """A server that comes back without its data has a new stream whose revisions start over:
    catching up from the old revision would miss everything, so the watcher loads the store whole
    and forgets entries that are no longer there."""
    bus = Bus(fresh_nats.url, "watcher-test")
    await bus.connect()
    try:
        writer = await ConfigWriter.open(bus.nc.jetstream())
        for i in range(5):  # revisions the new stream will not reach before the test's write
            await writer.put("key", ApiKey(id=f"k{i}", tenant="t", hash="h"))
        watcher = ConfigWatcher(bus.nc.jetstream())
        view = await watcher.start()
        bus.on_reconnect.append(watcher.reconnected)

        fresh_nats.stop()
        shutil.rmtree(fresh_nats.state_dir / "jetstream")
        fresh_nats.start()
        await _wait_connected(bus.nc, 10)

        other = await nats.connect(fresh_nats.url)
        try:
            gw = Gateway(id="01990000-0000-7000-8000-0000000000bb", name="new", tenant="t", upstream="@x/y")
            await (await ConfigWriter.open(other.jetstream())).put("gateway", gw)
            written = time.monotonic()
            while gw.id not in view.gateways or view.keys:
                assert time.monotonic() - written < 2.0, f"view not reloaded: {sorted(view.keys)}"
                await asyncio.sleep(0.01)
        finally:
            await other.close()
        await watcher.stop()
    finally:
        await bus.close()
