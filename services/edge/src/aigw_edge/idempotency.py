"""Repeated calls with one `idempotency_key`: one answer, one upstream call, one bill.

Why the edge: it is where the client's bytes are, so it can keep and replay exactly what the client
got (the JSON body, or every SSE byte of a stream) without routers or workers knowing about it;
a replay reaches nothing behind the edge, so nothing is billed twice.

Why a JetStream key-value bucket (`aigw_contracts.streams.IDEMPOTENCY_BUCKET`): every edge replica
must see the same keys, NATS is already there, `create` is an atomic "insert if absent" (two
replicas racing on one key: one wins, the other sees its entry), and the bucket's TTL is the window.

An entry, keyed by a hash of tenant + API key id + idempotency key (so no key sees another's), is
one JSON line of metadata, then (once done) the answer's bytes, zlib-compressed: SSE frames repeat
their prefix, so a long stream shrinks well below the bus's payload limit.

* `pending`: a request owns the key. Its answer is written over it (`done`) before the answer's
  last bytes reach the client, so a client that repeats the call right after sees the replay, not
  a conflict. An error answer, or a stream cut short, deletes the entry: a retry runs again.
* A pending entry whose owner's deadline passed (its edge died holding it) is taken over, with
  the revision it was read at, so two takers cannot both win.
* A request body that differs (compared as canonical JSON, so whitespace and key order do not
  matter) is refused: the key was already used for something else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from starlette.types import Message, Send

from aigw_contracts import ApiKey, headers
from aigw_contracts.errors import IdempotencyConflict, IdempotencyKeyReused, Unavailable
from aigw_contracts.streams import IDEMPOTENCY_BUCKET, IDEMPOTENCY_STORAGE

from .bus import Bus
from .settings import EdgeSettings

log = logging.getLogger("aigw.edge.idempotency")

PENDING, DONE = "pending", "done"
# A pending entry outlives its owner's deadline by this much before another request may take it
# over (the owner may still be writing its answer).
TAKEOVER_GRACE_S = 5.0
_ATTEMPTS = 3  # races with another replica (entry deleted or replaced between two reads)
_REPLAY = (headers.HTTP_IDEMPOTENT_REPLAY.encode(), b"true")
_REQUEST_ID = headers.HTTP_REQUEST_ID.encode()


def entry_key(tenant: str, key_id: str, idempotency_key: str) -> str:
    """The bucket key: a hash, since idempotency keys may hold characters KV keys may not."""
    return hashlib.sha256(f"{tenant}\0{key_id}\0{idempotency_key}".encode()).hexdigest()


def fingerprint(body: bytes) -> str:
    """The request body's identity: its canonical JSON, so formatting differences do not count."""
    canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def encode(meta: dict[str, Any], answer: bytes = b"") -> bytes:
    return (
        json.dumps(meta, separators=(",", ":")).encode() + b"\n" + (zlib.compress(answer) if answer else b"")
    )


