"""Per-key and per-client-IP request rate limits (`ApiKey.limits`), in this edge's memory.

GCRA (the generic cell rate algorithm), one float per bucket: the bucket's "theoretical arrival
time". A limit of N requests per minute admits a burst of up to N requests, then one every 60/N
seconds; a refused request costs nothing and learns exactly when to retry. Compared with counting
requests in fixed minute windows, there is no window edge where twice the limit gets through.

The client IP is the ASGI scope's: behind a reverse proxy, uvicorn's proxy-header handling
(`AIGW_FORWARDED_ALLOW_IPS`) must name the proxy, or every client counts as the proxy.

Buckets whose arrival time has passed hold no state worth keeping: they are dropped whenever the
table reaches `max_buckets`, so memory stays bounded however many addresses show up.
"""

from __future__ import annotations

import time
from typing import Any

from aigw_contracts import ApiKey
from aigw_contracts.errors import RateLimited

WINDOW = 60.0  # seconds: limits are per minute


class RateLimiter:
    def __init__(self, max_buckets: int = 100_000) -> None:
        self.max_buckets = max_buckets
        self._tat: dict[tuple[str, str], float] = {}

    def admit(self, key: ApiKey, client: Any, now: float | None = None) -> None:
        """Count one request of `key` from `client` (the ASGI scope's `client`); `RateLimited` with
        the seconds to wait when a limit is used up (then nothing is counted)."""
        limits = key.limits
        now = time.monotonic() if now is None else now
        checks: list[tuple[tuple[str, str], int]] = []
        if limits.requests_per_minute:
            checks.append(((key.id, ""), limits.requests_per_minute))
        if limits.requests_per_minute_per_ip:
            ip = client[0] if client else "unknown"
            checks.append(((key.id, ip), limits.requests_per_minute_per_ip))
        arrivals = []
        for bucket, per_minute in checks:
            interval = WINDOW / per_minute
            tat = max(self._tat.get(bucket, now), now)
            wait = tat + interval - WINDOW - now
            if wait > 0:
                which = "this API key" if bucket[1] == "" else "this API key from your address"
                raise RateLimited(
                    f"Rate limit reached for {which}: {per_minute} requests per minute. "
                    f"Retry in {wait:.1f} s.",
                    retry_after=wait,
                )
            arrivals.append((bucket, tat + interval))
        if len(self._tat) >= self.max_buckets:
            self._tat = {b: t for b, t in self._tat.items() if t > now}
        for bucket, tat in arrivals:
            self._tat[bucket] = tat
