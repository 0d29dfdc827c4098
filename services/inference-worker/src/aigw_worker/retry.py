"""When a failed upstream attempt is tried again, on the same upstream or the gateway's next one.

Only before anything of the answer reached the client and before the upstream started answering
(`CallState.accepted`): once a token is out, a retry would mix two answers (and bill both), so the
stream ends with an OpenAI-shaped error event instead. Then, by the fault:

* worth retrying on the same upstream: 429, 408, 409 and 5xx answers, a connection that failed or
  broke before the answer started, a malformed answer, and timeouts. After a timeout, though, the
  next upstream of the chain goes first when there is one: a hung upstream would likely cost the
  whole timeout again;
* worth the next upstream only: a fault of this upstream's configuration (no credentials, refused
  credentials) or an answer larger than the worker accepts;
* worth nothing: any other 4xx (the request itself is refused; another upstream would refuse it
  too), and faults of the gateway itself.

Retries wait with exponential backoff and jitter, at least the upstream's Retry-After (up to
`upstream_retry_after_max`; a longer wait moves on at once), and never past the request's deadline.
Each upstream is retried at most its `max_retries` times, and a request at most
`upstream_retry_budget` times across its chain.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from aigw_contracts.errors import DeadlineExceeded, GatewayError, RateLimited, UpstreamError

from .limits import RESPONSE_TOO_LARGE
from .settings import WorkerSettings
from .upstream import UpstreamStatusError

# A retry or a fallback is started only with at least this many seconds left before the deadline.
MIN_ATTEMPT_S = 0.05

_NEXT_ONLY = frozenset({"upstream_not_configured", "upstream_auth_failed", RESPONSE_TOO_LARGE})


class Verdict(enum.Enum):
    RETRY = "retry"  # the same upstream again, else the next
    NEXT = "next"  # the next upstream of the chain (the same again only if it is the last)
    NEXT_ONLY = "next_only"  # the next upstream of the chain, never the same again
    STOP = "stop"  # the error is the answer


def verdict(err: GatewayError) -> Verdict:
    """What may follow an attempt that failed with `err` before anything reached the client."""
    if isinstance(err, RateLimited):
        return Verdict.RETRY
    if isinstance(err, DeadlineExceeded):
        return Verdict.NEXT
    if isinstance(err, UpstreamError):
        if err.code in _NEXT_ONLY:
            return Verdict.NEXT_ONLY
        if isinstance(err, UpstreamStatusError):
            status = err.upstream_status
            return Verdict.RETRY if status in (408, 409) or status >= 500 else Verdict.STOP
        return Verdict.RETRY  # connection failures, malformed or cut answers
    return Verdict.STOP


def backoff(retry: int, settings: WorkerSettings, rng: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `retry` (0 for the first): exponential, with jitter (the upper
    half random, so the retries of many requests failing at once spread out, and none is at once)."""
    ceiling = min(settings.upstream_retry_backoff_max, settings.upstream_retry_backoff * 2**retry)
    return ceiling * (0.5 + rng() / 2)


def wait_before_retry(err: GatewayError, retry: int, settings: WorkerSettings) -> float | None:
    """Seconds to wait before retrying after `err`; None when the upstream asks for longer than
    `upstream_retry_after_max` (better the next upstream, or the error, now)."""
    delay = backoff(retry, settings)
    if err.retry_after is not None:
        if err.retry_after > settings.upstream_retry_after_max:
            return None
        delay = max(delay, err.retry_after)
    return delay
