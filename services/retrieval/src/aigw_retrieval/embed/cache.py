"""A query-embedding cache: the same search text is embedded once, then served from memory.

On the request path the query embedding is most of a grounded request's added latency (measured
here: ~10 ms of CPU for a one-line question with the bundled model, against ~1 ms for the search),
and questions repeat (suggested questions, retries, the same FAQ asked by many users). The billed
tokens are those the text took when it was embedded, so a cached query bills exactly as a fresh one.

Only single-text calls are cached (a conversation's search term, one at a time): that keeps each
entry's token count exact without splitting a batch's total. Ingestion never goes through here.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import numpy.typing as npt

from ._base import Embedder, Embeddings


class CachedEmbedder:
    def __init__(self, inner: Embedder, size: int = 4096) -> None:
        self.inner = inner
        self.size = size
        self._entries: OrderedDict[str, tuple[npt.NDArray[np.float32], int]] = OrderedDict()
        self.hits = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    async def embed(self, texts: list[str]) -> Embeddings:
        if len(texts) != 1 or self.size <= 0:
            return await self.inner.embed(texts)
        text = texts[0]
        found = self._entries.get(text)
        if found is not None:
            self._entries.move_to_end(text)
            self.hits += 1
            vector, tokens = found
            return Embeddings(vector[None, :], tokens)
        embedded = await self.inner.embed(texts)
        vector = embedded.vectors[0].copy()
        vector.setflags(write=False)  # shared by every later hit
        self._entries[text] = (vector, embedded.tokens)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return embedded

    async def aclose(self) -> None:
        await self.inner.aclose()
