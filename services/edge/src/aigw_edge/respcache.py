"""Gateways' response caches: an equal request gets the earlier answer again, without an upstream call.

Off unless a gateway sets `cache` (`aigw_contracts.ResponseCache`: a TTL and a price per hit). When
no gateway of any tenant has one, `ResponseCache` hands every request straight to the chat endpoint:
the hot path pays one dict check. Otherwise, for a tenant that has one:

* the request's key is checked from its headers (a bad key goes on to the chat endpoint, which
  refuses it as usual), the body read, and `model` matched to a cache-enabled gateway (id, slug or
  name; public keys by id only, as the router does). Anything else goes on unchanged.
* The entry key is a SHA-256 of tenant, key kind (public keys' parameters are filtered), gateway id
  and version (an edited gateway starts afresh), and the request body as canonical JSON without the
  fields that do not change the answer (`metadata`, `user`, `idempotency_key`, `store`,
  `safety_identifier`, `prompt_cache_key`). `stream` is part of it, so a stream is replayed as the
  same stream of chunks and a JSON answer as JSON. Tenants never share an entry.
* `Cache-Control: no-cache` skips the lookup (the fresh answer is stored); `no-store` skips both.
* A hit is billed `inference.cache.hit` at the gateway's price (retrieval publishes the line:
  `aigw_retrieval.cachehits`, so the edge never writes usage), gets a new request id, `x-aigw-cache:
  hit`, and `generation_context` with the hit's line and `cache: {"hit": true, "request_id": <the
  request whose answer it is>}`. If it cannot be billed, the request runs as a miss.
* A miss runs the chat endpoint, with `x-aigw-cache: miss`; a completed answer (200, and for a
  stream, one that ended with its final chunk, not an error) is stored in a JetStream key-value
  bucket shared by every edge replica, with its own expiry.

The request counts against the key's rate limits whether it hits or not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from decimal import Decimal
from typing import Any

from nats.js.errors import KeyNotFoundError
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw_contracts import ApiKey, ChatCompletionRequest, Gateway, headers, subjects
from aigw_contracts.cache import CacheHit, CacheHitBilled
from aigw_contracts.errors import GatewayError
from aigw_contracts.ids import uuid7
from aigw_contracts.streams import CACHE_BUCKET, CACHE_MAX_TTL_S, CACHE_STORAGE
from aigw_runtime.bus import request as ask
from aigw_runtime.configstore import ConfigView

from . import observe, sse
from .auth import KeyStore, authorization
from .bus import Bus
from .errors import JSON_TYPE, send_body, send_error
from .idempotency import LazyBucket, decode, encode
from .logs import SCOPE_KEY
from .routes.chat import _ClientGone, _read_body
from .semcache import SemanticIndex, Vector, conversation_text, shape_key

log = logging.getLogger("aigw.edge.cache")

# Request fields that do not change the answer.
_IGNORED = frozenset(
    {"metadata", "user", "idempotency_key", "store", "safety_identifier", "prompt_cache_key"}
)
_CACHE = headers.HTTP_CACHE.encode()
_HIT, _MISS = (_CACHE, b"hit"), (_CACHE, b"miss")
_BYPASS = "bypass"  # metrics: the client's Cache-Control skipped the lookup
_REQUEST_ID = headers.HTTP_REQUEST_ID.encode()
_BILL_WITHIN = 5.0  # seconds retrieval may take to bill a hit


def entry_key(key: ApiKey, gateway: Gateway, request: dict[str, Any]) -> str:
    kept = {k: v for k, v in request.items() if k not in _IGNORED}
    canonical = json.dumps(
        [key.tenant, key.kind, gateway.id, gateway.version, kept],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


# What the gateway did for the answer (gateway, parameters, fallback, routing), replayed with it.
_KEPT = frozenset(
    h.encode()
    for h in (
        headers.HTTP_GATEWAY,
        headers.HTTP_PARAMS_USED,
        headers.HTTP_FALLBACK,
        headers.HTTP_ROUTED_COMPLEXITY,
    )
)


def completed_stream(answer: bytes) -> bool:
    """A stream that ended with its final chunk (usage, finish reason), not with an error."""
    frames = [f for f in answer.split(b"\n\n") if f.startswith(b"data: ")]
    if len(frames) < 2 or frames[-1] != b"data: [DONE]":
        return False
    try:
        last = json.loads(frames[-2][6:])
    except ValueError:
        return False
    return isinstance(last, dict) and "error" not in last


class ResponseCache:
    """The chat endpoint with gateways' response caches in front (see the module doc)."""

    def __init__(
        self, chat: Any, keys: KeyStore, view: ConfigView, bus: Bus, embed_model: str = "all-MiniLM-L6-v2"
    ) -> None:
        self.chat: ASGIApp = chat
        # What the chat endpoint counts a request against (a hit never reaches it).
        self.limiter, self.admission = chat.limiter, chat.admission
        self.keys = keys
        self.view = view
        self.bus = bus
        self.by_tenant: dict[str, list[Gateway]] = {}
        self._bucket = LazyBucket(bus, CACHE_MAX_TTL_S, CACHE_BUCKET, CACHE_STORAGE).get
        self.semantic = SemanticIndex(bus, self._bucket, embed_model)
        self._storing: set[asyncio.Task[None]] = set()
        # Requests to cache-enabled gateways, as counters for metrics: served from the cache, or not.
        self.hits = self.misses = 0

    def refresh(self, kind: str, *_: object) -> None:
        """A config listener: which tenants have gateways with a cache."""
        if kind != "gateway":
            return
        by_tenant: dict[str, list[Gateway]] = {}
        for gateway in self.view.gateways.values():
            if gateway.cache is not None:
                by_tenant.setdefault(gateway.tenant, []).append(gateway)
        self.by_tenant = by_tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.by_tenant or scope["type"] != "http":
            await self.chat(scope, receive, send)
            return
        try:
            key = self.keys.authenticate(authorization(scope))
        except GatewayError:
            await self.chat(scope, receive, send)  # it refuses the key the same way
            return
        gateways = self.by_tenant.get(key.tenant)
        if not gateways:
            await self.chat(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except _ClientGone:
            return
        given = False

        async def replay() -> Message:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        try:
            request = json.loads(body)
        except ValueError:
            request = None
        model = request.get("model") if isinstance(request, dict) else None
        gateway = self._gateway(model, gateways, key) if isinstance(model, str) else None
        if gateway is None or request is None:
            await self.chat(scope, replay, send)
            return
        control = b""
        for name, value in scope["headers"]:
            if name == b"cache-control":
                control += value.lower()
        if b"no-store" in control:
            self.misses += 1
            observe.CACHE_REQUESTS(gateway.slug, _BYPASS).inc()
            await self.chat(scope, replay, _marked(send, _MISS))
            return
        name = entry_key(key, gateway, request)
        result = _BYPASS
        semantic: tuple[str, Vector] | None = None  # the request's shape and embedding, once made
        if b"no-cache" not in control:
            result = "miss"
            found = await self._lookup(name)
            similarity = None
            if found is None and gateway.cache is not None and gateway.cache.similarity is not None:
                semantic = await self._embedded(key, gateway, request)
                if semantic is not None:
                    near = await self.semantic.nearest(*semantic, gateway.cache.similarity)
                    if near is not None:
                        found, similarity = await self._lookup(near[0]), near[1]
            if (
                found is not None
                and _valid(body)  # what the fields left out of the entry key hold, checked as on a miss
                and await self._serve(found, key, gateway, request, scope, send, similarity)
            ):
                self.hits += 1
                observe.CACHE_REQUESTS(gateway.slug, "hit").inc()
                return
        self.misses += 1
        observe.CACHE_REQUESTS(gateway.slug, result).inc()
        recorder = self._recorder(send, name, gateway, bool(request.get("stream")), semantic)
        await self.chat(scope, replay, recorder)

    async def _embedded(
        self, key: ApiKey, gateway: Gateway, request: dict[str, Any]
    ) -> tuple[str, Vector] | None:
        """The request's semantic shape and embedding (`semcache.py`); None: not eligible, or the
        embedder failed (the request then runs as an exact-match miss)."""
        text = conversation_text(request)
        if text is None:
            return None
        vector = await self.semantic.embed(key, text)
        if vector is None:
            return None
        kept = {k: v for k, v in request.items() if k not in _IGNORED}
        return shape_key(key, gateway, kept), vector

    @staticmethod
    def _gateway(model: str, gateways: list[Gateway], key: ApiKey) -> Gateway | None:
        for gateway in gateways:
            if model == gateway.id or (key.kind != "public" and model in (gateway.slug, gateway.name)):
                return gateway
        return None

    # ------------------------------------------------------------------ storage
    async def _lookup(self, name: str) -> tuple[dict[str, Any], bytes] | None:
        try:
            entry = await (await self._bucket()).get(name)
        except KeyNotFoundError:
            return None
        except Exception:  # the cache is an optimization: without it, the request runs
            log.warning("response cache lookup failed", exc_info=True)
            return None
        meta, answer = decode(entry.value or b"")
        if float(meta.get("expires", 0)) <= time.time():
            return None
        return meta, answer

    def _recorder(
        self, send: Send, name: str, gateway: Gateway, stream: bool, semantic: tuple[str, Vector] | None
    ) -> Send:
        status = 0
        kept: list[list[str]] = []
        request_id = ""
        parts: list[bytes] = []

        async def record(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for k, v in message.get("headers", ()):
                    if k in _KEPT:
                        kept.append([k.decode("latin-1"), v.decode("latin-1")])
                    elif k == _REQUEST_ID:
                        request_id = v.decode()
                message = {**message, "headers": [*message.get("headers", ()), _MISS]}
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if not message.get("more_body", False) and status == 200:
                    await send(message)
                    answer = b"".join(parts)
                    if not stream or completed_stream(answer):
                        meta = {
                            "expires": time.time() + gateway.cache.ttl if gateway.cache else 0,
                            "request_id": request_id,
                            "headers": kept,
                        }
                        # In the background: the client's next request on this connection need not wait.
                        task = asyncio.get_running_loop().create_task(
                            self._store(name, meta, answer, stream, semantic)
                        )
                        self._storing.add(task)
                        task.add_done_callback(self._storing.discard)
                    return
            await send(message)

        return record

    async def _store(
        self,
        name: str,
        meta: dict[str, Any],
        answer: bytes,
        stream: bool,
        semantic: tuple[str, Vector] | None = None,
    ) -> None:
        meta["cost"] = str(answer_cost(answer, stream))  # what a hit on it saves (`_serve`)
        if semantic is not None:
            # Indexed first: once the exact entry is there, it is findable by meaning too (a row
            # whose entry is not stored yet, or never is, only misses).
            await self.semantic.add(semantic[0], name, semantic[1], float(meta["expires"]))
        try:
            await (await self._bucket()).put(name, encode(meta, answer))
        except Exception:
            log.warning("could not store an answer in the response cache", exc_info=True)

    # ------------------------------------------------------------------ hits
    async def _bill(
        self, key: ApiKey, gateway: Gateway, request_id: str, cached: str, request: dict[str, Any]
    ) -> Any:
        """The hit's priced lines (as JSON values), or None when it could not be billed."""
        metadata = request.get("metadata")
        hit = CacheHit(
            request_id=request_id,
            tenant=key.tenant,
            key_id=key.id,
            gateway_id=gateway.id,
            cached_request_id=cached,
            metadata=metadata if isinstance(metadata, dict) else {},
        )
        nc = self.bus.nc
        if nc is None:
            return None
        try:
            reply = await ask(
                nc,
                subjects.RETRIEVAL_CACHE_HIT,
                hit.model_dump_json().encode(),
                _BILL_WITHIN,
                "retrieval service",
                "bill a cache hit",
            )
        except GatewayError as err:
            log.warning("a cache hit could not be billed: served as a miss", extra={"error": err.message})
            return None
        billed = CacheHitBilled.model_validate_json(reply.data)
        return [json.loads(line.model_dump_json()) for line in billed.lines]

    async def _serve(
        self,
        found: tuple[dict[str, Any], bytes],
        key: ApiKey,
        gateway: Gateway,
        request: dict[str, Any],
        scope: Scope,
        send: Send,
        similarity: float | None = None,
    ) -> bool:
        """Answer from the cache; False (nothing sent) when the request must run after all.
        `similarity`: a semantic match's, said in `generation_context.cache`."""
        meta, answer = found
        request_id = uuid7()
        own = [(_REQUEST_ID, request_id.encode())]
        try:
            if key.limits.requests_per_minute or key.limits.requests_per_minute_per_ip:
                self.limiter.admit(key, scope.get("client"))
            with self.admission.admit():
                lines = await self._bill(key, gateway, request_id, str(meta.get("request_id", "")), request)
        except GatewayError as err:
            await send_error(send, err, own)
            self._log(scope, key, request, err.status, request_id, err.code or "error")
            return True
        if lines is None:
            return False
        billed = sum((Decimal(str(line.get("amount", 0))) for line in lines), Decimal(0))
        saved = Decimal(str(meta.get("cost", 0))) - billed
        if saved > 0:
            observe.CACHE_SAVED(gateway.slug).inc(float(saved))
        context = {
            "generated_usage": lines,
            "runned_functions": [],
            "cache": {"hit": True, "request_id": meta.get("request_id")}
            | ({} if similarity is None else {"similarity": round(similarity, 4)}),
        }
        hdrs = [*own, _HIT, *((k.encode("latin-1"), v.encode("latin-1")) for k, v in meta.get("headers", ()))]
        chat_id = f"chatcmpl-{request_id}"
        if request.get("stream"):
            out = []
            for frame in answer.split(b"\n\n"):
                if not frame.startswith(b"data: {"):
                    continue
                chunk = json.loads(frame[6:])
                chunk["id"] = chat_id
                if "generation_context" in chunk:
                    chunk["generation_context"] = context
                out.append(sse.frame(json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode()))
            out.append(sse.DONE)
            await send({"type": "http.response.start", "status": 200, "headers": sse.HEADERS + hdrs})
            await send({"type": "http.response.body", "body": b"".join(out)})
        else:
            doc = json.loads(answer)
            doc["id"] = chat_id
            doc["generation_context"] = context
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            await send_body(send, 200, body, hdrs, JSON_TYPE)
        self._log(scope, key, request, 200, request_id, "cache_hit")
        return True

    @staticmethod
    def _log(
        scope: Scope, key: ApiKey, request: dict[str, Any], status: int, request_id: str, outcome: str
    ) -> None:
        fields = scope.get(SCOPE_KEY)
        if fields is not None:
            fields.update(
                status=status,
                request_id=request_id,
                tenant=key.tenant,
                key_id=key.id,
                model=request.get("model"),
                stream=bool(request.get("stream")),
                outcome=outcome,
            )


def answer_cost(answer: bytes, stream: bool) -> Decimal:
    """What an answer was billed: the amounts of its `generation_context.generated_usage` (a
    stream's is on its last chunk that has one); 0 when it says none."""
    context: Any = None
    try:
        if stream:
            for frame in reversed(answer.split(b"\n\n")):
                if frame.startswith(b"data: {") and b'"generation_context"' in frame:
                    context = json.loads(frame[6:]).get("generation_context")
                    break
        else:
            context = json.loads(answer).get("generation_context")
        lines = context.get("generated_usage") if isinstance(context, dict) else None
        return sum((Decimal(str(line["amount"])) for line in lines or ()), Decimal(0))
    except (ValueError, KeyError, TypeError, ArithmeticError, AttributeError):
        return Decimal(0)


def _valid(body: bytes) -> bool:
    try:
        ChatCompletionRequest.model_validate_json(body)
    except ValidationError:
        return False
    return True


def _marked(send: Send, header: tuple[bytes, bytes]) -> Send:
    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return marked
