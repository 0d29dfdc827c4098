"""`GET /v1/models`: the gateways and catalog models the caller's key may use.

The router owns that data (it holds the gateways), so the edge asks it over NATS request-reply and
relays its `ModelList` JSON as is.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from aigw_contracts.api import ModelList
from aigw_contracts.messages import ModelsQuery

from ..deps import AnyKey, TheBus
from ..openapi import errors

router = APIRouter(tags=["models"])


@router.get(
    "/v1/models",
    summary="List the gateways and models this key may use",
    response_model=ModelList,
    responses=errors(401, 503, 504),
)
@router.get("/api/v1/models", include_in_schema=False)
async def list_models(key: AnyKey, bus: TheBus) -> Response:
    body = await bus.models(ModelsQuery(tenant=key.tenant, key_kind=key.kind))
    return Response(body, media_type="application/json")
