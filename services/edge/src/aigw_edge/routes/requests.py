"""`GET /v1/requests`: the request log, newest first, with filters (gateway, status, time range).

Metering owns the store, so the edge asks it over NATS (`RequestLogQuery` → `RequestLogReport`),
as for usage, with the same rule for whose requests a key may read: its own tenant's; operator keys
may name another tenant, or `all` (which also lists requests refused before a key said whose).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import ValidationError
from starlette.responses import Response

from aigw_contracts import errors, subjects
from aigw_contracts.requestlog import MAX_REQUEST_ROWS, RequestLogQuery, RequestLogReport

from ..deps import PrivateKey, TheBus
from ..errors import invalid_request
from ..manage.store import Config
from ..openapi import errors as openapi_errors
from .usage import _utc, _whose

router = APIRouter(tags=["usage"])


@router.get(
    "/v1/requests",
    summary="The request log: every request with its status, latency, tokens and cost",
    response_model=RequestLogReport,
    responses=openapi_errors(400, 401, 403, 404, 503, 504),
)
async def requests(
    key: PrivateKey,
    bus: TheBus,
    config: Config,
    since: datetime | None = Query(default=None, description="ISO time; default: a day before 'until'"),
    until: datetime | None = Query(default=None, description="ISO time; default: now"),
    gateway: str | None = Query(default=None, description="a gateway's slug or name"),
    status: str | None = Query(default=None, description="an HTTP status (429) or a class (4xx, 5xx)"),
    tenant: str | None = Query(default=None, description="operator keys: another tenant, or 'all'"),
    limit: int = Query(default=100, ge=1, le=MAX_REQUEST_ROWS),
) -> Response:
    wanted = _whose(key, tenant, config)
    since, until = _utc(since, "since"), _utc(until, "until")
    if since is not None and until is not None and since >= until:
        raise errors.InvalidRequest("'since' must be before 'until'.", param="since")
    try:
        query = RequestLogQuery(
            tenant=wanted, since=since, until=until, gateway=gateway, status=status, limit=limit
        )
    except ValidationError as exc:
        raise invalid_request(exc) from None
    body = await bus.ask(
        subjects.METERING_REQUESTS, query.model_dump_json().encode(), "metering service", "list requests"
    )
    return Response(body, media_type="application/json")
