"""Where the router sends `POST /v1/embeddings` jobs: an embedding upstream's to a worker (with the
edge's own reply subject), any name no gateway or catalog model has to retrieval (the local model),
and a chat model is a 400 there as an embedding model is in chat."""

from __future__ import annotations

import json
import time

import pytest

from aigw_contracts import (
    ChatCompletionRequest,
    ChatEnvelope,
    ConfigSnapshot,
    Gateway,
    Upstream,
    errors,
    headers,
    subjects,
)
from aigw_contracts.embeddings import EmbedJob, RoutedEmbed
from aigw_router.app import Handlers, Router
from aigw_router.registry import Registry
from aigw_router.settings import RouterSettings

GID = "01990000-0000-7000-8000-00000000abcd"
GID2 = "01990000-0000-7000-8000-00000000abce"
GID3 = "01990000-0000-7000-8000-00000000abcf"
REPLY = "_INBOX_edge.abc.1"


EMBEDDING = {"output": ["embedding"]}


def _own(uid: str, model: str, **fields: object) -> Upstream:
    return Upstream.model_validate(
        {"id": uid, "kind": "own", "model": model, "base_url": "http://x/v1", "tenant": "t1", **fields}
    )


def _handlers() -> Handlers:
    embedder = _own("own-embed", "bge-small", modalities=EMBEDDING)
    gemini = _own("own-gemini-embed", "text-embedding-004", api="gemini", modalities=EMBEDDING)
    chat = _own("own-chat", "llama")
    registry = Registry.from_snapshot(
        ConfigSnapshot(
            upstreams=[embedder, gemini, chat],
            gateways=[
                Gateway.model_validate(
                    {"id": GID, "name": "vectors", "tenant": "t1", "upstream": "own-embed"}
                ),
                Gateway.model_validate({"id": GID2, "name": "talk", "tenant": "t1", "upstream": "own-chat"}),
                Gateway.model_validate(
                    {"id": GID3, "name": "gem", "tenant": "t1", "upstream": "own-gemini-embed"}
                ),
            ],
        ),
        catalog=[],
    )
    return Handlers(Router(RouterSettings(), registry), "r1")


def _job(model: str) -> bytes:
    job = EmbedJob(
        request_id="req1", tenant="t1", key_id="k1", model=model, texts=["hi"], deadline=time.time() + 5
    )
    return job.model_dump_json().encode()


def test_an_embedding_gateway_goes_to_a_worker_and_other_names_to_retrieval() -> None:
    h = _handlers()
    out = h.embed(_job(GID), REPLY)
    assert (out.subject, out.reply) == (subjects.WORKER_EMBED, REPLY)
    routed = RoutedEmbed.model_validate_json(out.payload)
    assert (routed.gateway_id, routed.upstream.id, routed.upstream.model) == (GID, "own-embed", "bge-small")
    assert routed.job.texts == ["hi"]

    job = _job("all-MiniLM-L6-v2")
    local = h.embed(job, REPLY)
    assert (local.subject, local.reply, local.payload) == (subjects.RETRIEVAL_EMBED, REPLY, job)


def test_a_chat_model_refuses_embeddings_and_an_embedding_model_refuses_chat() -> None:
    h = _handlers()
    refused = h.embed(_job("talk"), REPLY)
    assert refused.subject == REPLY and (refused.headers or {})[headers.STATUS] == "400"
    assert "not an embedding model" in json.loads(refused.payload)["error"]["message"]
    other_api = h.embed(_job("gem"), REPLY)
    assert (other_api.headers or {})[headers.STATUS] == "400"
    assert "OpenAI-compatible upstreams only" in json.loads(other_api.payload)["error"]["message"]
    envelope = ChatEnvelope(
        request_id="r2",
        tenant="t1",
        key_id="k1",
        reply="aigw.v1.reply.e.r2",
        deadline=time.time() + 5,
        request=ChatCompletionRequest.model_validate(
            {"model": GID, "messages": [{"role": "user", "content": "x"}]}
        ),
    )
    with pytest.raises(errors.InvalidRequest, match="POST /v1/embeddings"):
        h.router.route(envelope)
