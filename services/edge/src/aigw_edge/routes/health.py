"""Liveness and readiness, without auth: orchestrators and load balancers call them."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from aigw_contracts.errors import Unavailable

from ..deps import TheBus
from ..openapi import errors

router = APIRouter(tags=["health"])

_OK = b'{"status":"ok"}'


@router.get("/healthz", summary="Liveness")
async def healthz() -> Response:
    """The process is up and serving HTTP."""
    return Response(_OK, media_type="application/json")


@router.get("/readyz", summary="Readiness", responses=errors(503))
async def readyz(bus: TheBus) -> Response:
    """Ready for traffic: connected to NATS with its reader running (so requests can reach a
    router and their answers come back)."""
    why = bus.ready
    if why is not None:
        raise Unavailable(why)
    return Response(_OK, media_type="application/json")
