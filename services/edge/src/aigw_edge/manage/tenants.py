"""`/v1/tenants`: operators create and remove tenants; a tenant with gateways or keys can't be removed."""

from __future__ import annotations

from fastapi import APIRouter

from aigw_contracts import Tenant, errors
from aigw_contracts.config import TenantLimits

from ..deps import AdminKey, OperatorKey
from ..openapi import errors as openapi_errors
from ..tenancy import check_new_tenant_id
from .access import can_see, not_found
from .schemas import Deleted, ListOf, TenantIn, TenantUpdate
from .store import Config

router = APIRouter(prefix="/v1/tenants", tags=["tenants"], responses=openapi_errors(400, 401, 403, 404, 409))


@router.post("", status_code=201, summary="Create a tenant (operators)")
async def create(body: TenantIn, _: OperatorKey, config: Config) -> Tenant:
    check_new_tenant_id(body.id)
    if body.id in config.view.tenants:
        raise errors.Conflict(f"tenant '{body.id}' already exists", param="id")
    tenant = Tenant(id=body.id, name=body.name)
    await config.put("tenant", tenant, expect_revision=0)
    return tenant


@router.get("", summary="List tenants (operators see all; admins their own)")
async def list_(key: AdminKey, config: Config) -> ListOf[Tenant]:
    return ListOf[Tenant](
        data=sorted((t for t in config.view.tenants.values() if can_see(key, t.id)), key=lambda t: t.id)
    )


@router.get("/{tenant_id}", summary="Show a tenant")
async def show(tenant_id: str, key: AdminKey, config: Config) -> Tenant:
    tenant = config.view.tenants.get(tenant_id)
    if tenant is None or not can_see(key, tenant_id):
        raise not_found("tenant", tenant_id, "tenant")
    return tenant


@router.patch("/{tenant_id}", summary="Change a tenant's name or plan rate limits (operators)")
async def update(tenant_id: str, body: TenantUpdate, _: OperatorKey, config: Config) -> Tenant:
    tenant = config.view.tenants.get(tenant_id)
    if tenant is None:
        raise not_found("tenant", tenant_id, "tenant")
    changes: dict[str, object] = {}
    if body.name is not None:
        changes["name"] = body.name
    if body.limits is not None:
        # Only the limits named change; null lifts one.
        merged = tenant.limits.model_dump() | body.limits.model_dump(include=body.limits.model_fields_set)
        changes["limits"] = TenantLimits.model_validate(merged)
    updated = tenant.model_copy(update=changes)
    await config.put("tenant", updated)
    return updated


@router.delete("/{tenant_id}", summary="Delete a tenant that has no gateways, keys or own upstreams")
async def delete(tenant_id: str, _: OperatorKey, config: Config) -> Deleted:
    if tenant_id not in config.view.tenants:
        raise not_found("tenant", tenant_id, "tenant")
    owned = (
        sum(g.tenant == tenant_id for g in config.view.gateways.values())
        + sum(k.tenant == tenant_id for k in config.view.keys.values())
        + sum(u.tenant == tenant_id for u in config.view.upstreams.values())
    )
    if owned:
        raise errors.Conflict(f"tenant '{tenant_id}' still owns {owned} gateway(s), key(s) or upstream(s)")
    await config.delete("tenant", tenant_id)
    return Deleted(id=tenant_id, object="tenant")
