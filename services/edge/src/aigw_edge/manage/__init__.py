"""The management API (admin keys): gateways, upstreams, API keys and tenants in the config store,
and knowledge collections (their documents are asked of the retrieval service over NATS)."""

from __future__ import annotations

from fastapi import APIRouter

from ..auth import KeyStore
from ..bus import Bus
from . import collections, gateways, keys, tenants, upstreams
from .store import ManagedConfig
from .upstreams import UpstreamRules

__all__ = ["ManagedConfig", "UpstreamRules", "knowledge_router", "router"]


def router(config: ManagedConfig, key_store: KeyStore, rules: UpstreamRules) -> APIRouter:
    api = APIRouter()
    api.include_router(gateways.router(config, key_store))
    api.include_router(upstreams.router(config, key_store, rules))
    api.include_router(keys.router(config, key_store))
    api.include_router(tenants.router(config, key_store))
    return api


def knowledge_router(config: ManagedConfig, key_store: KeyStore, bus: Bus) -> APIRouter:
    """`/v1/collections…`: apart from `router` because it needs the bus (documents live in retrieval)."""
    return collections.router(config, key_store, bus)
