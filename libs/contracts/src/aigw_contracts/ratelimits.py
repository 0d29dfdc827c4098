"""Plan rate limits shared by every edge replica: requests and tokens per minute, per API key and
per tenant (`KeyLimits`, `TenantLimits` in `config`).

GCRA (the generic cell rate algorithm): one "theoretical arrival time" per limit, in a document per
key or tenant in the KV bucket `RATE_BUCKET`, changed by compare-and-set (`aigw_runtime.kvdocs`),
so N edge replicas together admit what one would. A limit of N per minute admits a burst of up to N,
then refills continuously; a refused request changes nothing. A request that ends in any refusal
(a 4xx or 5xx of the gateway, 402 included) gives its units back, so only answered requests use
the plan. Times are the replicas' wall clocks (keep them synchronised, as NTP does).

No I/O here: the arithmetic on one document.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

RATE_BUCKET: Final = "aigw_rate"
RATE_HISTORY: Final = 1
RATE_TTL_S: Final = 3600.0  # a document untouched for an hour is dropped (its limits have refilled)
WINDOW: Final = 60.0  # seconds: limits are per minute

Unit = Literal["requests", "tokens", "searches", "documents"]


@dataclass(frozen=True, slots=True)
class Take:
    """One limit a request draws on: `cost` units of `per_minute`."""

    unit: Unit
    per_minute: int
    cost: int


@dataclass(frozen=True, slots=True)
class Standing:
    """What a limit has left after a request (for OpenAI's `x-ratelimit-*` headers)."""

    unit: Unit
    limit: int
    remaining: int
    reset: float  # seconds until it is whole again


class OverLimit(Exception):
    def __init__(
        self, unit: Unit, limit: int, cost: int, wait: float, standing: Standing, per: str = "minute"
    ) -> None:
        super().__init__(unit)
        self.unit, self.limit, self.cost, self.wait, self.standing = unit, limit, cost, wait, standing
        self.per = per  # the window: "minute", or "day" (UTC) for document insertions

    @property
    def never(self) -> bool:
        """The request alone is more than the limit allows in a minute: waiting cannot help."""
        return self.cost > self.limit


class RateState(BaseModel):
    model_config = ConfigDict(extra="ignore")

    tat: dict[Unit, float] = Field(default_factory=dict)  # unit -> theoretical arrival time (unix s)

    def take(self, takes: list[Take], now: float) -> list[Standing]:
        """Draw every take, or none (`OverLimit`, the first one that does not fit)."""
        arrivals: list[tuple[Unit, float]] = []
        standing: list[Standing] = []
        for t in takes:
            interval = WINDOW / t.per_minute
            start = max(self.tat.get(t.unit, now), now)
            after = start + t.cost * interval
            if after - now > WINDOW + 1e-9:
                left = _standing(t, start, now)
                raise OverLimit(t.unit, t.per_minute, t.cost, after - now - WINDOW, left)
            arrivals.append((t.unit, after))
            standing.append(_standing(t, after, now))
        for unit, after in arrivals:
            self.tat[unit] = after
        return standing

    def give_back(self, takes: list[Take], now: float) -> None:
        for t in takes:
            if t.unit in self.tat:
                self.tat[t.unit] = max(self.tat[t.unit] - t.cost * WINDOW / t.per_minute, now)


# ---------------------------------------------------------------------- quotas per day and counts
QUOTA_BUCKET: Final = "aigw_quota"  # no TTL: a day's count must outlive an idle hour
QUOTA_HISTORY: Final = 1
CLAIM_TTL_S: Final = 120.0  # a collection claimed but not (yet) in the config counts this long


def utc_day(now: float) -> tuple[str, float]:
    """The UTC day `now` falls in, and the seconds until it ends."""
    day = int(now // 86400)
    return time.strftime("%Y-%m-%d", time.gmtime(day * 86400)), (day + 1) * 86400 - now


class CountCapped(Exception):
    """A count cap (collections per tenant) is reached: refused until one is deleted."""

    def __init__(self, cap: int) -> None:
        super().__init__(cap)
        self.cap = cap


class Quotas(BaseModel):
    """A tenant's document insertions per UTC day and its collections (a document of
    `QUOTA_BUCKET` per tenant, changed by compare-and-set like the rate documents)."""

    model_config = ConfigDict(extra="ignore")

    documents: tuple[str, int] = ("", 0)  # (UTC day, documents inserted that day)
    collections: dict[str, float] = Field(default_factory=dict)  # id -> claimed at (unix s)

    def take_documents(self, count: int, per_day: int, now: float) -> Standing:
        """Count `count` insertions today, or raise `OverLimit` (nothing counted)."""
        day, left_s = utc_day(now)
        used = self.documents[1] if self.documents[0] == day else 0
        if used + count > per_day:
            standing = Standing("documents", per_day, max(per_day - used, 0), left_s)
            raise OverLimit("documents", per_day, count, left_s, standing, per="day")
        self.documents = (day, used + count)
        return Standing("documents", per_day, per_day - used - count, left_s)

    def give_back_documents(self, count: int, day: str) -> None:
        if self.documents[0] == day:
            self.documents = (day, max(self.documents[1] - count, 0))

    def claim_collection(self, collection_id: str, existing: set[str], cap: int, now: float) -> None:
        """Count a new collection against `cap`: those in the configuration (`existing`) and those
        claimed by any replica in the last `CLAIM_TTL_S` (created meanwhile), or `CountCapped`."""
        live = {c for c, at in self.collections.items() if c in existing or now - at < CLAIM_TTL_S}
        if len(live | existing) >= cap:
            raise CountCapped(cap)
        self.collections = {c: at for c, at in self.collections.items() if c in live}
        self.collections[collection_id] = now


def _standing(t: Take, tat: float, now: float) -> Standing:
    used = max(tat - now, 0.0)
    remaining = max(0, math.floor((WINDOW - used) * t.per_minute / WINDOW + 1e-9))
    return Standing(t.unit, t.per_minute, remaining, used)


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text
