"""`GET /v1/usage`: spend and quantities by gateway, SKU, model and time bucket, with totals.

The metering service owns the usage store, so the edge asks it over NATS (`UsageQuery` →
`UsageReport`). A key sees its own tenant's usage; operator keys may name any existing tenant, or
`all` for every tenant. What decides "every tenant" is the key's operator flag, never the name
asked for: `all` is reserved and cannot name a tenant.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Final

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from aigw_contracts import ApiKey, errors, subjects
from aigw_contracts.spend import AccountView
from aigw_contracts.usage import UsageQuery, UsageReport
from aigw_runtime.spend import AccountRef, SpendAccounts

from ..deps import PrivateKey, TheBus
from ..errors import invalid_request
from ..manage.store import Config, ManagedConfig
from ..openapi import errors as openapi_errors
from ..tenancy import ALL_TENANTS, existing_tenant, tenant_ref

router = APIRouter(tags=["usage"])

# Times the usage store can compare with (ClickHouse's DateTime64 holds 1900..2299); usage before
# the Unix epoch cannot exist. Checked here, so a stray year is the caller's 400, not a 503.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC)


def _utc(value: datetime | None, param: str) -> datetime | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if not EARLIEST <= value <= LATEST:
        raise errors.InvalidRequest(
            f"'{param}' must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d} (UTC).", param=param
        )
    return value


def _whose(key: ApiKey, tenant: str | None, config: ManagedConfig) -> str | None:
    """The tenant to report on (None: every tenant)."""
    if tenant is None or (tenant == key.tenant and tenant != ALL_TENANTS):
        return key.tenant
    if tenant == ALL_TENANTS:
        if not key.operator:
            raise errors.Forbidden("Only operator keys can read every tenant's usage.", param="tenant")
        return None
    tenant_ref(tenant)
    if not key.operator:
        raise errors.NotFound("No such tenant, or you do not have access to it.", param="tenant")
    return existing_tenant(tenant, config.view.tenants)


@router.get(
    "/v1/usage",
    summary="Usage and spend, grouped, with totals",
    response_model=UsageReport,
    responses=openapi_errors(400, 401, 403, 404, 503, 504),
)
async def usage(
    request: Request,
    key: PrivateKey,
    bus: TheBus,
    config: Config,
    start: datetime | None = Query(default=None, alias="from", description="ISO time; default: 30 days ago"),
    end: datetime | None = Query(default=None, alias="to", description="ISO time; default: now"),
    group_by: str = Query(
        default="gateway,sku",
        description="comma list of tenant, gateway, sku, model, bucket, request (request-level rows)",
    ),
    bucket: str = Query(default="day", description="hour, day or month"),
    tenant: str | None = Query(default=None, description="operator keys: another tenant, or 'all'"),
    gateway: str | None = None,
    sku: str | None = None,
    model: str | None = None,
    request_id: str | None = Query(
        default=None, alias="request", description="one request: its x-request-id or chatcmpl- id"
    ),
    limit: int = Query(default=1000, ge=1, le=10_000),
) -> Response:
    wanted = _whose(key, tenant, config)
    start, end = _utc(start, "from"), _utc(end, "to")
    if start is not None and end is not None and start >= end:
        raise errors.InvalidRequest("'from' must be before 'to'.", param="from")
    try:
        query = UsageQuery(
            tenant=wanted,
            start=start,
            end=end,
            group_by=[g for g in (p.strip() for p in group_by.split(",")) if g],
            bucket=bucket,
            gateway=gateway,
            sku=sku,
            model=model,
            request=request_id.removeprefix("chatcmpl-") if request_id else None,
            limit=limit,
        )
    except ValidationError as exc:
        raise invalid_request(exc) from None
    body = await bus.ask(
        subjects.METERING_QUERY, query.model_dump_json().encode(), "metering service", "report usage"
    )
    accounts: SpendAccounts | None = getattr(request.app.state, "spend", None)
    if wanted is not None and accounts is not None:
        # The tenant's balance, spend in the day and month, reserved and remaining (live counters,
        # where the rows above are what ClickHouse has stored).
        account, revision = await accounts.read(AccountRef("tenant", wanted, wanted))
        if revision:
            report = json.loads(body)
            view = AccountView.of("tenant", wanted, account, time.time())
            report["spend"] = view.model_dump(mode="json", exclude={"credits"})
            body = json.dumps(report).encode()
    return Response(body, media_type="application/json")
