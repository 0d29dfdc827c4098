"""Admission: at most `AIGW_MAX_INFLIGHT_REQUESTS` chat completions in flight per edge; beyond it,
a 503 `overloaded` with `Retry-After: 1`, at once.

Why at the edge: past capacity, accepting more only makes every request slower (each waits behind
the others in the workers' queues, the router and the event loop here) until all of them miss their
deadlines. Refusing the excess at once keeps the admitted ones fast, and a 503 with `Retry-After`
is what the OpenAI SDKs retry after a pause on their own. The workers keep their own bound
(`max_inflight + max_queued`, also a 503); this one also protects the edge's memory and event loop
and the services in between.

A plain counter: the edge is one event loop, so no lock is needed, and a refused request costs no
more than this check (it is made before authentication and before the body is read).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aigw_contracts.errors import Unavailable

RETRY_AFTER = 1.0  # seconds a refused client is told to wait


def overloaded(limit: int) -> Unavailable:
    return Unavailable(
        f"The gateway is handling as many requests as it can ({limit} at once); retry shortly",
        retry_after=RETRY_AFTER,
        code="overloaded",
    )


class Admission:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of the `limit` places for the duration of the block; `Unavailable` when none is free."""
        if self.in_flight >= self.limit:
            raise overloaded(self.limit)
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
