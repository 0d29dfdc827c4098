"""The worker as a real process (`aigw-worker`) on a real nats-server, calling the real simulator.

Drives it the way the router and the edge do, with raw nats-py: publish a routed envelope to the
worker queue (with a bounce reply that must be ignored), read the events on the reply subject, send
cancels, read the usage stream.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from aigw_contracts import CancelRequest, ChatEnvelope, UsageEvent, headers, streams, subjects
from aigw_contracts.ids import uuid7
from aigw_devstack.nats import NatsServer
from aigw_devstack.procs import Process

from .conftest import Sim, binary, make_envelope

EDGE = "wnats"
TERMINAL = ("final", "error")


def start_worker(nats_url: str, log_dir: Path, **env: str) -> Process:
    log_path = log_dir / "worker.log"
    proc = Process(
        "worker",
        [binary("aigw-worker")],
        log_path,
        env={"AIGW_NATS_URL": nats_url, "AIGW_UPSTREAM_IDLE_TIMEOUT": "2", "AIGW_LOG_LEVEL": "INFO", **env},
    ).start()
    proc.wait_ready(lambda: '"msg": "ready"' in log_path.read_text(errors="replace"), timeout=30)
    return proc


@pytest.fixture(scope="module")
def worker(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    proc = start_worker(nats_server.url, tmp_path_factory.mktemp("worker"))
    yield proc
    proc.stop()


class Edge:
    """A stand-in edge and router: one NATS connection, events collected per request id."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.events: dict[str, list[Msg]] = {}
        self.bounced: list[Msg] = []

    async def start(self) -> None:
        async def on_reply(msg: Msg) -> None:
            self.events.setdefault(subjects.request_id_from_reply(msg.subject), []).append(msg)

        async def on_bounce(msg: Msg) -> None:
            self.bounced.append(msg)

        await self.nc.subscribe(subjects.reply_wildcard(EDGE), cb=on_reply)
        await self.nc.subscribe(subjects.bounce_wildcard("wrouter"), cb=on_bounce)
        await self.nc.flush()

    async def send(self, env: ChatEnvelope) -> None:
        payload = env.model_dump_json(exclude_none=True).encode()
        await self.nc.publish(
            subjects.WORKER_CHAT, payload, reply=subjects.bounce_subject("wrouter", env.reply)
        )

    async def wait(self, request_id: str, count: int | None = None, within: float = 10.0) -> list[Msg]:
        deadline = time.monotonic() + within
        while True:
            got = self.events.get(request_id, [])
            if (count is not None and len(got) >= count) or (
                count is None and got and (got[-1].headers or {}).get(headers.EVENT) in TERMINAL
            ):
                return list(got)
            if time.monotonic() > deadline:
                last = got[-1].headers if got else None
                raise AssertionError(f"{request_id}: {len(got)} events so far, the last with {last}")
            await asyncio.sleep(0.01)

    async def run(self, env: ChatEnvelope, within: float = 10.0) -> list[Msg]:
        await self.send(env)
        return await self.wait(env.request_id, within=within)


@pytest.fixture
async def edge(nats_server: NatsServer) -> AsyncIterator[Edge]:
    nc = await nats.connect(nats_server.url)
    e = Edge(nc)
    await e.start()
    yield e
    await nc.close()


def _kind(msg: Msg) -> str:
    return (msg.headers or {}).get(headers.EVENT, "")


async def test_stream_over_real_nats_is_numbered_and_ignores_the_bounce_reply(
    worker: Process, edge: Edge, sim: Sim
) -> None:
    env = make_envelope(sim.url, "real [sim tokens=9 token_ms=2]", stream=True, edge=EDGE)
    events = await edge.run(env)
    assert [int((m.headers or {})[headers.SEQ]) for m in events] == list(range(len(events)))
    assert _kind(events[0]) == "delta" and _kind(events[-1]) == "final"
    text = "".join(json.loads(m.data)["choices"][0]["delta"].get("content", "") for m in events[:-1])
    assert text.split() == [f"sim{i}" for i in range(9)]
    assert json.loads(events[-1].data)["usage"]["completion_tokens"] == 9
    # payloads are the client's JSON as is, and the worker adds nothing but the protocol headers
    assert set(events[1].headers or {}) == {headers.EVENT, headers.SEQ}
    assert edge.bounced == []


