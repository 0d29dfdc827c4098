"""An OpenAI-compatible `POST /v1/embeddings` upstream: the production embedder.

Inputs are sent in batches (`batch_size` texts per request, several requests in flight), vectors come
back in input order whatever order the upstream lists them in, and are L2-normalized here so every
store can use inner product as cosine. Token use is the upstream's `usage.prompt_tokens`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np

from ._base import Embeddings


class EmbeddingUpstreamError(RuntimeError):
    """The upstream refused or failed an embeddings request (status and body kept for the log)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"embeddings upstream answered {status}: {body[:300]}")
        self.status = status


class OpenAIEmbedder:
    def __init__(
        self,
        base_url: str,
        model: str,
        dim: int,
        api_key: str | None = None,
        batch_size: int = 128,
        concurrency: int = 4,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._model = model
        self._dim = dim
        self._batch_size = batch_size
        self._limit = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = headers

    @property
    def name(self) -> str:
        return self._model

    @property
    def dim(self) -> int:
        return self._dim

    async def _one(self, texts: list[str]) -> tuple[np.ndarray, int]:
        payload: dict[str, Any] = {"model": self._model, "input": texts, "encoding_format": "float"}
        async with self._limit:
            response = await self._client.post(self._url, json=payload, headers=self._headers)
        if response.status_code != 200:
            raise EmbeddingUpstreamError(response.status_code, response.text)
        body = response.json()
        rows = sorted(body["data"], key=lambda item: item["index"])
        if len(rows) != len(texts):
            raise EmbeddingUpstreamError(502, f"expected {len(texts)} embeddings, got {len(rows)}")
        vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
        if vectors.shape[1] != self._dim:
            raise EmbeddingUpstreamError(502, f"expected dimension {self._dim}, got {vectors.shape[1]}")
        tokens = int((body.get("usage") or {}).get("prompt_tokens", 0))
        return vectors, tokens

    async def embed(self, texts: list[str]) -> Embeddings:
        if not texts:
            return Embeddings(np.zeros((0, self._dim), dtype=np.float32), 0)
        parts = await asyncio.gather(
            *(self._one(texts[i : i + self._batch_size]) for i in range(0, len(texts), self._batch_size))
        )
        vectors = np.concatenate([p[0] for p in parts])
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return Embeddings((vectors / np.maximum(norms, 1e-12)).astype(np.float32), sum(p[1] for p in parts))

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()
