"""`POST /v1/embeddings`: OpenAI's embeddings API, to an embedding upstream or the local model.

The edge checks the key (private keys only: embeddings are not a browser's business), counts the
request against the key's rate limits and the edge's in-flight limit, as chat completions does,
then asks the router (`subjects.ROUTER_EMBED`, one request-reply: no stream, nothing to relay).
The router resolves `model`: a gateway or catalog model whose upstream is an embedding model goes
to an inference worker (`aigw_worker.embed`: provider keys, timeouts, retries, circuits, spend
control, metering), any other name to retrieval, which embeds with the bundled local model and
bills `inference.embeddings.in` itself. Either answers here directly. Vectors come back as raw
float32 rows; `encoding_format: base64` (what the openai SDK asks for by default) is those bytes,
base64-encoded per row, with no float ever formatted; `float` (the default) is JSON numbers.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from array import array
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from aigw_contracts import headers, subjects
from aigw_contracts.embeddings import EmbeddingsRequest, EmbedJob, EmbedResult
from aigw_contracts.errors import Unavailable, UpstreamError
from aigw_contracts.ids import uuid7
from aigw_runtime.bus import request as ask

from ..deps import PrivateKey
from ..logs import SCOPE_KEY
from ..openapi import errors as openapi_errors

PATHS = ("/v1/embeddings",)

router = APIRouter(tags=["embeddings"])
_SWAP = sys.byteorder != "little"


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string with `encoding_format: base64`


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    """OpenAI's embeddings list, plus `generation_context` (the priced usage lines)."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingsUsage
    generation_context: dict[str, Any]


def _rows(raw: bytes, result: EmbedResult, encoding: str | None) -> list[str]:
    """Each vector as its JSON value: a base64 string of its float32 bytes, or an array of numbers."""
    width = result.dim * 4
    if len(raw) != width * result.count:
        raise UpstreamError("The embedding service sent vectors of the wrong size")
    rows = [raw[i * width : (i + 1) * width] for i in range(result.count)]
    if encoding == "base64":
        return ['"' + base64.b64encode(row).decode() + '"' for row in rows]
    out = []
    for row in rows:
        floats = array("f")
        floats.frombytes(row)
        if _SWAP:
            floats.byteswap()
        out.append(json.dumps(floats.tolist()))
    return out


@router.post(
    PATHS[0],
    summary="Create embeddings",
    response_model=EmbeddingsResponse,
    responses=openapi_errors(400, 401, 403, 404, 413, 429, 503, 504),
)
async def create_embeddings(body: EmbeddingsRequest, key: PrivateKey, request: Request) -> Response:
    """OpenAI's embeddings: `input` a string, strings, or token arrays (of the model's tokenizer);
    `model` a gateway or catalog model whose upstream is an embedding model (e.g.
    `@openai/text-embedding-3-small`), or the bundled local model (`all-MiniLM-L6-v2`);
    `dimensions` (the local model keeps the first components, renormalized); `encoding_format`
    `float` or `base64`. Billed as `inference.embeddings.in` per token at the upstream's price."""
    app = request.app
    chat = app.state.chat_endpoint  # the edge's limits live with the chat endpoint
    if key.limits.requests_per_minute or key.limits.requests_per_minute_per_ip:
        chat.limiter.admit(key, request.scope.get("client"))
    request_id = uuid7()
    fields = request.scope.get(SCOPE_KEY)
    if fields is not None:
        fields.update(request_id=request_id, model=body.model)
    texts, tokens = body.texts()
    job = EmbedJob(
        request_id=request_id,
        tenant=key.tenant,
        key_id=key.id,
        model=body.model,
        texts=texts,
        tokens=tokens,
        dimensions=body.dimensions,
        metadata={"user": body.user} if body.user else {},
        deadline=time.time() + app.state.settings.request_timeout,
    )
    bus = app.state.bus
    if bus.nc is None:
        raise Unavailable("The gateway is not connected to its message bus; try again shortly")
    with chat.admission.admit():
        reply = await ask(
            bus.nc,
            subjects.ROUTER_EMBED,
            job.model_dump_json(exclude_none=True).encode(),
            app.state.settings.request_timeout,
            "embedding service",
            "embed the input",
        )
    head, _, raw = reply.data.partition(b"\n")
    result = EmbedResult.model_validate_json(head)
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":{value}}}'
        for i, value in enumerate(_rows(raw, result, body.encoding_format))
    )
    usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
    context = {"generated_usage": [json.loads(line.model_dump_json()) for line in result.lines]}
    tail = json.dumps(
        {"model": result.model, "usage": usage, "generation_context": context}, separators=(",", ":")
    )[1:]
    payload = '{"object":"list","data":[' + data + "]," + tail
    return Response(payload, media_type="application/json", headers={headers.HTTP_REQUEST_ID: request_id})