async def test_usage_event_lands_in_jetstream_once_and_a_republish_is_deduplicated(
    worker: Process, edge: Edge, sim: Sim, nats_server: NatsServer
) -> None:
    tenant = f"t{uuid7().replace('-', '')}"
    env = make_envelope(sim.url, "bill [sim tokens=4 cached_tokens=2]", tenant=tenant, edge=EDGE)
    (final,) = await edge.run(env)
    js = edge.nc.jetstream()
    subject = subjects.usage_subject(tenant)

    async def stored() -> int:
        info = await js.stream_info(streams.USAGE_STREAM, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    deadline = time.monotonic() + 10
    while await stored() < 1:
        assert time.monotonic() < deadline, "the usage event never reached the stream"
        await asyncio.sleep(0.02)
    msg = await js.get_last_msg(streams.USAGE_STREAM, subject)
    assert (msg.headers or {})["Nats-Msg-Id"] == f"{env.request_id}:inference"
    event = UsageEvent.model_validate_json(msg.data or b"")
    assert event.request_id == env.request_id and event.status == "completed"
    answered = json.loads(final.data)["generation_context"]["generated_usage"]
    assert [json.loads(line.model_dump_json()) for line in event.lines] == answered
    # a republish (a retry whose ack was lost) inside the duplicate window is dropped by the server
    ack = await js.publish(subject, msg.data or b"", headers={"Nats-Msg-Id": event.msg_id()})
    assert ack.duplicate
    assert await stored() == 1
    # the stream was created as billing needs it
    config = (await js.stream_info(streams.USAGE_STREAM)).config
    assert str(getattr(config.discard, "value", config.discard)) == streams.USAGE_DISCARD
    assert str(getattr(config.storage, "value", config.storage)) == streams.USAGE_STORAGE
    assert config.duplicate_window == streams.USAGE_DUPLICATE_WINDOW_S
    assert config.max_age == streams.USAGE_MAX_AGE_S and config.subjects == [subjects.USAGE_WILDCARD]


async def test_chat_cancel_stops_a_hanging_call_and_closes_its_connection(
    worker: Process, edge: Edge, sim: Sim
) -> None:
    marker = uuid7()
    env = make_envelope(sim.url, f"{marker} [sim fault=hang]", stream=True, edge=EDGE)
    await edge.send(env)
    deadline = time.monotonic() + 10
    while not [r for r in sim.requests(marker) if r["outcome"] == "hang"]:
        assert time.monotonic() < deadline, "the request never reached the simulator"
        await asyncio.sleep(0.02)
    cancel = CancelRequest(request_id=env.request_id, reason="client_disconnected")
    await edge.nc.publish(subjects.CHAT_CANCEL, cancel.model_dump_json().encode())
    (event,) = await edge.wait(env.request_id)
    assert _kind(event) == "error" and (event.headers or {})[headers.STATUS] == "499"
    await asyncio.to_thread(sim.wait_outcome, marker, "client_disconnected")


async def test_errors_over_real_nats_keep_status_and_retry_after(
    worker: Process, edge: Edge, sim: Sim
) -> None:
    # (a wait beyond `upstream_retry_after_max` is not retried: the client gets it at once)
    (event,) = await edge.run(make_envelope(sim.url, "x [sim fault=429 retry_after=20]", edge=EDGE))
    hdrs: dict[str, Any] = event.headers or {}
    assert (hdrs[headers.EVENT], hdrs[headers.STATUS], hdrs[headers.RETRY_AFTER]) == ("error", "429", "20")
    assert json.loads(event.data)["error"]["type"] == "rate_limit_exceeded"
    (event,) = await edge.run(make_envelope(sim.url, "x", deadline_in=-5, edge=EDGE))
    assert (event.headers or {})[headers.STATUS] == "504"


async def test_sigterm_lets_in_flight_finish_within_grace_then_ends_the_rest_with_503(
    fresh_nats: NatsServer, sim: Sim, tmp_path: Path
) -> None:
    proc = start_worker(fresh_nats.url, tmp_path, AIGW_SHUTDOWN_GRACE="1")
    nc = await nats.connect(fresh_nats.url)
    try:
        edge = Edge(nc)
        await edge.start()
        long = make_envelope(sim.url, "long [sim tokens=1000 token_ms=20]", stream=True, edge=EDGE)
        short = make_envelope(sim.url, "short [sim tokens=10 token_ms=50]", stream=True, edge=EDGE)
        await edge.send(long)
        await edge.send(short)
        await edge.wait(long.request_id, count=2)
        await edge.wait(short.request_id, count=1)
        proc.signal(signal.SIGTERM)
        short_events = await edge.wait(short.request_id, within=10)
        assert _kind(short_events[-1]) == "final"  # finished within the grace period
        last = (await edge.wait(long.request_id, within=10))[-1]
        assert _kind(last) == "error" and (last.headers or {})[headers.STATUS] == "503"
        assert "shutting down" in json.loads(last.data)["error"]["message"]
        deadline = time.monotonic() + 15
        while proc.alive():
            assert time.monotonic() < deadline, "the worker did not exit after SIGTERM"
            await asyncio.sleep(0.05)
        assert proc.popen is not None and proc.popen.returncode == 0
        # its partial usage was published before it exited
        info = await nc.jetstream().stream_info(streams.USAGE_STREAM)
        assert info.state.messages == 2
    finally:
        await nc.close()
        proc.stop()
