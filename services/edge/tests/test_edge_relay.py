"""The edge's relay protocol against a real nats-server and a real uvicorn, driven by the openai SDK.

The test plays router and worker: it receives the envelope the edge publishes and answers with
scripted events on the envelope's reply subject.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import nats
import openai
import pytest

from aigw_contracts import ChatEnvelope, headers
from aigw_contracts.events import EventKind
from aigw_devstack.nats import NatsServer

from .conftest import Edge, FakeRouter, chunk, completion, eventually, serve_edge

MESSAGES = [{"role": "user", "content": "hello"}]
PARAMS = '{"temperature":0.3}'


async def test_non_stream_answer_is_the_final_payload_verbatim_with_gateway_headers(
    edge: Edge, router: FakeRouter
) -> None:
    sent: list[bytes] = []

    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        # Key order and spacing a re-serialization would not keep: proves the bytes are relayed.
        body = json.dumps(completion(env.request_id, "hi there"), indent=None, separators=(", ", ": "))
        sent.append(body.encode())
        extra = {headers.GATEWAY: "support:50c3", headers.PARAMS: PARAMS}
        await r.emit(env, EventKind.FINAL, 0, body.encode(), **extra)

    router.handler = answer
    async with edge.client() as client:
        raw = await client.chat.completions.with_raw_response.create(model="support:50c3", messages=MESSAGES)
    reply = raw.parse()
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    assert raw.http_response.content == sent[0]
    assert reply.choices[0].message.content == "hi there"
    request_id = raw.headers["x-request-id"]
    assert reply.id == f"chatcmpl-{request_id}"
    assert raw.headers["x-aigw-gateway"] == "support:50c3"
    assert json.loads(raw.headers["x-aigw-params"]) == {"temperature": 0.3}
    assert edge.app.bus.in_flight == 0


async def test_envelope_carries_key_tenant_deadline_trace_and_the_request(
    edge: Edge, router: FakeRouter
) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "ok"))

    router.handler = answer
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    before = time.time()
    async with httpx.AsyncClient(base_url=edge.url) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "prompt": "via prompt", "temperature": 0.5, "metadata": {"team": "a"}},
            headers={
                "Authorization": f"Bearer {edge.keys.public}",
                "traceparent": traceparent,
                "tracestate": "vendor=x",
            },
        )
    assert resp.status_code == 200, resp.text
    env = router.envelopes[0]
    raw = router.raw[0]
    assert env.request_id == resp.headers["x-request-id"]
    assert (env.tenant, env.key_id, env.key_kind) == ("acme", "k-public", "public")
    assert env.reply == raw.reply and env.reply.endswith("." + env.request_id)
    assert before + 5 - 1 < env.deadline < time.time() + 5 + 1
    assert env.trace == {"traceparent": traceparent, "tracestate": "vendor=x"}
    assert raw.headers is None  # tracing off: the context travels in the envelope only
    assert env.request.temperature == 0.5 and env.request.metadata == {"team": "a"}
    assert [(m.role, m.content) for m in env.request.messages] == [("user", "via prompt")]


async def test_a_new_trace_is_started_when_the_client_sends_none(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "ok"))

    router.handler = answer
    async with edge.client() as client:
        await client.chat.completions.create(model="m", messages=MESSAGES)
    env = router.envelopes[0]
    version, trace_id, parent, flags = env.trace["traceparent"].split("-")
    assert (version, flags) == ("00", "00")
    assert trace_id == env.request_id.replace("-", "") and len(parent) == 16


async def test_a_traced_request_carries_its_trace_context_as_nats_headers_too(
    tracing_on: None, nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "ok"))

    router.handler = answer
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with serve_edge(nats_server.url, tmp_path) as edge, httpx.AsyncClient(base_url=edge.url) as http:
        resp = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {edge.keys.public}", "traceparent": parent},
        )
    assert resp.status_code == 200, resp.text
    env, raw = router.envelopes[0], router.raw[0]
    assert env.trace["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert env.trace["traceparent"] != parent  # the edge's span is the router's parent
    assert raw.headers == env.trace


async def test_stream_relays_deltas_then_final_chunks_with_usage_then_done(
    edge: Edge, router: FakeRouter
) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        rid = env.request_id
        first = chunk(rid, "", usage=None)
        first["choices"][0]["delta"]["role"] = "assistant"
        extra = {headers.GATEWAY: "g:0001", headers.PARAMS: PARAMS}
        await r.emit(env, EventKind.DELTA, 0, first, **extra)
        for i, word in enumerate(["one ", "two ", "three"], start=1):
            await r.emit(env, EventKind.DELTA, i, chunk(rid, word, usage=None))
        usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
        closing = [
            chunk(rid, finish="stop", usage=None),
            {**chunk(rid), "choices": [], "usage": usage, "generation_context": {"generated_usage": []}},
        ]
        await r.emit(env, EventKind.FINAL, 4, "\n".join(json.dumps(c) for c in closing).encode())

    router.handler = answer
    async with edge.client() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert raw.headers["cache-control"] == "no-cache" and raw.headers["x-accel-buffering"] == "no"
        assert raw.headers["x-aigw-gateway"] == "g:0001" and raw.headers["x-request-id"]
        chunks = [c async for c in raw.parse()]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert router.cancels == []


async def test_raw_sse_frames_each_event_and_ends_with_done(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.DELTA, 0, b'{"n":0}')
        await r.emit(env, EventKind.DELTA, 1, b'{"n":1}')
        await r.emit(env, EventKind.FINAL, 2, b'{"n":2}\n{"n":3}\n')

    router.handler = answer
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    async with (
        httpx.AsyncClient(base_url=edge.url, headers={"Authorization": f"Bearer {edge.keys.good}"}) as http,
        http.stream("POST", "/api/v1/chat/completions", json=body) as resp,
    ):
        text = (await resp.aread()).decode()
    assert resp.status_code == 200
    assert text == 'data: {"n":0}\n\ndata: {"n":1}\n\ndata: {"n":2}\n\ndata: {"n":3}\n\ndata: [DONE]\n\n'


@pytest.mark.parametrize("stream", [False, True])
async def test_an_error_first_is_a_plain_http_error_the_sdk_maps_to_its_exception(
    edge: Edge, router: FakeRouter, stream: bool
) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.error(env, 0, 429, "slow down", **{headers.RETRY_AFTER: "1.5"})

    router.handler = answer
    async with edge.client() as client:
        with pytest.raises(openai.RateLimitError) as err:
            await client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
    resp = err.value.response
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["retry-after"] == "2" and resp.headers["retry-after-ms"] == "1500"
    assert resp.headers["x-request-id"]
    assert err.value.body == {"message": "slow down", "type": "test_error", "param": None, "code": "test"}


async def test_not_found_first_raises_not_found(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.error(env, 0, 404, "no such gateway")

    router.handler = answer
    async with edge.client() as client:
        with pytest.raises(openai.NotFoundError) as err:
            await client.chat.completions.create(model="nope", messages=MESSAGES, stream=True)
    assert err.value.body is not None and err.value.body["message"] == "no such gateway"  # type: ignore[index]
    assert "retry-after" not in err.value.response.headers


async def test_an_error_after_the_stream_started_raises_in_the_sdk(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "partial"))
        await r.error(env, 1, 502, "upstream dropped the stream")

    router.handler = answer
    got: list[str] = []
    async with edge.client() as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="upstream dropped the stream"):
            async for c in stream:
                got.append(c.choices[0].delta.content or "")
    assert got == ["partial"]


async def test_a_lost_event_ends_the_stream_with_a_502_error_and_cancels(
    edge: Edge, router: FakeRouter
) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "a"))
        await r.emit(env, EventKind.DELTA, 2, chunk(env.request_id, "c"))  # seq 1 never arrives

    router.handler = answer
    async with edge.client() as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="lost") as err:
            async for _ in stream:
                pass
    assert err.value.body is not None and err.value.body["code"] == "upstream_error"  # type: ignore[index]
    await eventually(lambda: len(router.cancels) == 1, what="cancel")
    assert router.cancels[0].request_id == router.envelopes[0].request_id
    assert router.cancels[0].reason == "lost_events"


async def test_a_lost_first_event_is_a_502(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 1, completion(env.request_id, "x"))

    router.handler = answer
    async with edge.client() as client:
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert err.value.status_code == 502


async def test_an_idle_stream_ends_with_a_504_error_chunk(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "then silence"))

    router.handler = answer
    started = time.monotonic()
    async with edge.client() as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="idle") as err:
            async for _ in stream:
                pass
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0  # stream_idle_timeout is 1 s in these tests
    assert err.value.body is not None and err.value.body["type"] == "timeout"  # type: ignore[index]
    await eventually(lambda: [c.reason for c in router.cancels] == ["stream_idle"], what="cancel")
    assert edge.app.bus.in_flight == 0


async def test_no_first_event_before_the_deadline_is_a_504_and_cancels(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    async with serve_edge(nats_server.url, tmp_path, request_timeout=0.5) as edge, edge.client() as client:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        assert err.value.status_code == 504
        assert 0.5 <= time.monotonic() - started < 2.0
        await eventually(lambda: [c.reason for c in router.cancels] == ["deadline_exceeded"], what="cancel")
        assert router.cancels[0].request_id == router.envelopes[0].request_id
        assert edge.app.bus.in_flight == 0


async def test_no_router_is_an_immediate_503(fresh_nats: NatsServer, tmp_path: Path) -> None:
    # A server of its own: nothing may subscribe to the router subject here.
    async with serve_edge(fresh_nats.url, tmp_path) as edge, edge.client() as client:
        for stream in (False, True):
            started = time.monotonic()
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(model="m", messages=MESSAGES, stream=stream)
            assert err.value.status_code == 503 and "router" in err.value.message
            assert time.monotonic() - started < 1.0  # nats-server's no-responders status, not a timeout
        assert edge.app.bus.in_flight == 0


async def test_stream_client_disconnect_publishes_a_cancel(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        for i in range(200):
            if r.cancels:
                return
            await r.emit(env, EventKind.DELTA, i, chunk(env.request_id, f"t{i} "))
            await asyncio.sleep(0.02)

    router.handler = answer
    async with edge.client() as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        async for c in stream:
            assert c.choices[0].delta.content == "t0 "
            break
        await stream.close()
    await eventually(lambda: len(router.cancels) == 1, what="cancel")
    assert router.cancels[0].request_id == router.envelopes[0].request_id
    assert router.cancels[0].reason == "client_disconnected"
    await eventually(lambda: edge.app.bus.in_flight == 0, what="inbox dropped")


async def test_non_stream_client_disconnect_publishes_a_cancel(edge: Edge, router: FakeRouter) -> None:
    # No handler: the answer never comes, and the client gives up first.
    async with httpx.AsyncClient(base_url=edge.url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {edge.keys.good}"},
            )
    await eventually(lambda: len(router.cancels) == 1, what="cancel")
    assert router.cancels[0].request_id == router.envelopes[0].request_id
    await eventually(lambda: edge.app.bus.in_flight == 0, what="inbox dropped")


async def test_late_events_for_a_finished_request_are_dropped(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "done"))
        await r.emit(env, EventKind.DELTA, 1, chunk(env.request_id, "late"))

    router.handler = answer
    async with edge.client() as client:
        for _ in range(3):
            reply = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert reply.choices[0].message.content == "done"
    assert edge.app.bus.in_flight == 0


async def test_concurrent_streams_each_get_their_own_events(edge: Edge, router: FakeRouter) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        tag = env.request.messages[0].text()
        for i in range(5):
            await r.emit(env, EventKind.DELTA, i, chunk(env.request_id, f"{tag}{i}"))
        await r.emit(env, EventKind.FINAL, 5, chunk(env.request_id, finish="stop"))

    router.handler = answer

    async def one(client: openai.AsyncOpenAI, tag: str) -> str:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": tag}],
            stream=True,
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async with edge.client() as client:
        texts = await asyncio.gather(*(one(client, f"r{n}-") for n in range(8)))
    assert texts == [f"r{n}-0r{n}-1r{n}-2r{n}-3r{n}-4" for n in range(8)]


@pytest.mark.parametrize("fast_path", [True, False])
async def test_both_delivery_paths_relay_the_same_events(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter, fast_path: bool
) -> None:
    async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
        extra = {headers.GATEWAY: "g:0001", headers.PARAMS: PARAMS}
        await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "a"), **extra)
        await r.emit(env, EventKind.DELTA, 1, chunk(env.request_id, "b"))
        await r.emit(env, EventKind.FINAL, 2, chunk(env.request_id, finish="stop"))

    router.handler = answer
    async with serve_edge(nats_server.url, tmp_path, nats_fast_path=fast_path) as edge:
        assert edge.app.bus.fast_path is fast_path
        async with edge.client() as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in raw.parse()])
        assert text == "ab" and raw.headers["x-aigw-gateway"] == "g:0001"


async def test_no_router_is_503_on_the_fallback_path_too(fresh_nats: NatsServer, tmp_path: Path) -> None:
    async with serve_edge(fresh_nats.url, tmp_path, nats_fast_path=False) as edge, edge.client() as client:
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="m", messages=MESSAGES)
        assert err.value.status_code == 503 and "router" in err.value.message


async def test_the_edge_survives_a_nats_restart(fresh_nats: NatsServer, tmp_path: Path) -> None:
    async with serve_edge(fresh_nats.url, tmp_path) as edge, httpx.AsyncClient(base_url=edge.url) as http:
        assert edge.app.bus.fast_path
        fresh_nats.stop()
        await eventually(lambda: not edge.app.bus.connected, what="disconnect noticed")
        assert (await http.get("/readyz")).status_code == 503
        fresh_nats.start()
        await eventually(lambda: edge.app.bus.connected, within=15, what="reconnect")
        nc = await nats.connect(fresh_nats.url)
        try:
            router = await FakeRouter(nc).start()

            async def answer(env: ChatEnvelope, r: FakeRouter) -> None:
                await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "after restart"))

            router.handler = answer
            async with edge.client() as client:
                reply = await client.chat.completions.create(model="m", messages=MESSAGES)
            assert reply.choices[0].message.content == "after restart"
            assert (await http.get("/readyz")).status_code == 200
        finally:
            await nc.close()


async def test_a_slow_reader_is_cut_off_instead_of_growing_the_edge(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    """A client that stops reading a flooding stream: the edge holds at most its stream buffer
    for it, tells the worker to stop at once, and ends the stream with a `slow_reader` error."""
    limit = 64 * 1024
    piece = "x" * 16_000

    async def flood(env: ChatEnvelope, r: FakeRouter) -> None:
        rid = env.request_id
        for seq in range(400):  # 6.4 MB of deltas, far beyond the socket buffers and the limit
            await r.emit(env, EventKind.DELTA, seq, chunk(rid, piece))
            if r.cancels:
                return

    router.handler = flood
    async with serve_edge(nats_server.url, tmp_path, stream_buffer_bytes=limit) as edge:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.settings.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        body = json.dumps({"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {edge.keys.good}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        await writer.drain()
        # Nothing is read: the cancel comes while the client is still silent.
        await eventually(lambda: bool(router.cancels), 20, "the worker told to stop")
        assert router.cancels[0].reason == "slow_reader"
        # Cut: nothing more is kept for this client (the relay may already have ended the stream,
        # written into the socket buffers, and let the request go).
        assert all(inbox.queued == -1 for inbox in edge.app.bus._inboxes.values())
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the HTTP response
            received += await asyncio.wait_for(reader.read(65536), 30)
        writer.close()
    assert received.count(b"data: ") < 400  # cut short
    assert b'"code": "slow_reader"' in received or b'"code":"slow_reader"' in received


async def test_a_cut_reader_stays_cut_after_the_relay_takes_its_burst() -> None:
    """Taking everything queued resets the byte count, but not the cut: once a reader overflowed,
    later events for it are not kept, whatever the relay has already taken."""
    from aigw_edge.bus import OVERFLOW, Event, Inbox

    inbox = Inbox(deadline=float("inf"))
    inbox.queued = 10
    inbox.put(Event({}, b"0123456789"))
    assert await inbox.get_all() and inbox.queued == 0
    inbox.queued = -1
    inbox.put(OVERFLOW)
    assert await inbox.get_all() == [OVERFLOW]
    assert inbox.queued == -1
