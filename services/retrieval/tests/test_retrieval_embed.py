"""The numpy MiniLM equals sentence-transformers; the OpenAI-compatible embedder batches and orders."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from aigw_retrieval.embed import MiniLMEmbedder, OpenAIEmbedder
from aigw_retrieval.embed.openai import EmbeddingUpstreamError

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


def test_numpy_minilm_matches_sentence_transformers(minilm: MiniLMEmbedder) -> None:
    """Reference vectors were made by sentence-transformers + torch (CPU) from the same model files
    in a scratch environment; the batch mixes lengths (padding), non-ASCII text and a text longer
    than 256 tokens (truncation)."""
    reference = json.loads(FIXTURE.read_text())
    expected = np.asarray(reference["embeddings"], dtype=np.float32)
    got = MiniLMEmbedder(batch_size=4)
    got._model = minilm.model  # the same weights, a batch size that forces padding across lengths
    result = got.embed_sync(reference["sentences"])
    cosines = (result.vectors * expected).sum(axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() > 0.999, cosines
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_tokens_are_counted_after_truncation_and_batching_changes_nothing(minilm: MiniLMEmbedder) -> None:
    long_text = "word " * 1000
    one_by_one = [minilm.embed_sync([t]) for t in ("short", long_text, "a medium sized sentence here")]
    together = minilm.embed_sync(["short", long_text, "a medium sized sentence here"])
    assert one_by_one[1].tokens == 256  # [CLS] + 254 words + [SEP]
    assert together.tokens == sum(r.tokens for r in one_by_one)
    for i, single in enumerate(one_by_one):
        assert float(single.vectors[0] @ together.vectors[i]) > 0.9999


def _upstream(minilm: MiniLMEmbedder, seen: list[int]) -> httpx.MockTransport:
    """An OpenAI-compatible upstream computing real embeddings, answering rows in reverse order."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.headers.get("authorization") != "Bearer sk-test":
            return httpx.Response(401, json={"error": {"message": "bad key"}})
        seen.append(len(body["input"]))
        result = minilm.embed_sync(body["input"])
        data = [
            {"object": "embedding", "index": i, "embedding": (v * 3.0).tolist()}  # not unit length
            for i, v in enumerate(result.vectors)
        ]
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        return httpx.Response(
            200, json={"object": "list", "data": data[::-1], "model": body["model"], "usage": usage}
        )

    return httpx.MockTransport(handle)


async def test_openai_embedder_batches_keeps_order_normalizes_and_meters(minilm: MiniLMEmbedder) -> None:
    seen: list[int] = []
    texts = [f"sentence number {i} about topic {i % 3}" for i in range(7)]
    async with httpx.AsyncClient(transport=_upstream(minilm, seen)) as client:
        embedder = OpenAIEmbedder(
            "http://upstream/v1", "minilm", 384, api_key="sk-test", batch_size=3, client=client
        )
        result = await embedder.embed(texts)
        assert sorted(seen) == [1, 3, 3]
        local = minilm.embed_sync(texts)
        assert np.allclose(result.vectors, local.vectors, atol=1e-5)
        assert result.tokens == local.tokens
        bad = OpenAIEmbedder("http://upstream/v1", "minilm", 384, api_key="wrong", client=client)
        with pytest.raises(EmbeddingUpstreamError) as err:
            await bad.embed(["x"])
        assert err.value.status == 401
