"""`/v1/tenants`: operators create and remove tenants; a tenant with gateways or keys can't be removed."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from aigw_contracts import Tenant, errors

from ..auth import KeyStore
from .access import admin_key, can_see, not_found, operator_key
from .schemas import ListOf, TenantIn
from .store import ManagedConfig


def router(config: ManagedConfig, keys: KeyStore) -> APIRouter:
    api = APIRouter(prefix="/v1/tenants", tags=["tenants"])

    @api.post("", status_code=201, summary="Create a tenant (operators)")
    async def create(body: TenantIn, request: Request) -> Tenant:
        operator_key(request, keys)
        if body.id in config.view.tenants:
            raise errors.Conflict(f"tenant '{body.id}' already exists", param="id")
        tenant = Tenant(id=body.id, name=body.name)
        await config.put("tenant", tenant, expect_revision=0)
        return tenant

    @api.get("", summary="List tenants (operators see all; admins their own)")
    async def list_(request: Request) -> ListOf:
        key = admin_key(request, keys)
        return ListOf(
            data=sorted((t for t in config.view.tenants.values() if can_see(key, t.id)), key=lambda t: t.id)
        )

    @api.get("/{tenant_id}", summary="Show a tenant")
    async def show(tenant_id: str, request: Request) -> Tenant:
        key = admin_key(request, keys)
        tenant = config.view.tenants.get(tenant_id)
        if tenant is None or not can_see(key, tenant_id):
            raise not_found("tenant", tenant_id, "tenant")
        return tenant

    @api.delete("/{tenant_id}", summary="Delete a tenant that has no gateways, keys or own upstreams")
    async def delete(tenant_id: str, request: Request) -> dict[str, Any]:
        operator_key(request, keys)
        if tenant_id not in config.view.tenants:
            raise not_found("tenant", tenant_id, "tenant")
        owned = (
            sum(g.tenant == tenant_id for g in config.view.gateways.values())
            + sum(k.tenant == tenant_id for k in config.view.keys.values())
            + sum(u.tenant == tenant_id for u in config.view.upstreams.values())
        )
        if owned:
            raise errors.Conflict(
                f"tenant '{tenant_id}' still owns {owned} gateway(s), key(s) or upstream(s)"
            )
        await config.delete("tenant", tenant_id)
        return {"id": tenant_id, "object": "tenant", "deleted": True}

    return api
