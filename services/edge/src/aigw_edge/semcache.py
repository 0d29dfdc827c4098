"""Semantic match for gateways' response caches (`ResponseCache.similarity`, `respcache.py`).

A request that misses the exact lookup, to a gateway with `similarity` set, whose conversation is
text only (no images, tool calls or tool results), is matched by meaning among the cached answers
of requests equal to it in everything else:

* its *shape* is the exact entry key's input without the messages' text: tenant, key kind, gateway
  id and version, the other request fields, and the messages' roles. Tenants never share a shape.
* its conversation ("role: text" per message) is embedded by retrieval's embedder
  (`subjects.RETRIEVAL_EMBED`, the edge setting `AIGW_CACHE_EMBED_MODEL`, the bundled MiniLM by
  default), billed to the tenant like any `POST /v1/embeddings` (`inference.embeddings.in`).
* the shape's index, one entry `sem-<shape>` of the cache bucket (so shared by every edge replica),
  holds the vectors of the latest `MAX_ROWS` answers stored for that shape, each with its exact
  entry's name and expiry; the nearest row at or above the threshold (cosine: the vectors are unit
  length) names the entry to answer from. The index is updated with compare-and-set, in the
  background, just before the answer itself is stored (so an answer that an exact lookup finds is
  findable by meaning too).

Every failure (no embedder, the bus, a conflict that keeps losing) only means no semantic hit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import operator
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from aigw_contracts import ApiKey, Gateway, subjects
from aigw_contracts.embeddings import EmbedJob, EmbedResult
from aigw_contracts.errors import GatewayError
from aigw_contracts.ids import uuid7
from aigw_runtime.bus import request as ask

from .bus import Bus

log = logging.getLogger("aigw.edge.cache")

MAX_ROWS = 64  # vectors kept per shape (the latest stored answers)
_CAS_TRIES = 3
_EMBED_WITHIN = 5.0  # seconds the embedder may take; past it, the request runs as a miss
_SWAP = sys.byteorder != "little"

Vector = array  # float32, unit length


def conversation_text(request: dict[str, Any]) -> str | None:
    """The conversation as "role: text" lines; None when any message holds more than text."""
    lines = []
    for message in request.get("messages") or ():
        if not isinstance(message, dict) or message.get("tool_calls") or message.get("role") == "tool":
            return None
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                return None
            content = "\n".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str):
            return None
        lines.append(f"{message.get('role')}: {content}")
    return "\n".join(lines) if lines else None


def shape_key(key: ApiKey, gateway: Gateway, kept: dict[str, Any]) -> str:
    """The index entry of requests equal to `kept` (the entry key's fields) but for their text."""
    messages = kept.get("messages") or []
    rest = {k: v for k, v in kept.items() if k != "messages"}
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    canonical = json.dumps(
        [key.tenant, key.kind, gateway.id, gateway.version, rest, roles],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return "sem-" + hashlib.sha256(canonical.encode()).hexdigest()


def _cosine(a: Vector, b: Vector) -> float:
    return math.fsum(map(operator.mul, a, b)) if len(a) == len(b) else -1.0


class SemanticIndex:
    def __init__(self, bus: Bus, bucket: Callable[[], Awaitable[KeyValue]], model: str) -> None:
        self.bus = bus
        self.bucket = bucket
        self.model = model

    async def embed(self, key: ApiKey, text: str) -> Vector | None:
        nc = self.bus.nc
        if nc is None:
            return None
        job = EmbedJob(
            request_id=uuid7(),
            tenant=key.tenant,
            key_id=key.id,
            model=self.model,
            texts=[text],
            metadata={"purpose": "response_cache"},
            deadline=time.time() + _EMBED_WITHIN,
        )
        try:
            reply = await ask(
                nc,
                subjects.RETRIEVAL_EMBED,
                job.model_dump_json(exclude_none=True).encode(),
                _EMBED_WITHIN,
                "retrieval service",
                "embed a request for the response cache",
            )
            head, _, raw = reply.data.partition(b"\n")
            result = EmbedResult.model_validate_json(head)
        except (GatewayError, ValueError) as err:
            log.warning("semantic cache lookup skipped: no embedding", extra={"error": repr(err)})
            return None
        vector = array("f")
        vector.frombytes(raw[: result.dim * 4])
        if _SWAP:
            vector.byteswap()
        return vector

    async def _rows(self, kv: KeyValue, shape: str) -> tuple[list[list[Any]], int | None]:
        try:
            entry = await kv.get(shape)
        except KeyNotFoundError:
            return [], None
        rows: list[list[Any]] = json.loads(entry.value or b"[]")
        return rows, entry.revision

    async def nearest(self, shape: str, vector: Vector, threshold: float) -> tuple[str, float] | None:
        """The exact entry's name of the nearest unexpired row at or above `threshold`, and its
        similarity."""
        try:
            rows, _ = await self._rows(await self.bucket(), shape)
        except Exception:
            log.warning("semantic cache index unreadable", exc_info=True)
            return None
        now = time.time()
        best: tuple[str, float] | None = None
        for name, expires, packed in rows:
            if expires <= now:
                continue
            other = array("f")
            other.frombytes(base64.b64decode(packed))
            if _SWAP:
                other.byteswap()
            score = _cosine(vector, other)
            if score >= threshold and (best is None or score > best[1]):
                best = (name, score)
        return best

    async def add(self, shape: str, name: str, vector: Vector, expires: float) -> None:
        """Index an answer just stored under `name` (compare-and-set; expired rows dropped)."""
        packed = array("f", vector)
        if _SWAP:
            packed.byteswap()
        row = [name, expires, base64.b64encode(packed.tobytes()).decode()]
        try:
            kv = await self.bucket()
            for _ in range(_CAS_TRIES):
                rows, revision = await self._rows(kv, shape)
                now = time.time()
                kept = [r for r in rows if r[1] > now and r[0] != name][-(MAX_ROWS - 1) :]
                value = json.dumps([*kept, row], separators=(",", ":")).encode()
                try:
                    if revision is None:
                        await kv.create(shape, value)
                    else:
                        await kv.update(shape, value, last=revision)
                    return
                except KeyWrongLastSequenceError:
                    continue  # another replica indexed meanwhile: read again
        except Exception:
            log.warning("could not index an answer for semantic matches", exc_info=True)
