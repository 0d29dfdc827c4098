"""`idempotency_key`: a repeated call gets the first answer's bytes without reaching the router again;
a different body, a call still in progress and an error answer each behave as the README says.

Real nats-server (the JetStream key-value bucket), real uvicorn; the test plays router and worker."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest

from aigw_contracts import ChatEnvelope, headers
from aigw_contracts.events import EventKind
from aigw_contracts.ids import uuid7
from aigw_contracts.streams import IDEMPOTENCY_BUCKET
from aigw_devstack.nats import NatsServer
from aigw_edge.idempotency import PENDING, encode, entry_key, fingerprint

from .conftest import Edge, FakeRouter, chunk, completion, serve_edge

MESSAGES = [{"role": "user", "content": "hello"}]
REPLAY = headers.HTTP_IDEMPOTENT_REPLAY


def _body(key: str, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": MESSAGES, "idempotency_key": key, **extra}


async def _answer_once(env: ChatEnvelope, r: FakeRouter) -> None:
    await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, f"answer {len(r.envelopes)}"))


async def _stream_once(env: ChatEnvelope, r: FakeRouter) -> None:
    await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "one "), **{headers.GATEWAY: "g:0001"})
    await r.emit(env, EventKind.DELTA, 1, chunk(env.request_id, f"call {len(r.envelopes)}"))
    final = json.dumps(
        chunk(env.request_id, None, "stop", usage={"prompt_tokens": 1, "completion_tokens": 2})
    )
    await r.emit(env, EventKind.FINAL, 2, final.encode())


def _http(edge: Edge, key: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=edge.url, headers={"Authorization": f"Bearer {key or edge.keys.good}"}, timeout=10
    )


async def test_a_repeated_call_gets_the_same_bytes_without_reaching_the_router(
    edge: Edge, router: FakeRouter
) -> None:
    router.handler = _answer_once
    key = uuid7()
    async with _http(edge) as http:
        first = await http.post("/v1/chat/completions", json=_body(key))
        # the same request, written differently (key order, spacing): the same request
        again = json.dumps({"idempotency_key": key, "messages": MESSAGES, "model": "m"}, indent=2)
        second = await http.post(
            "/v1/chat/completions", content=again, headers={"content-type": "application/json"}
        )
    assert first.status_code == second.status_code == 200
    assert second.content == first.content and len(router.envelopes) == 1
    assert REPLAY not in first.headers and second.headers[REPLAY] == "true"
    assert second.headers["x-request-id"] != first.headers["x-request-id"]  # each call is logged apart
    assert second.headers["content-type"] == "application/json"


async def test_a_repeated_stream_replays_every_sse_byte(edge: Edge, router: FakeRouter) -> None:
    router.handler = _stream_once
    key = uuid7()
    async with _http(edge) as http:
        first = await http.post("/v1/chat/completions", json=_body(key, stream=True))
        second = await http.post("/v1/chat/completions", json=_body(key, stream=True))
    assert first.content.endswith(b"data: [DONE]\n\n") and second.content == first.content
    assert second.headers["content-type"].startswith("text/event-stream")
    assert second.headers["x-aigw-gateway"] == "g:0001" and second.headers[REPLAY] == "true"
    assert len(router.envelopes) == 1
    # the SDK reads the replay as a stream like any other
    async with edge.client() as client:
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_body={"idempotency_key": key}
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one call 1"


async def test_the_same_key_with_another_body_is_a_422(edge: Edge, router: FakeRouter) -> None:
    router.handler = _answer_once
    key = uuid7()
    async with edge.client() as client:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_body={"idempotency_key": key}
        )
        for changed in ({"temperature": 0.5}, {"stream": True}):
            with pytest.raises(openai.UnprocessableEntityError) as err:
                await client.chat.completions.create(
                    model="m", messages=MESSAGES, extra_body={"idempotency_key": key, **changed}
                )
            assert err.value.code == "idempotency_key_reused" and err.value.param == "idempotency_key"
    assert len(router.envelopes) == 1


async def test_a_repeat_while_the_first_runs_is_a_409_then_the_replay(edge: Edge, router: FakeRouter) -> None:
    release = asyncio.Event()

    async def slow(env: ChatEnvelope, r: FakeRouter) -> None:
        await release.wait()
        await _answer_once(env, r)

    router.handler = slow
    key = uuid7()
    async with _http(edge) as http:
        first = asyncio.create_task(http.post("/v1/chat/completions", json=_body(key)))
        deadline = time.monotonic() + 5
        while not router.envelopes:
            assert time.monotonic() < deadline, "the first call never reached the router"
            await asyncio.sleep(0.01)
        busy = await http.post("/v1/chat/completions", json=_body(key))
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "idempotency_conflict"
        release.set()
        done = await first
        replayed = await http.post("/v1/chat/completions", json=_body(key))
    assert done.status_code == 200 and replayed.content == done.content
    assert len(router.envelopes) == 1


async def test_an_error_answer_is_not_kept_so_a_retry_runs(edge: Edge, router: FakeRouter) -> None:
    async def fail_then_answer(env: ChatEnvelope, r: FakeRouter) -> None:
        if len(r.envelopes) == 1:
            await r.error(env, 0, 503, "upstream down")
        else:
            await _answer_once(env, r)

    router.handler = fail_then_answer
    key = uuid7()
    async with _http(edge) as http:
        failed = await http.post("/v1/chat/completions", json=_body(key))
        retried = await http.post("/v1/chat/completions", json=_body(key))
        kept = await http.post("/v1/chat/completions", json=_body(key))
    assert failed.status_code == 503
    assert retried.status_code == 200 and REPLAY not in retried.headers
    assert kept.content == retried.content and kept.headers[REPLAY] == "true"
    assert len(router.envelopes) == 2


async def test_a_stream_cut_short_is_not_kept(edge: Edge, router: FakeRouter) -> None:
    async def cut(env: ChatEnvelope, r: FakeRouter) -> None:
        await r.emit(env, EventKind.DELTA, 0, chunk(env.request_id, "partial"))
        await r.error(env, 1, 502, "upstream dropped")

    router.handler = cut
    key = uuid7()
    async with _http(edge) as http:
        first = await http.post("/v1/chat/completions", json=_body(key, stream=True))
        second = await http.post("/v1/chat/completions", json=_body(key, stream=True))
    assert b'"error"' in first.content and REPLAY not in second.headers
    assert len(router.envelopes) == 2


async def test_keys_belong_to_the_api_key_that_used_them(edge: Edge, router: FakeRouter) -> None:
    router.handler = _answer_once
    key = uuid7()
    async with _http(edge) as private, _http(edge, edge.keys.public) as public:
        await private.post("/v1/chat/completions", json=_body(key))
        other = await public.post("/v1/chat/completions", json=_body(key))
    assert other.status_code == 200 and REPLAY not in other.headers
    assert len(router.envelopes) == 2


async def test_a_pending_key_whose_owner_died_is_taken_over(
    edge: Edge, router: FakeRouter, nats_server: NatsServer
) -> None:
    router.handler = _answer_once
    key = uuid7()
    body = json.dumps(_body(key)).encode()
    nc = await nats.connect(nats_server.url)
    try:
        async with _http(edge) as http:  # opens the bucket
            await http.post("/v1/chat/completions", json=_body(uuid7()))
        kv = await nc.jetstream().key_value(IDEMPOTENCY_BUCKET)
        name = entry_key("acme", "k-good", key)
        abandoned = {"state": PENDING, "body": fingerprint(body), "until": time.time() - 1}
        await kv.create(name, encode(abandoned))
        async with _http(edge) as http:
            taken = await http.post("/v1/chat/completions", content=body)
        assert taken.status_code == 200 and REPLAY not in taken.headers
        other = uuid7()
        other_body = json.dumps(_body(other)).encode()
        live = {"state": PENDING, "body": fingerprint(other_body), "until": time.time() + 60}
        await kv.create(entry_key("acme", "k-good", other), encode(live))
        async with _http(edge) as http:
            busy = await http.post("/v1/chat/completions", content=other_body)
        assert busy.status_code == 409
    finally:
        await nc.close()


async def test_the_buckets_ttl_is_the_edges_window(fresh_nats: NatsServer, tmp_path: Path) -> None:
    async with serve_edge(fresh_nats.url, tmp_path, idempotency_window=90.0) as edge:
        nc = await nats.connect(fresh_nats.url)
        try:
            router = await FakeRouter(nc).start()
            router.handler = _answer_once
            async with _http(edge) as http:
                ok = await http.post("/v1/chat/completions", json=_body(uuid7()))
            assert ok.status_code == 200
            status = await (await nc.jetstream().key_value(IDEMPOTENCY_BUCKET)).status()
            assert status.ttl == 90.0
        finally:
            await nc.close()
