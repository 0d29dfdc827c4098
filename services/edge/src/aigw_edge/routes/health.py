"""Liveness and readiness, without auth: orchestrators and load balancers call them."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from aigw_contracts.errors import Unavailable

from ..bus import Bus

_OK = b'{"status":"ok"}'


def router(bus: Bus) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz")
    async def healthz() -> Response:
        """The process is up and serving HTTP."""
        return Response(_OK, media_type="application/json")

    @api.get("/readyz")
    async def readyz() -> Response:
        """Ready for traffic: connected to NATS (so requests can reach a router)."""
        if not bus.connected:
            raise Unavailable("The gateway is not connected to its message bus")
        return Response(_OK, media_type="application/json")

    return api
