"""`POST /v1/embeddings` through the system: openai SDK -> edge -> NATS -> retrieval's local model,
billed as `inference.embeddings.in` into metering."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator
from decimal import Decimal

import httpx
import numpy as np
import openai
import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from aigw_contracts import skus
from aigw_devstack.stack import Stack
from aigw_retrieval.embed import MiniLMEmbedder
from tests.conftest import api_client, eventually, start_stack, stored_lines

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
            stored = stored_lines(http, request_id)
            return {sku: quantity for sku, (quantity, _) in stored.items()} == {
                skus.EMBEDDINGS_IN: expected.tokens
            }

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


# --------------------------------------------------------------------------- embedding upstreams
# The simulator's `/v1/embeddings` (deterministic vectors, `aigw_simulator.embeddings`) as a catalog
# embedding model of the keyless `sim` provider, and as a tenant's own endpoint: through the router
# and an inference worker, billed at the upstream's price.

EMBED_PRICE = Decimal("2E-8")  # per token: OpenAI's text-embedding-3-small ($0.02 per million)
EMBEDDING = {"output": ["embedding"]}


def _lines(reply: object) -> list[dict[str, object]]:
    extra = getattr(reply, "model_extra", None) or {}
    lines: list[dict[str, object]] = extra["generation_context"]["generated_usage"]
    return lines


def _decimal(value: object) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


@pytest.fixture(scope="module")
def embed_upstream(metered: Stack) -> Iterator[str]:
    assert metered.demo is not None
    upstream = {
        "kind": "catalog",
        "id": "@sim/embed-sim",
        "provider": "sim",
        "model": "sim-embedding",
        "base_url": f"{metered.sim_url}/v1",
        "prices": {"input": str(EMBED_PRICE)},
        "modalities": EMBEDDING,
    }
    with api_client(metered, metered.demo.operator_key) as op:
        made = op.post("/upstreams", json=upstream)
        assert made.status_code == 201, made.text
        yield upstream["id"]
        op.delete(f"/upstreams/{upstream['id']}")


def _routable(client: OpenAI, model: str) -> bool:
    try:
        client.embeddings.create(model=model, input="ready?")
    except NotFoundError:
        return False
    return True


def test_a_gateway_on_an_embedding_upstream_is_answered_there_and_billed_at_its_price(
    client: OpenAI, metered: Stack, embed_upstream: str
) -> None:
    from aigw_simulator import embeddings as sim

    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as admin:
        gw = admin.post("/gateways", json={"name": "embedder", "upstream": embed_upstream})
        assert gw.status_code == 201, gw.text
        gateway = gw.json()["id"]
        try:
            eventually(lambda: _routable(client, gateway), 10.0, "the embedding gateway routable")
            texts = ["The cat sat on the mat.", "Gateways route requests to models!"]
            raw = client.embeddings.with_raw_response.create(model=gateway, input=texts)  # base64
            reply = raw.parse()
            assert reply.model == embed_upstream
            for text, item in zip(texts, reply.data, strict=True):
                assert item.embedding == sim.vector(text)  # float32 bytes, passed through unchanged
            tokens = sum(sim.tokens(t) for t in texts)
            assert reply.usage.prompt_tokens == tokens == reply.usage.total_tokens
            lines = _lines(reply)
            assert [(line["sku"], line["quantity"]) for line in lines] == [(skus.EMBEDDINGS_IN, tokens)]
            assert _decimal(lines[0]["unit_price"]) == EMBED_PRICE
            assert _decimal(lines[0]["amount"]) == EMBED_PRICE * tokens

            # ClickHouse holds exactly the lines the response said
            request_id = raw.headers["x-request-id"]

            def billed() -> bool:
                return stored_lines(admin, request_id) == {skus.EMBEDDINGS_IN: (tokens, EMBED_PRICE * tokens)}

            eventually(billed, 15.0, "the upstream embedding's usage line in metering")

            # floats, `dimensions` passed to the upstream, and the catalog id named directly
            short = client.embeddings.create(
                model=embed_upstream, input="hello", dimensions=32, encoding_format="float"
            )
            assert short.data[0].embedding == sim.vector("hello", 32)
            with pytest.raises(BadRequestError):  # an embedding model does not chat
                client.chat.completions.create(model=gateway, messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(BadRequestError):  # a chat model does not embed
                client.embeddings.create(model="demo", input="hi")
        finally:
            admin.delete(f"/gateways/{gateway}")


def test_an_own_embedding_endpoint_is_billed_at_zero(client: OpenAI, metered: Stack) -> None:
    from aigw_simulator import embeddings as sim

    assert metered.demo is not None
    with api_client(metered, metered.demo.key) as admin:
        up = admin.post(
            "/upstreams",
            json={"model": "own-embedder", "base_url": f"{metered.sim_url}/v1", "modalities": EMBEDDING},
        )
        assert up.status_code == 201, up.text
        gw = admin.post("/gateways", json={"name": "own-embedder", "upstream": up.json()["id"]}).json()
        try:
            eventually(lambda: _routable(client, gw["id"]), 10.0, "the own embedding gateway routable")
            reply = client.embeddings.create(model=gw["id"], input=["a b c"])
            assert reply.data[0].embedding == sim.vector("a b c")
            lines = _lines(reply)
            assert [(line["sku"], line["quantity"]) for line in lines] == [(skus.EMBEDDINGS_IN, 3)]
            assert _decimal(lines[0]["amount"]) == 0
        finally:
            admin.delete(f"/gateways/{gw['id']}")
            admin.delete(f"/upstreams/{up.json()['id']}")


def test_spend_control_refuses_an_embedding_the_budget_cannot_afford(
    metered: Stack, embed_upstream: str
) -> None:
    from aigw_simulator import embeddings as sim

    assert metered.demo is not None
    text = "one two three four five"  # 23 bytes: held as 23 tokens; billed as 5
    with api_client(metered, metered.demo.operator_key) as op:
        assert op.post("/tenants", json={"id": "embed-spender"}).status_code == 201
        made = op.post("/keys", json={"name": "e", "tenant": "embed-spender", "admin": True})
        assert made.status_code == 201, made.text
        secret = made.json()["secret"]
        path = "/spend/budgets/tenant/embed-spender"
        assert op.put(path, json={"day": str(EMBED_PRICE * 20)}).status_code == 200
        spender = OpenAI(base_url=metered.base_url, api_key=secret, max_retries=0, timeout=30)

        def refused() -> bool:
            try:
                spender.embeddings.create(model=embed_upstream, input=text)
            except openai.APIStatusError as err:
                return err.status_code == 402 and err.code == "insufficient_quota"
            return False

        eventually(refused, 10.0, "a 402 for an embedding over the budget")
        assert op.put(path, json={"day": str(EMBED_PRICE * 30)}).status_code == 200

        def answered() -> bool:
            try:
                return spender.embeddings.create(model=embed_upstream, input=text).usage.prompt_tokens == 5
            except openai.APIStatusError:
                return False

        eventually(answered, 10.0, "the embedding once the budget affords it")

        def settled() -> bool:
            account = op.get(path).json()
            return _decimal(account["reserved"]) == 0 and _decimal(
                account["spent_total"]
            ) == EMBED_PRICE * sim.tokens(text)

        eventually(settled, 10.0, "the hold settled to what was billed")
