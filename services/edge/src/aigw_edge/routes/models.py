"""`GET /v1/models`: the gateways and catalog models the caller's key may use.

The router owns that data (it holds the gateways), so the edge asks it over NATS request-reply and
relays its `ModelList` JSON as is.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from aigw_contracts.messages import ModelsQuery

from ..auth import KeyStore, header
from ..bus import Bus
from ..logs import SCOPE_KEY


def router(bus: Bus, keys: KeyStore) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models")
    @api.get("/api/v1/models")
    async def list_models(request: Request) -> Response:
        key = keys.authenticate(header(request.scope, b"authorization"))
        fields = request.scope.get(SCOPE_KEY)
        if fields is not None:
            fields.update(tenant=key.tenant, key_id=key.id)
        body = await bus.models(ModelsQuery(tenant=key.tenant, key_kind=key.kind))
        return Response(body, media_type="application/json")

    return api