def decode(value: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, rest = value.partition(b"\n")
    meta: dict[str, Any] = json.loads(head)
    return meta, zlib.decompress(rest) if rest else b""


class Replay:
    """A completed answer to send again, exactly as it was first sent."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, response_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = response_headers
        self.body = body

    async def send(self, send: Send, own_headers: list[tuple[bytes, bytes]]) -> None:
        """The kept answer, with this request's own id and the replay header."""
        hdrs = [*self.headers, *own_headers, _REPLAY]
        await send({"type": "http.response.start", "status": self.status, "headers": hdrs})
        await send({"type": "http.response.body", "body": self.body})


class Claim:
    """A request owns its key: it keeps its answer (`recorder`) or lets the key go (`release`)."""

    __slots__ = ("_kv", "_parts", "_status", "fingerprint", "headers", "key", "revision", "stored")

    def __init__(self, kv: KeyValue, key: str, revision: int, body_fingerprint: str) -> None:
        self._kv = kv
        self.key = key
        self.revision = revision
        self.fingerprint = body_fingerprint
        self.stored = False
        self._status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []

    def recorder(self, send: Send, completed: Callable[[], bool]) -> Send:
        """`send`, keeping what goes through it; once the last body part of a completed answer
        (`completed()` says so) is about to go out, the whole answer is stored first."""

        async def record(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                self._status = int(message["status"])
                self.headers = [(k, v) for k, v in message.get("headers", ()) if k != _REQUEST_ID]
            elif kind == "http.response.body":
                part = message.get("body", b"")
                if part:
                    self._parts.append(part)
                if not message.get("more_body", False) and self._status == 200 and completed():
                    await self.store(b"".join(self._parts))
            await send(message)

        return record

    async def store(self, answer: bytes) -> None:
        """Replace the pending entry with the answer. A failure only costs the replay: the client
        still gets its answer, and the key is let go so a retry can run."""
        meta = {
            "state": DONE,
            "body": self.fingerprint,
            "status": self._status,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers],
        }
        try:
            self.revision = await self._kv.update(self.key, encode(meta, answer), last=self.revision)
            self.stored = True
        except KeyWrongLastSequenceError:
            log.warning("an idempotency entry was taken over before its answer was kept")
            self.stored = True  # not ours any more: nothing to release
        except Exception:
            log.warning("could not keep an answer for its idempotency key", exc_info=True)

    async def release(self) -> None:
        """Let the key go (no completed answer): a retry with it runs again."""
        if self.stored:
            return
        self.stored = True
        try:
            await self._kv.delete(self.key, last=self.revision)
        except Exception:  # it expires at its deadline anyway, then can be taken over
            log.warning("could not release an idempotency key", exc_info=True)


class Idempotency:
    """The edge's idempotency keys: claim one per request that carries it, or replay its answer."""

    def __init__(self, bus: Bus, settings: EdgeSettings) -> None:
        self.bus = bus
        self.window = settings.idempotency_window
        self.hold = settings.request_timeout + TAKEOVER_GRACE_S
        self._bucket = LazyBucket(bus, self.window).get

    async def begin(self, key: ApiKey, idempotency_key: str, body: bytes) -> Claim | Replay:
        """Claim the key for this request, or the answer to replay; raises when neither may be."""
        try:
            return await self._begin(key, idempotency_key, body)
        except (IdempotencyConflict, IdempotencyKeyReused, Unavailable):
            raise
        except (NatsError, TimeoutError) as err:
            raise Unavailable(
                "The gateway could not check the request's idempotency_key; try again shortly", retry_after=1
            ) from err

    async def _begin(self, key: ApiKey, idempotency_key: str, body: bytes) -> Claim | Replay:
        kv = await self._bucket()
        name = entry_key(key.tenant, key.id, idempotency_key)
        mine = fingerprint(body)
        pending = encode({"state": PENDING, "body": mine, "until": time.time() + self.hold})
        for _ in range(_ATTEMPTS):
            try:
                return Claim(kv, name, await kv.create(name, pending), mine)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(name)
            except KeyNotFoundError:
                continue  # released or expired since: try to claim it again
            meta, answer = decode(entry.value or b"")
            if meta.get("body") != mine:
                raise IdempotencyKeyReused(
                    "This idempotency_key was already used with a different request body; use a new key "
                    "for a different request.",
                    param="idempotency_key",
                )
            if meta.get("state") == DONE:
                response_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in meta["headers"]]
                return Replay(int(meta["status"]), response_headers, answer)
            if float(meta.get("until", 0)) > time.time():
                raise IdempotencyConflict(
                    "A request with this idempotency_key is still in progress; retry once it has completed.",
                    param="idempotency_key",
                )
            try:  # its owner's deadline passed: the owner is gone, take the key over
                assert entry.revision is not None
                return Claim(kv, name, await kv.update(name, pending, last=entry.revision), mine)
            except KeyWrongLastSequenceError:
                continue
        raise IdempotencyConflict(
            "Requests with this idempotency_key are racing; retry shortly.", param="idempotency_key"
        )


class LazyBucket:
    """A key-value bucket of the edge's, opened (created, its TTL brought to `window`) on first use,
    once, however many requests ask at the same moment."""

    def __init__(
        self, bus: Bus, window: float, bucket: str = IDEMPOTENCY_BUCKET, storage: str = IDEMPOTENCY_STORAGE
    ) -> None:
        self.bus = bus
        self.window, self.bucket, self.storage = window, bucket, storage
        self._kv: KeyValue | None = None
        self._opening = asyncio.Lock()

    async def get(self) -> KeyValue:
        if self._kv is not None:
            return self._kv
        async with self._opening:
            if self._kv is None:
                nc = self.bus.nc
                if nc is None or not nc.is_connected:
                    raise Unavailable("The gateway is not connected to its message bus; try again shortly")
                self._kv = await open_bucket(nc.jetstream(), self.window, self.bucket, self.storage)
            return self._kv


async def open_bucket(
    js: Any, window: float, bucket: str = IDEMPOTENCY_BUCKET, storage: str = IDEMPOTENCY_STORAGE
) -> KeyValue:
    """A bucket of kept answers (by default the idempotency one), its TTL set to `window` (an edge
    started with a new window updates it)."""
    try:
        kv: KeyValue = await js.key_value(bucket)
    except BucketNotFoundError:
        config = KeyValueConfig(bucket=bucket, history=1, ttl=window, storage=StorageType(storage))
        try:
            kv = await js.create_key_value(config)
        except Exception:  # another edge created it at the same moment
            kv = await js.key_value(bucket)
    status = await kv.status()
    if status.ttl is None or abs(status.ttl - window) > 1e-3:
        stream = status.stream_info.config
        stream.max_age = window
        await js.update_stream(stream)
        log.info("bucket retention set", extra={"bucket": bucket, "seconds": window})
    return kv
