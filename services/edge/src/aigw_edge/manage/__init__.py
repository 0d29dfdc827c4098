"""The management API (admin keys): gateways, upstreams, API keys and tenants in the config store,
and knowledge collections (their documents are asked of the retrieval service over NATS).

`router` holds every route; what the routes share (`ManagedConfig`, `UpstreamRules`, the key store,
the bus) is on `app.state`, reached through dependencies."""

from __future__ import annotations

from fastapi import APIRouter

from . import circuits, collections, gateways, keys, spend, tenants, upstreams
from .store import ManagedConfig
from .upstreams import UpstreamRules

__all__ = ["ManagedConfig", "UpstreamRules", "router"]

router = APIRouter()
for _module in (gateways, upstreams, circuits, keys, tenants, collections, spend):
    router.include_router(_module.router)
