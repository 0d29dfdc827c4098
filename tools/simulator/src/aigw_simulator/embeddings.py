"""`POST /v1/embeddings`: OpenAI's shape, with vectors that depend on the input alone.

Each input's vector is `vector(input, dimensions)`: components drawn from SHA-256 of the input (its
text, or its token ids joined by commas) in counter mode, centred, then scaled to unit length, as
OpenAI's are. Tests compute the expected vectors with the same function. `prompt_tokens` counts
each text's words and punctuation marks (a token array: its length), at least one per input.
`dimensions` (default `DEFAULT_DIM`) and `encoding_format` (`float`, `base64`) are honoured.
A `[sim fault=500|429 fault_times=N fault_model=M latency_ms=X]` directive in the first input (or
`x-sim-*` headers) answers that error instead, as the chat route does, for tests of retries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass
from typing import Any

from aigw_simulator.errors import bad_request

DEFAULT_DIM = 256
MAX_DIM = 4096
_TOKEN = re.compile(r"\w+|[^\w\s]")


def _key(item: str | list[int]) -> bytes:
    return item.encode() if isinstance(item, str) else ",".join(map(str, item)).encode()


def vector(item: str | list[int], dimensions: int = DEFAULT_DIM) -> list[float]:
    """The unit vector the simulator answers for `item`, as float32 values."""
    seed = _key(item)
    raw = b"".join(
        hashlib.sha256(seed + b"\x00" + block.to_bytes(4, "big")).digest()
        for block in range(-(-dimensions * 2 // 32))
    )
    values = [(int.from_bytes(raw[2 * i : 2 * i + 2], "big") - 32767.5) for i in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # rounded through float32, as the wire (and the gateway) carries them
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *(v / norm for v in values))))


def tokens(item: str | list[int]) -> int:
    return max(1, len(_TOKEN.findall(item)) if isinstance(item, str) else len(item))


def _inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise bad_request("'input' must be a non-empty string or array", param="input")
    for item in items:
        ok = (isinstance(item, str) and item) or (
            isinstance(item, list) and item and all(isinstance(v, int) for v in item)
        )
        if not ok:
            raise bad_request("each input must be a non-empty string or array of token ids", param="input")
    return items


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    model: str
    items: list[str | list[int]]
    dimensions: int
    encoding: str

    @property
    def first_text(self) -> str:
        """Where a `[sim ...]` directive is read from: the first input, if it is text."""
        first = self.items[0]
        return first if isinstance(first, str) else ""


def parse(payload: Any) -> EmbeddingsRequest:
    """A request body (raises `SimError` on a bad request)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
        raise bad_request("'model' is required", param="model")
    items = _inputs(payload.get("input"))
    dimensions = payload.get("dimensions", DEFAULT_DIM)
    if not isinstance(dimensions, int) or not 1 <= dimensions <= MAX_DIM:
        raise bad_request(f"'dimensions' must be an integer from 1 to {MAX_DIM}", param="dimensions")
    encoding = payload.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise bad_request("'encoding_format' must be 'float' or 'base64'", param="encoding_format")
    return EmbeddingsRequest(payload["model"], items, dimensions, encoding)


def answer(request: EmbeddingsRequest) -> bytes:
    """The response body."""
    data = []
    dim = request.dimensions
    for index, item in enumerate(request.items):
        values = vector(item, dim)
        embedding: Any = (
            base64.b64encode(struct.pack(f"<{dim}f", *values)).decode()
            if request.encoding == "base64"
            else values
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    used = sum(tokens(item) for item in request.items)
    body = {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": used, "total_tokens": used},
    }
    return json.dumps(body, separators=(",", ":")).encode()
