"""Per-key and per-IP rate limits (GCRA), as a pure unit: bursts, spacing, refusals that cost nothing."""

from __future__ import annotations

import pytest

from aigw_contracts import ApiKey
from aigw_contracts.config import KeyLimits
from aigw_contracts.errors import RateLimited
from aigw_edge.ratelimit import RateLimiter


def _key(**limits: int) -> ApiKey:
    return ApiKey(id="k1", tenant="t", hash="h", kind="public", limits=KeyLimits(**limits))


def _refusal(limiter: RateLimiter, key: ApiKey, client: tuple[str, int], now: float) -> float | None:
    try:
        limiter.admit(key, client, now)
    except RateLimited as err:
        assert err.status == 429 and err.retry_after is not None
        return err.retry_after
    return None


def test_a_minutes_budget_comes_as_a_burst_then_one_request_per_interval() -> None:
    limiter, key, ip = RateLimiter(), _key(requests_per_minute=3), ("10.0.0.1", 5000)
    assert [_refusal(limiter, key, ip, 100.0) for _ in range(3)] == [None, None, None]
    wait = _refusal(limiter, key, ip, 100.0)
    assert wait == pytest.approx(20.0)  # 60 s / 3: the next slot
    assert _refusal(limiter, key, ip, 110.0) == pytest.approx(10.0)  # refusals are not counted
    assert _refusal(limiter, key, ip, 120.0) is None
    assert _refusal(limiter, key, ip, 120.0) == pytest.approx(20.0)


def test_each_address_has_its_own_budget_and_the_key_one_covers_them_all() -> None:
    limiter = RateLimiter()
    key = _key(requests_per_minute=3, requests_per_minute_per_ip=2)
    a, b, c = ("1.1.1.1", 1), ("2.2.2.2", 1), ("3.3.3.3", 1)
    assert [_refusal(limiter, key, a, 0.0) for _ in range(2)] == [None, None]
    assert _refusal(limiter, key, a, 0.0) == pytest.approx(30.0)  # a's own limit
    assert _refusal(limiter, key, b, 0.0) is None  # b is not held back by a
    assert _refusal(limiter, key, c, 0.0) == pytest.approx(20.0)  # the key's 3 per minute are used
    assert _refusal(limiter, key, None, 0.0) is not None  # no address known: one shared bucket, still limited


def test_a_key_without_limits_is_never_refused_and_memory_stays_bounded() -> None:
    limiter = RateLimiter(max_buckets=10)
    free = _key()
    assert all(_refusal(limiter, free, ("1.1.1.1", 1), 0.0) is None for _ in range(1000))
    limited = _key(requests_per_minute_per_ip=1)
    for i in range(50):
        assert _refusal(limiter, limited, (f"10.0.0.{i}", 1), float(i) * 100) is None
    assert len(limiter._tat) <= 10  # passed buckets are dropped when the table fills
