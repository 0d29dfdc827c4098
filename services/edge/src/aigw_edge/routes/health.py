"""Liveness, readiness and metrics, without auth: orchestrators, balancers and Prometheus call them."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from aigw_contracts.errors import Unavailable
from aigw_runtime.metrics import CONTENT_TYPE, exposition

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


@router.get("/metrics", summary="Prometheus metrics")
async def metrics() -> Response:
    """The edge's metrics in Prometheus' text format (names: README, "Seeing inside")."""
    return Response(exposition(), media_type=CONTENT_TYPE)
