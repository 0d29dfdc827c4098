"""Synthetic usage events, priced like the demo catalog, for tests and the benchmark.

Deterministic for a given `seed`, so a test can recompute exactly what it published.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aigw_contracts import skus
from aigw_contracts.api import GeneratedUsage
from aigw_contracts.ids import uuid7
from aigw_contracts.usage import UsageEvent

PRICES = {
    skus.CHAT_IN: Decimal("2.5E-7"),
    skus.CHAT_OUT: Decimal("0.000002"),
    skus.CHAT_IN_CACHED: Decimal("2.5E-8"),
}


def event(
    tenant: str = "acme",
    *,
    request_id: str | None = None,
    gateway_id: str | None = "gw-1",
    model: str = "sim-model",
    tokens: tuple[int, int, int] = (120, 45, 0),
    at: datetime | None = None,
    metadata: dict[str, str] | None = None,
    source: str = "inference",
) -> UsageEvent:
    """One request's event: input, output and (when any) cached-input lines."""
    finished = at or datetime.now(UTC)
    uncached, out, cached = tokens
    lines = [
        GeneratedUsage.priced(skus.CHAT_IN, PRICES[skus.CHAT_IN], uncached, skus.chat_description(model)),
        GeneratedUsage.priced(skus.CHAT_OUT, PRICES[skus.CHAT_OUT], out, skus.chat_description(model)),
    ]
    if cached:
        lines.append(
            GeneratedUsage.priced(
                skus.CHAT_IN_CACHED, PRICES[skus.CHAT_IN_CACHED], cached, skus.chat_description(model)
            )
        )
    return UsageEvent.model_validate(
        {
            "request_id": request_id or uuid7(),
            "source": source,
            "tenant": tenant,
            "key_id": f"key-{tenant}",
            "gateway_id": gateway_id,
            "upstream": f"@sim/{model}",
            "model": model,
            "lines": lines,
            "metadata": metadata or {},
            "started_at": finished - timedelta(milliseconds=420),
            "finished_at": finished,
            "latency_ms": 420.0,
            "ttft_ms": 85.5,
        }
    )


def events(
    n: int,
    seed: int = 0,
    tenants: int = 3,
    start: datetime | None = None,
    spread: timedelta = timedelta(hours=6),
) -> Iterator[UsageEvent]:
    """`n` events over `tenants` tenants, two gateways and two models, spread over `spread`."""
    rng = random.Random(seed)
    base = start or datetime.now(UTC) - spread
    step = spread / max(n, 1)
    for i in range(n):
        tenant = f"tenant-{i % tenants}"
        yield event(
            tenant,
            request_id=f"req-{seed}-{i:08d}",
            gateway_id=rng.choice(("gw-a", "gw-b", None)),
            model=rng.choice(("sim-model", "sim-large")),
            tokens=(rng.randint(1, 4000), rng.randint(1, 1000), rng.choice((0, 0, rng.randint(1, 2000)))),
            at=base + step * i,
            metadata={"run": str(seed)} if i % 5 == 0 else None,
        )
