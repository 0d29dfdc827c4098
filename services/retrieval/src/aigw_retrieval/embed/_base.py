from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Embeddings:
    """Unit-length float32 vectors, one row per input text, and the tokens the model consumed."""

    vectors: npt.NDArray[np.float32]  # shape (n, dim), L2-normalized
    tokens: int  # what metering bills as `knowledge.embeddings.in`


class Embedder(Protocol):
    """Turns texts into vectors. The same embedder must be used to ingest and to search a collection."""

    @property
    def name(self) -> str:
        """A stable id of the model (stored with a collection, so a mismatch can be refused)."""
        ...

    @property
    def dim(self) -> int: ...

    async def embed(self, texts: list[str]) -> Embeddings: ...

    async def aclose(self) -> None: ...
