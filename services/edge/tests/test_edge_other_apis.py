"""The other APIs in `/openapi.json` (their behaviour is proven end to end in tests/)."""

from __future__ import annotations

from pathlib import Path

import httpx

from aigw_devstack.nats import NatsServer

from .conftest import serve_edge


async def test_openapi_documents_every_other_api_with_its_schemas(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    async with serve_edge(nats_server.url, tmp_path) as edge, httpx.AsyncClient(base_url=edge.url) as http:
        doc = (await http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    paths = doc["paths"]
    expected = {
        "/v1/messages": ("MessagesRequest", "Message"),
        "/v1/responses": ("ResponsesRequest", "ResponseObject"),
        "/v1/embeddings": ("EmbeddingsRequest", "EmbeddingsResponse"),
    }
    for path, (request, response) in expected.items():
        operation = paths[path]["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{request}"}, path
        answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{response}"}, path
        assert request in schemas and response in schemas
        assert operation["security"], path
    assert {"model", "max_tokens", "messages", "tools"} <= set(schemas["MessagesRequest"]["properties"])
    assert {"input", "previous_response_id", "store"} <= set(schemas["ResponsesRequest"]["properties"])
    assert {"get", "delete"} <= set(paths["/v1/responses/{response_id}"])
    assert paths["/v1/messages"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AnthropicError"
    }
