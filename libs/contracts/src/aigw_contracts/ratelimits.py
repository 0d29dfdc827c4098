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
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

RATE_BUCKET: Final = "aigw_rate"
RATE_HISTORY: Final = 1
RATE_TTL_S: Final = 3600.0  # a document untouched for an hour is dropped (its limits have refilled)
WINDOW: Final = 60.0  # seconds: limits are per minute

Unit = Literal["requests", "tokens"]


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
    def __init__(self, unit: Unit, limit: int, cost: int, wait: float, standing: Standing) -> None:
        super().__init__(unit)
        self.unit, self.limit, self.cost, self.wait, self.standing = unit, limit, cost, wait, standing

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
