"""`GET /v1/usage/cache`: each cache-enabled gateway's hit ratio and spend on hits, from metering.

One `UsageQuery` grouped by gateway and SKU (the same report `GET /v1/usage` gives): hits are the
requests with an `inference.cache.hit` line, misses those with an `inference.chat_completions.out`
line (every answered request that reached a model has one). The estimated savings are what the
hits would have cost at the gateway's average spend per miss in the period, less what they cost.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from aigw_contracts import skus, subjects
from aigw_contracts.usage import ExactDecimal, UsageQuery, UsageReport

from ..deps import PrivateKey, TheBus
from ..manage.store import Config
from ..openapi import errors as openapi_errors
from .usage import _utc, _whose

router = APIRouter(tags=["usage"])

# What a model-answered request costs: its token lines (a cache hit has none of these).
_MODEL_SKUS = frozenset({skus.CHAT_IN, skus.CHAT_OUT, skus.CHAT_IN_CACHED})
_PLACES = Decimal("1E-12")  # an estimate: no more digits than it deserves


class GatewayCacheStats(BaseModel):
    gateway: str  # the gateway's id
    slug: str | None  # None for a gateway deleted since
    hits: int
    misses: int
    hit_ratio: float | None  # None without any request
    hit_amount: ExactDecimal  # what the hits were billed
    estimated_savings: ExactDecimal


class CacheStats(BaseModel):
    tenant: str | None
    start: datetime
    end: datetime
    gateways: list[GatewayCacheStats]


@router.get(
    "/v1/usage/cache",
    summary="Response-cache hit ratio and savings per gateway",
    response_model=CacheStats,
    responses=openapi_errors(400, 401, 403, 404, 503, 504),
)
async def cache_stats(
    key: PrivateKey,
    bus: TheBus,
    config: Config,
    start: datetime | None = Query(default=None, alias="from", description="ISO time; default: 30 days ago"),
    end: datetime | None = Query(default=None, alias="to", description="ISO time; default: now"),
    tenant: str | None = Query(default=None, description="operator keys: another tenant, or 'all'"),
) -> CacheStats:
    wanted = _whose(key, tenant, config)
    query = UsageQuery(
        tenant=wanted,
        start=_utc(start, "from"),
        end=_utc(end, "to"),
        group_by=["gateway", "sku"],
        limit=10_000,
    )
    answer = await bus.ask(
        subjects.METERING_QUERY, query.model_dump_json().encode(), "metering service", "report usage"
    )
    report = UsageReport.model_validate_json(answer)
    gateways = config.view.gateways
    cached = {
        g.id for g in gateways.values() if g.cache is not None and (wanted is None or g.tenant == wanted)
    }
    hits: dict[str, tuple[int, Decimal]] = {}
    misses: dict[str, int] = {}
    model_spend: dict[str, Decimal] = {}
    for row in report.rows:
        if row.gateway is None:
            continue
        if row.sku == skus.CACHE_HIT:
            hits[row.gateway] = (row.requests, row.amount)
        elif row.sku == skus.CHAT_OUT:
            misses[row.gateway] = row.requests
        if row.sku in _MODEL_SKUS:
            model_spend[row.gateway] = model_spend.get(row.gateway, Decimal(0)) + row.amount
    out = []
    for gateway_id in sorted(cached | set(hits)):
        hit_count, hit_amount = hits.get(gateway_id, (0, Decimal(0)))
        miss_count = misses.get(gateway_id, 0)
        total = hit_count + miss_count
        per_miss = model_spend.get(gateway_id, Decimal(0)) / miss_count if miss_count else Decimal(0)
        found = gateways.get(gateway_id)
        out.append(
            GatewayCacheStats(
                gateway=gateway_id,
                slug=found.slug if found else None,
                hits=hit_count,
                misses=miss_count,
                hit_ratio=round(hit_count / total, 6) if total else None,
                hit_amount=hit_amount,
                estimated_savings=max(Decimal(0), per_miss * hit_count - hit_amount).quantize(_PLACES),
            )
        )
    return CacheStats(tenant=report.tenant, start=report.start, end=report.end, gateways=out)
