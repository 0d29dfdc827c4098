"""Rate limits: plan rates shared by every edge replica, and per-client-IP rates in this edge's memory.

* **Shared** (`SharedLimits`): requests and tokens per minute, per API key (`KeyLimits`) and per
  tenant (`TenantLimits`), kept in the KV bucket `aigw_rate` (GCRA, `aigw_contracts.ratelimits`) and
  changed by compare-and-set, so N replicas together admit what one would. Costs one KV round trip
  for a request whose key or tenant has such a limit (pending ones of a replica share one write),
  nothing otherwise. Tokens are counted as OpenAI counts them, before the answer: the request's
  size (about four bytes a token) plus the output it asks for (`max_tokens` or
  `max_completion_tokens`, times `n`).
* **Per IP** (`RateLimiter`): requests per minute of one key from one client address (public keys
  embedded in pages): a guard against one visitor, cheap, counted by each replica alone.

Either one's refusal is OpenAI's 429 `rate_limit_exceeded` with `Retry-After`, `retry-after-ms` and
OpenAI's `x-ratelimit-*` headers (also sent on answers). A request that does not end in an answer
(a refusal of any kind, 402 and 403 included, or a failure) gives back what it took.

The client IP is the ASGI scope's: behind a reverse proxy, uvicorn's proxy-header handling
(`AIGW_FORWARDED_ALLOW_IPS`) must name the proxy, or every client counts as the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from aigw_contracts import ApiKey
from aigw_contracts.config import TenantLimits
from aigw_contracts.errors import Forbidden, RateLimited, Unavailable
from aigw_contracts.ratelimits import (
    QUOTA_BUCKET,
    QUOTA_HISTORY,
    RATE_BUCKET,
    RATE_HISTORY,
    RATE_TTL_S,
    WINDOW,
    CountCapped,
    OverLimit,
    Quotas,
    RateState,
    Standing,
    Take,
    go_duration,
    utc_day,
)
from aigw_contracts.spend import spend_key
from aigw_runtime.kvdocs import KvDocs, open_kv

Headers = list[tuple[bytes, bytes]]
BYTES_PER_TOKEN = 4


class RateLimiter:
    """Per-client-IP request rates, GCRA in this process's memory. Buckets whose arrival time has
    passed hold nothing worth keeping: they are dropped whenever the table reaches `max_buckets`."""

    def __init__(self, max_buckets: int = 100_000) -> None:
        self.max_buckets = max_buckets
        self._tat: dict[tuple[str, str], float] = {}

    def admit(self, key: ApiKey, client: Any, now: float | None = None) -> tuple[str, str] | None:
        """Count one request of `key` from `client` (the ASGI scope's `client`); `RateLimited` with
        the seconds to wait when the limit is used up (then nothing is counted). Returns the bucket
        counted (for `give_back`), None when the key has no per-IP limit."""
        per_minute = key.limits.requests_per_minute_per_ip
        if not per_minute:
            return None
        now = time.monotonic() if now is None else now
        bucket = (key.id, client[0] if client else "unknown")
        interval = WINDOW / per_minute
        tat = max(self._tat.get(bucket, now), now)
        wait = tat + interval - WINDOW - now
        if wait > 0:
            raise RateLimited(
                f"Rate limit reached for this API key from your address: {per_minute} requests per "
                f"minute. Retry in {wait:.1f} s.",
                retry_after=wait,
            )
        if len(self._tat) >= self.max_buckets:
            self._tat = {b: t for b, t in self._tat.items() if t > now}
        self._tat[bucket] = tat + interval
        return bucket

    def give_back(self, key: ApiKey, bucket: tuple[str, str]) -> None:
        per_minute = key.limits.requests_per_minute_per_ip
        if per_minute and bucket in self._tat:
            self._tat[bucket] -= WINDOW / per_minute


async def open_rate_bucket(js: JetStreamContext) -> Any:
    config = KeyValueConfig(
        bucket=RATE_BUCKET, history=RATE_HISTORY, ttl=RATE_TTL_S, storage=StorageType.MEMORY
    )
    return await open_kv(js, config)


async def open_quota_bucket(js: JetStreamContext) -> Any:
    return await open_kv(
        js, KeyValueConfig(bucket=QUOTA_BUCKET, history=QUOTA_HISTORY, storage=StorageType.FILE)
    )


def requested_tokens(body: bytes, request: Any) -> int:
    """What a request counts against a tokens-per-minute limit before it runs (see module doc)."""
    asked = request.max_completion_tokens or request.max_tokens or 0
    choices = request.n or 1
    return -(-len(body) // BYTES_PER_TOKEN) + asked * choices


class PlanRateLimited(RateLimited):
    """A plan limit's 429, carrying OpenAI's `x-ratelimit-*` headers. A request larger than the
    limit allows in a whole minute can never pass: told so, with `x-should-retry: false`."""

    def __init__(self, over: OverLimit, whose: str, headers: Headers) -> None:
        self.never = over.never
        self.headers = headers
        if over.never:
            super().__init__(
                f"Request too large for this {whose}'s limit of {over.limit} {over.unit} per {over.per}: "
                f"it counts {over.cost}. Ask for fewer tokens (max_tokens) or send less."
            )
        else:
            super().__init__(
                f"Rate limit reached for this {whose}: {over.limit} {over.unit} per {over.per}. "
                f"Retry in {over.wait:.1f} s.",
                retry_after=over.wait,
            )

    @property
    def should_retry(self) -> bool | None:
        return False if self.never else None


@dataclass(slots=True)
class Taken:
    """What one request drew from the shared limits, to give back if it ends unanswered."""

    draws: list[tuple[str, list[Take]]] = field(default_factory=list)  # (document key, takes)
    headers: Headers = field(default_factory=list)
    documents: tuple[str, str, int] | None = None  # insertions counted: (document key, UTC day, count)


def _takes(requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int) -> list[Take]:
    takes = []
    if requests_per_minute:
        takes.append(Take("requests", requests_per_minute, 1))
    if tokens_per_minute:
        takes.append(Take("tokens", tokens_per_minute, tokens))
    return takes


def ratelimit_headers(standing: list[Standing]) -> Headers:
    """OpenAI's `x-ratelimit-*` headers, each unit from its tightest limit."""
    tightest: dict[str, Standing] = {}
    for s in standing:
        known = tightest.get(s.unit)
        if known is None or s.remaining < known.remaining:
            tightest[s.unit] = s
    out: Headers = []
    for unit, s in sorted(tightest.items()):
        out += [
            (f"x-ratelimit-limit-{unit}".encode(), str(s.limit).encode()),
            (f"x-ratelimit-remaining-{unit}".encode(), str(s.remaining).encode()),
            (f"x-ratelimit-reset-{unit}".encode(), go_duration(s.reset).encode()),
        ]
    return out


class SharedLimits:
    """Requests, tokens and searches per minute per key and per tenant, across every edge replica;
    and a tenant's document insertions per UTC day and collections (`Quotas`)."""

    def __init__(self, docs: KvDocs[RateState], quotas: KvDocs[Quotas] | None = None) -> None:
        self.docs = docs
        self.quotas = quotas
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, js: JetStreamContext) -> SharedLimits:
        return cls(KvDocs(await open_rate_bucket(js), RateState), KvDocs(await open_quota_bucket(js), Quotas))

    # ------------------------------------------------------------------ knowledge
    async def admit_search(self, tenant_id: str, tenant: TenantLimits | None) -> Taken:
        """Draw one search from the tenant's searches per minute, or raise the 429."""
        if tenant is None or not tenant.searches_per_minute:
            return Taken()
        doc, takes = spend_key("tenant", tenant_id), [Take("searches", tenant.searches_per_minute, 1)]
        try:
            standing = await self.docs.change_key(doc, lambda state, now: state.take(takes, now))
        except OverLimit as over:
            raise PlanRateLimited(over, "tenant", ratelimit_headers([over.standing])) from None
        except Exception as err:
            raise Unavailable("Rate limits are unavailable; retry the request", retry_after=1) from err
        return Taken([(doc, takes)], ratelimit_headers(standing))

    async def admit_documents(self, tenant_id: str, tenant: TenantLimits | None, count: int) -> Taken:
        """Count `count` document insertions today against the tenant's documents per day, or raise
        the 429 (`x-should-retry: false` when the batch alone is more than a day allows)."""
        if tenant is None or not tenant.documents_per_day or self.quotas is None:
            return Taken()
        per_day, doc = tenant.documents_per_day, spend_key("tenant", tenant_id)
        day = utc_day(time.time())[0]
        try:
            standing = await self.quotas.change_key(doc, lambda q, now: q.take_documents(count, per_day, now))
        except OverLimit as over:
            raise PlanRateLimited(over, "tenant", ratelimit_headers([over.standing])) from None
        except Exception as err:
            raise Unavailable("Quotas are unavailable; retry the request", retry_after=1) from err
        return Taken(headers=ratelimit_headers([standing]), documents=(doc, day, count))

    async def claim_collection(
        self, tenant_id: str, tenant: TenantLimits | None, collection_id: str, existing: set[str]
    ) -> None:
        """Count a new collection against the tenant's cap (every replica's creations included), or
        raise 403 `collection_limit_reached`."""
        if tenant is None or tenant.collections is None or self.quotas is None:
            return
        cap = tenant.collections
        try:
            await self.quotas.change_key(
                spend_key("tenant", tenant_id),
                lambda q, now: q.claim_collection(collection_id, existing, cap, now),
            )
        except CountCapped:
            raise Forbidden(
                f"This tenant may have at most {cap} collections: delete one, or ask for a larger plan.",
                code="collection_limit_reached",
            ) from None
        except Exception as err:
            raise Unavailable("Quotas are unavailable; retry the request", retry_after=1) from err

    @staticmethod
    def applies(key: ApiKey, tenant: TenantLimits | None) -> bool:
        return bool(
            key.limits.requests_per_minute
            or key.limits.tokens_per_minute
            or (tenant is not None and (tenant.requests_per_minute or tenant.tokens_per_minute))
        )

    async def admit(self, key: ApiKey, tenant: TenantLimits | None, tokens: int) -> Taken:
        """Draw one request and `tokens` from the key's and the tenant's limits, or raise the 429
        (nothing drawn). The answer's `x-ratelimit-*` headers are in the result."""
        plan = [
            (
                spend_key("key", key.id),
                _takes(key.limits.requests_per_minute, key.limits.tokens_per_minute, tokens),
            )
        ]
        if tenant is not None:
            plan.append(
                (
                    spend_key("tenant", key.tenant),
                    _takes(tenant.requests_per_minute, tenant.tokens_per_minute, tokens),
                )
            )
        plan = [(doc, takes) for doc, takes in plan if takes]

        def drawer(takes: list[Take]) -> Any:
            return lambda state, now: state.take(takes, now)

        results = await asyncio.gather(
            *(self.docs.change_key(doc, drawer(takes)) for doc, takes in plan), return_exceptions=True
        )
        taken = Taken()
        standing: list[Standing] = []
        refused: tuple[str, OverLimit] | None = None
        for (doc, takes), result in zip(plan, results, strict=True):
            if isinstance(result, OverLimit):
                refused = refused or (doc, result)
                standing.append(result.standing)
            elif isinstance(result, BaseException):
                self.give_back(taken)
                raise Unavailable("Rate limits are unavailable; retry the request", retry_after=1) from result
            else:
                taken.draws.append((doc, takes))
                standing.extend(result)
        taken.headers = ratelimit_headers(standing)
        if refused is None:
            return taken
        self.give_back(taken)
        doc, over = refused
        raise PlanRateLimited(over, "tenant" if doc.startswith("tenant.") else "API key", taken.headers)

    def give_back(self, taken: Taken) -> None:
        """Return what a request drew (in the background: the client has its answer already)."""
        if taken.documents is not None and self.quotas is not None:
            doc, day, count = taken.documents

            def unlog(q: Quotas, now: float) -> None:
                q.give_back_documents(count, day)

            self._background(self.quotas.change_key(doc, unlog))
            taken.documents = None
        for doc, takes in taken.draws:

            def back(state: RateState, now: float, takes: list[Take] = takes) -> None:
                state.give_back(takes, now)

            self._background(self.docs.change_key(doc, back))
        taken.draws = []

    def _background(self, write: Any) -> None:
        task = asyncio.create_task(self._quietly(write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(write: Any) -> None:
        with contextlib.suppress(Exception):  # a lost give-back only makes the limit stricter
            await write
