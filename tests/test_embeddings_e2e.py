"""`POST /v1/embeddings` through the system: openai SDK -> edge -> NATS -> retrieval's local model,
billed as `inference.embeddings.in` into metering."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from decimal import Decimal

import httpx
import numpy as np
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from aigw_retrieval.embed import MiniLMEmbedder
from tests.conftest import api_client, eventually, start_stack

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("embeddings"), with_metering=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def local() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture
def client(metered: Stack) -> OpenAI:
    assert metered.demo is not None
    return OpenAI(base_url=metered.base_url, api_key=metered.demo.key, max_retries=0, timeout=30)


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_vectors_are_the_local_models_and_billed_on_their_own_sku(
    client: OpenAI, metered: Stack, local: MiniLMEmbedder
) -> None:
    texts = ["The cat sat on the mat.", "Gateways route requests to models."]
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts)  # SDK default: base64
    reply = raw.parse()
    assert [d.index for d in reply.data] == [0, 1]
    expected = local.embed_sync(texts)
    for row, item in zip(expected.vectors, reply.data, strict=True):
        assert len(item.embedding) == 384
        assert np.allclose(np.asarray(item.embedding, dtype=np.float32), row, atol=1e-6)
    assert reply.usage.prompt_tokens == expected.tokens == reply.usage.total_tokens
    lines = (reply.model_extra or {})["generation_context"]["generated_usage"]
    assert [line["sku"] for line in lines] == [skus.EMBEDDINGS_IN]
    assert lines[0]["quantity"] == expected.tokens
    assert Decimal(repr(lines[0]["amount"])) == Decimal(repr(lines[0]["unit_price"])) * expected.tokens

    request_id = raw.headers["x-request-id"]
    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as http:

        def billed() -> bool:
            rows = http.get("/usage", params={"request": request_id, "group_by": "sku"}).json()["rows"]
            return [(r["sku"], r["quantity"]) for r in rows] == [(skus.EMBEDDINGS_IN, expected.tokens)]

        eventually(billed, 15.0, "the embedding's usage line in metering")


def test_float_and_base64_encodings_agree(metered: Stack) -> None:
    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as http:
        floats = http.post("/embeddings", json={"model": MODEL, "input": "hello", "encoding_format": "float"})
        packed = http.post(
            "/embeddings", json={"model": MODEL, "input": "hello", "encoding_format": "base64"}
        )
    assert floats.status_code == packed.status_code == 200
    as_floats = floats.json()["data"][0]["embedding"]
    as_b64 = np.frombuffer(base64.b64decode(packed.json()["data"][0]["embedding"]), dtype="<f4")
    assert isinstance(as_floats, list) and len(as_floats) == 384
    assert np.array_equal(np.asarray(as_floats, dtype=np.float32), as_b64)
    assert floats.json()["object"] == "list" and floats.json()["model"].endswith(MODEL)


def test_dimensions_and_token_arrays(client: OpenAI, local: MiniLMEmbedder) -> None:
    short = client.embeddings.create(model=MODEL, input="hello world", dimensions=64)
    assert len(short.data[0].embedding) == 64
    assert abs(_norm(short.data[0].embedding) - 1.0) < 1e-5
    ids = local.model.tokenizer.encode("hello world", add_special_tokens=False).ids
    by_ids = client.embeddings.create(model=MODEL, input=[ids])
    by_text = client.embeddings.create(model=MODEL, input="hello world")
    assert np.allclose(by_ids.data[0].embedding, by_text.data[0].embedding, atol=1e-6)


def test_bad_requests_are_openai_errors(client: OpenAI, metered: Stack) -> None:
    with pytest.raises(NotFoundError) as missing:
        client.embeddings.create(model="text-embedding-nope", input="x")
    assert missing.value.code == "model_not_found"
    with pytest.raises(BadRequestError):
        client.embeddings.create(model=MODEL, input="x", dimensions=1000)
    with pytest.raises(BadRequestError):
        client.embeddings.create(model=MODEL, input=[])
    reply = httpx.post(f"{metered.base_url}/embeddings", json={"model": MODEL, "input": "x"})
    assert reply.status_code == 401
