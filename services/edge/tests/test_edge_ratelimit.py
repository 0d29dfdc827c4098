"""Rate limits as pure units: the per-IP limiter (this edge's memory) and the shared plan limits'
GCRA arithmetic (`aigw_contracts.ratelimits`): bursts, spacing, tokens, refusals that cost nothing,
give-backs, and OpenAI's `x-ratelimit-*` headers."""

from __future__ import annotations

import pytest

from aigw_contracts import ApiKey
from aigw_contracts.config import KeyLimits
from aigw_contracts.errors import RateLimited
from aigw_contracts.ratelimits import OverLimit, RateState, Take, go_duration
from aigw_edge.ratelimit import RateLimiter, ratelimit_headers


def _key(**limits: int) -> ApiKey:
    return ApiKey(id="k1", tenant="t", hash="h", kind="public", limits=KeyLimits(**limits))


def _refusal(limiter: RateLimiter, key: ApiKey, client: tuple[str, int] | None, now: float) -> float | None:
    try:
        limiter.admit(key, client, now)
    except RateLimited as err:
        assert err.status == 429 and err.retry_after is not None
        return err.retry_after
    return None


def test_an_addresss_minute_comes_as_a_burst_then_one_request_per_interval() -> None:
    limiter, key, ip = RateLimiter(), _key(requests_per_minute_per_ip=3), ("10.0.0.1", 5000)
    assert [_refusal(limiter, key, ip, 100.0) for _ in range(3)] == [None, None, None]
    assert _refusal(limiter, key, ip, 100.0) == pytest.approx(20.0)  # 60 s / 3: the next slot
    assert _refusal(limiter, key, ip, 110.0) == pytest.approx(10.0)  # refusals are not counted
    assert _refusal(limiter, key, ip, 120.0) is None
    assert _refusal(limiter, key, ip, 120.0) == pytest.approx(20.0)


def test_each_address_has_its_own_budget_and_a_given_back_slot_is_free_again() -> None:
    limiter, key = RateLimiter(), _key(requests_per_minute_per_ip=2)
    a, b = ("1.1.1.1", 1), ("2.2.2.2", 1)
    assert [_refusal(limiter, key, a, 0.0) for _ in range(2)] == [None, None]
    assert _refusal(limiter, key, a, 0.0) == pytest.approx(30.0)
    assert _refusal(limiter, key, b, 0.0) is None  # b is not held back by a
    limiter.give_back(key, (key.id, "1.1.1.1"))  # what a refused request had drawn
    assert _refusal(limiter, key, a, 0.0) is None
    assert _refusal(limiter, key, None, 0.0) is None  # no address known: one shared bucket


def test_a_key_without_limits_is_never_refused_and_memory_stays_bounded() -> None:
    limiter = RateLimiter(max_buckets=10)
    free = _key()
    assert all(_refusal(limiter, free, ("1.1.1.1", 1), 0.0) is None for _ in range(1000))
    limited = _key(requests_per_minute_per_ip=1)
    for i in range(50):
        assert _refusal(limiter, limited, (f"10.0.0.{i}", 1), float(i) * 100) is None
    assert len(limiter._tat) <= 10  # passed buckets are dropped when the table fills


def test_shared_limits_draw_requests_and_tokens_together_or_not_at_all() -> None:
    state, now = RateState(), 1000.0
    takes = [Take("requests", 10, 1), Take("tokens", 1000, 400)]
    first = state.take(takes, now)
    assert [(s.unit, s.remaining) for s in first] == [("requests", 9), ("tokens", 600)]
    state.take(takes, now)
    with pytest.raises(OverLimit) as refused:  # 800 of 1000 tokens used: 400 more do not fit
        state.take(takes, now)
    assert refused.value.unit == "tokens" and refused.value.wait == pytest.approx(12.0)
    assert state.take([Take("requests", 10, 1)], now)[0].remaining == 7  # the refusal drew nothing
    state.give_back(takes, now)  # a request that ended unanswered
    assert state.take(takes, now)[1].remaining == 200
    with pytest.raises(OverLimit) as never:
        RateState().take([Take("tokens", 1000, 1001)], now)
    assert never.value.never  # larger than a whole minute: waiting cannot help


def test_ratelimit_headers_are_openais_from_the_tightest_limit() -> None:
    key_side = RateState().take([Take("requests", 60, 1), Take("tokens", 150_000, 16)], 0.0)
    tenant_side = RateState().take([Take("requests", 3, 1)], 0.0)
    headers = dict(ratelimit_headers(key_side + tenant_side))
    assert headers[b"x-ratelimit-limit-requests"] == b"3"  # the tenant's is tighter
    assert headers[b"x-ratelimit-remaining-requests"] == b"2"
    assert headers[b"x-ratelimit-reset-requests"] == b"20s"
    assert headers[b"x-ratelimit-limit-tokens"] == b"150000"
    assert headers[b"x-ratelimit-remaining-tokens"] == b"149984"
    assert headers[b"x-ratelimit-reset-tokens"] == b"6ms"
    assert go_duration(360.0) == "6m0s" and go_duration(1.5) == "1.5s"
