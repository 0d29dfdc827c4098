"""What a client sees before anything reaches the bus, and the non-chat routes: every error is
OpenAI's body with the status the SDKs expect."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
import pytest
from nats.aio.msg import Msg

from aigw_contracts import ApiKey, subjects
from aigw_contracts.api import Model, ModelList
from aigw_contracts.events import EventKind
from aigw_contracts.messages import ModelsQuery
from aigw_devstack.nats import NatsServer

from .conftest import Edge, FakeRouter, completion, serve_edge

MESSAGES = [{"role": "user", "content": "hello"}]


def assert_openai_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return dict(error)


@pytest.fixture
async def http(edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=edge.url, headers={"Authorization": f"Bearer {edge.keys.good}"}, timeout=10
    ) as client:
        yield client


@pytest.mark.parametrize("which", ["missing", "unknown", "revoked", "expired", "not-bearer"])
async def test_bad_keys_are_401_and_never_reach_the_bus(edge: Edge, router: FakeRouter, which: str) -> None:
    auth = {
        "missing": None,
        "unknown": "Bearer aigw_this-key-was-never-issued-by-anyone-at-all",
        "revoked": f"Bearer {edge.keys.revoked}",
        "expired": f"Bearer {edge.keys.expired}",
        "not-bearer": f"Basic {edge.keys.good}",
    }[which]
    async with httpx.AsyncClient(base_url=edge.url) as client:
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"Authorization": auth} if auth else {},
        )
    error = assert_openai_error(resp, 401)
    assert error["type"] == "invalid_request_error"
    assert len(resp.headers["x-request-id"]) == 36
    if which in ("revoked", "expired"):
        assert which in error["message"]
    assert router.envelopes == []


async def test_the_sdk_raises_authentication_error_for_a_wrong_key(edge: Edge) -> None:
    async with edge.client("aigw_wrong-wrong-wrong-wrong-wrong-wrong-wrong") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="m", messages=MESSAGES)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            "temperature",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}', "temperature"),
        (b'{"model": "m"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": 5}', "stop"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}', "frobnicate"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream_options": {}}',
            "stream_options",
        ),
        # what OpenAI requires of each role, named as OpenAI names it
        (
            b'{"model": "m", "messages": [{"role": "system", "content": "s"}, {"role": "user"}]}',
            "messages[1].content",
        ),
        (b'{"model": "m", "messages": [{"role": "developer"}]}', "messages[0].content"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}',
            "messages[1].content",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": '
            b'[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, '
            b'{"role": "tool", "content": "r"}]}',
            "messages[2].tool_call_id",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r", '
            b'"tool_call_id": "c9"}]}',
            "messages[1].tool_call_id",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": '
            b'[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, '
            b'{"role": "user", "content": "again"}]}',
            "messages[1].tool_calls",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": '
            b'[{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}',
            "messages[1].tool_calls[0].id",
        ),
        (
            b'{"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url", "image_url": '
            b'{"url": "https://x"}}]}]}',
            "messages[0].content[0].type",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": []}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "function", "content": "r"}]}', "messages[0].name"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
            "tools[0].function",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
            b'"function": {"name": "f"}}, {"type": "function", "function": {"name": "has space"}}]}',
            "tools[1].function.name",
        ),
        # parameters the gateway cannot honour faithfully are refused, never dropped
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "store": true}', "store"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "service_tier": "priority"}',
            "service_tier",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "audio": {"voice": "alloy"}}',
            "audio",
        ),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "web_search_options": {}}',
            "web_search_options",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 129}', "n"),
    ],
)
async def test_bad_input_is_400_naming_the_param(
    http: httpx.AsyncClient, router: FakeRouter, body: bytes, param: str | None
) -> None:
    resp = await http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(resp, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert router.envelopes == []


async def test_the_sdk_raises_bad_request_for_an_unknown_argument(edge: Edge) -> None:
    async with edge.client() as client:
        with pytest.raises(openai.BadRequestError) as err:
            await client.chat.completions.create(
                model="m",
                messages=MESSAGES,
                extra_body={"frobnicate": True},
            )
    assert err.value.param == "frobnicate"


async def test_a_declared_body_over_the_limit_is_413(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    async with serve_edge(nats_server.url, tmp_path, max_body_bytes=1000) as edge:
        async with httpx.AsyncClient(base_url=edge.url) as client:
            resp = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": "x" * 2000}]},
                headers={"Authorization": f"Bearer {edge.keys.good}"},
            )
        assert assert_openai_error(resp, 413)["code"] == "request_too_large"
        assert router.envelopes == []


async def test_a_chunked_body_over_the_limit_is_413(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 500
        yield b'"}]}'

    async with serve_edge(nats_server.url, tmp_path, max_body_bytes=1000) as edge:
        async with httpx.AsyncClient(base_url=edge.url) as client:
            resp = await client.post(
                "/v1/chat/completions",
                content=chunks(),
                headers={"Authorization": f"Bearer {edge.keys.good}"},
            )
        assert "content-length" not in resp.request.headers  # it really was chunked
        assert_openai_error(resp, 413)
        assert router.envelopes == []


async def test_a_chunked_body_under_the_limit_is_accepted(
    http: httpx.AsyncClient, router: FakeRouter
) -> None:
    async def answer(env: Any, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, env.request.messages[0].text()))

    router.handler = answer

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", '
        yield b'"content": "in pieces"}]}'

    resp = await http.post("/v1/chat/completions", content=chunks())
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "in pieces"


async def test_an_envelope_over_the_nats_max_payload_is_413(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    # The body limit allows it, but nats-server's max_payload (1 MiB by default) does not.
    async with serve_edge(nats_server.url, tmp_path, max_body_bytes=4 * 1024 * 1024) as edge:
        big = "x" * (edge.app.bus.max_payload + 10)
        async with httpx.AsyncClient(base_url=edge.url) as client:
            resp = await client.post(
                "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": big}]},
                headers={"Authorization": f"Bearer {edge.keys.good}"},
            )
        error = assert_openai_error(resp, 413)
        assert "message bus" in error["message"]
        assert resp.headers["x-request-id"]
        assert router.envelopes == []


async def test_unknown_routes_are_404_and_wrong_methods_405(http: httpx.AsyncClient) -> None:
    error = assert_openai_error(await http.get("/v1/nothing-here"), 404)
    assert error["code"] == "unknown_url" and "/v1/nothing-here" in error["message"]
    resp = await http.get("/v1/chat/completions")
    assert_openai_error(resp, 405)
    assert resp.headers["allow"] == "POST"
    assert_openai_error(await http.delete("/v1/models"), 405)


async def test_an_unexpected_exception_is_a_500_openai_body_with_the_traceback_only_in_logs(
    nats_server: NatsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(authorization: bytes | None, now: float | None = None) -> ApiKey:
        raise RuntimeError("boom: a bug")

    async with serve_edge(nats_server.url, tmp_path) as edge:
        edge.app.keys.authenticate = broken
        async with httpx.AsyncClient(base_url=edge.url) as client:
            chat = await client.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
            models = await client.get("/v1/models")  # a FastAPI route: the framework's error path
    for resp in (chat, models):
        error = assert_openai_error(resp, 500)
        assert "boom" not in resp.text and error["type"] == "server_error"
    assert chat.headers["x-request-id"]
    logged = [r for r in caplog.records if r.exc_info and "boom: a bug" in str(r.exc_info[1])]
    assert len(logged) == 2


async def test_models_relays_the_routers_list_for_the_keys_tenant(
    http: httpx.AsyncClient, edge: Edge, router: FakeRouter
) -> None:
    queries: list[ModelsQuery] = []

    async def on_models(msg: Msg) -> None:
        queries.append(ModelsQuery.model_validate_json(msg.data))
        listing = ModelList(data=[Model(id="support:50c3", created=1, owned_by="acme")])
        await msg.respond(listing.model_dump_json().encode())

    await router.nc.subscribe(subjects.ROUTER_MODELS, cb=on_models)
    await router.nc.flush()
    async with edge.client(edge.keys.public) as client:
        ids = [m.id async for m in client.models.list()]
    assert ids == ["support:50c3"]
    assert queries == [ModelsQuery(tenant="acme", key_kind="public")]
    resp = await http.get("/api/v1/models")
    assert resp.status_code == 200 and resp.json()["object"] == "list"


async def test_models_without_a_router_is_503_and_a_silent_router_504(
    fresh_nats: NatsServer, tmp_path: Path
) -> None:
    async with (
        serve_edge(fresh_nats.url, tmp_path) as edge,
        httpx.AsyncClient(base_url=edge.url, headers={"Authorization": f"Bearer {edge.keys.good}"}) as client,
    ):
        assert_openai_error(await client.get("/v1/models"), 503)
        nc = await nats.connect(fresh_nats.url)
        try:
            await nc.subscribe(subjects.ROUTER_MODELS, cb=_ignore)
            await nc.flush()
            assert_openai_error(await client.get("/v1/models"), 504)  # models_timeout is 1 s
        finally:
            await nc.close()
        assert_openai_error(await client.get("/v1/models", headers={"Authorization": ""}), 401)


async def _ignore(msg: Msg) -> None:
    return None


async def test_health_and_readiness(edge: Edge) -> None:
    async with httpx.AsyncClient(base_url=edge.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
        await edge.app.bus.nc.close()
        assert_openai_error(await client.get("/readyz"), 503)
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {edge.keys.good}"},
        )
        assert_openai_error(resp, 503)


async def test_one_access_line_per_request_without_secrets(
    edge: Edge, router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    async def answer(env: Any, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "ok"))

    router.handler = answer
    caplog.set_level(logging.INFO, logger="aigw.edge.access")
    async with edge.client() as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=MESSAGES)
    async with httpx.AsyncClient(base_url=edge.url) as http:
        await http.get("/healthz")
    lines = [r for r in caplog.records if r.name == "aigw.edge.access"]
    assert len(lines) == 2
    chat, health = (vars(r) for r in lines)
    assert chat["request_id"] == raw.headers["x-request-id"]
    assert (chat["tenant"], chat["key_id"], chat["model"], chat["stream"], chat["status"]) == (
        "acme",
        "k-good",
        "m",
        False,
        200,
    )
    assert chat["duration_ms"] >= 0 and chat["outcome"] == "final"
    assert (health["path"], health["status"]) == ("/healthz", 200)
    everything = json.dumps([{k: str(v) for k, v in vars(r).items()} for r in caplog.records])
    assert edge.keys.good not in everything and "authorization" not in everything.lower()
