"""The config store against a real nats-server: load, watch, versions, optimistic concurrency."""

import asyncio
import time

import nats
import pytest
from nats.js.errors import KeyWrongLastSequenceError

from aigw_contracts import ConfigSnapshot, Gateway, Tenant, Upstream
from aigw_devstack import NatsServer
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
