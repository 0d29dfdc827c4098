"""`GET /v1/usage`: spend and quantities by gateway, SKU, model and time bucket, with totals.

The metering service owns the usage store, so the edge asks it over NATS (`UsageQuery` →
`UsageReport`). A key sees its own tenant's usage; operator keys may name any tenant, or none for
every tenant.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from aigw_contracts import errors, subjects
from aigw_contracts.usage import UsageQuery

from ..auth import KeyStore, header
from ..bus import Bus
from ..errors import invalid_request


def router(bus: Bus, keys: KeyStore) -> APIRouter:
    api = APIRouter(tags=["usage"])

    @api.get("/v1/usage", summary="Usage and spend, grouped, with totals")
    async def usage(
        request: Request,
        start: datetime | None = Query(
            default=None, alias="from", description="ISO time; default: 30 days ago"
        ),
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
        key = keys.authenticate(header(request.scope, b"authorization"))
        if key.kind == "public":
            raise errors.Forbidden("Public keys cannot read usage.")
        if tenant is not None and tenant != key.tenant and not key.operator:
            raise errors.NotFound("No such tenant, or you do not have access to it.", param="tenant")
        wanted = None if tenant == "all" else (tenant or key.tenant)
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
        return Response(body, media_type="application/json")

    return api
