"""The app's shape: one middleware stack for every endpoint, and an OpenAPI document that describes
the real API (security scheme, the chat endpoint served outside FastAPI, usage, error bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw_contracts.events import EventKind
from aigw_devstack.nats import NatsServer
from aigw_edge import EdgeApp

from .conftest import FakeRouter, completion, serve_edge

MESSAGES = [{"role": "user", "content": "hello"}]


class Stamp:
    """A middleware as a deployment might add one (CORS, tracing): it marks every response."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message["headers"], (b"x-stamp", self.value)]
            await send(message)

        await self.app(scope, receive, stamped)


async def test_a_middleware_added_once_wraps_chat_and_management(
    nats_server: NatsServer, tmp_path: Path, router: FakeRouter
) -> None:
    async def answer(env: Any, r: FakeRouter) -> None:
        await r.emit(env, EventKind.FINAL, 0, completion(env.request_id, "ok"))

    router.handler = answer

    def prepare(app: EdgeApp) -> None:
        app.add_middleware(Stamp, value="once")

    async with (
        serve_edge(nats_server.url, tmp_path, prepare=prepare) as edge,
        httpx.AsyncClient(
            base_url=edge.url, headers={"Authorization": f"Bearer {edge.keys.good}"}, timeout=10
        ) as http,
    ):
        chat = await http.post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        refused = await http.post("/v1/chat/completions", json={"model": "m"})
        stream = await http.post(
            "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": True}
        )
        too_big = await http.post("/v1/chat/completions", content=b"x" * (edge.settings.max_body_bytes + 1))
        management = await http.get("/v1/gateways")  # a private key: 403, from the management API
        listing = await http.get("/openapi.json")
        unknown = await http.get("/v1/nothing")
    assert (chat.status_code, refused.status_code, too_big.status_code) == (200, 400, 413)
    assert (stream.status_code, management.status_code, unknown.status_code) == (200, 403, 404)
    for resp in (chat, refused, too_big, stream, management, listing, unknown):
        assert resp.headers.get("x-stamp") == "once", (resp.request.url, resp.headers)


async def test_openapi_documents_the_security_scheme_chat_and_usage(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with serve_edge(nats_server.url, tmp_path) as edge, httpx.AsyncClient(base_url=edge.url) as http:
        doc = (await http.get("/openapi.json")).json()
        docs_page = await http.get("/docs")
    assert docs_page.status_code == 200 and "swagger" in docs_page.text.lower()
    schemes = doc["components"]["securitySchemes"]
    assert [s for s in schemes.values() if s["type"] == "http" and s["scheme"] == "bearer"]
    (scheme,) = schemes
    schemas = doc["components"]["schemas"]

    def ref(name: str) -> dict[str, str]:
        assert name in schemas, f"{name} is not among the components"
        return {"$ref": f"#/components/schemas/{name}"}

    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{scheme: []}]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == ref("ChatCompletionRequest")
    assert {"model", "messages", "stream"} <= set(schemas["ChatCompletionRequest"]["properties"])
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == ref("ChatCompletion")
    events = ok["text/event-stream"]["itemSchema"]["properties"]["data"]
    assert events["contentSchema"] == ref("ChatCompletionChunk")
    for status in ("400", "401", "404", "429", "502", "503", "504"):
        assert chat["responses"][status]["content"]["application/json"]["schema"] == ref("ErrorBody")
    assert schemas["ErrorDetail"]["required"] == ["message", "type"]

    usage = doc["paths"]["/v1/usage"]["get"]
    assert usage["security"] == [{scheme: []}]
    assert usage["responses"]["200"]["content"]["application/json"]["schema"] == ref("UsageReport")
    assert {"from", "to", "tenant", "group_by"} <= {p["name"] for p in usage["parameters"]}
    for status in ("400", "401", "403", "404", "503"):
        assert usage["responses"][status]["content"]["application/json"]["schema"] == ref("ErrorBody")

    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            # This API answers bad input with 400 and OpenAI's body, never FastAPI's 422.
            assert "422" not in operation["responses"], (method, path)
            if path.startswith("/v1/"):
                assert operation.get("security") == [{scheme: []}], (method, path)
