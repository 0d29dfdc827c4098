"""Who may manage what. Admin keys manage their own tenant; operator keys manage every tenant.

Who is calling comes from the dependencies in `aigw_edge.deps` (`AdminKey`, `OperatorKey`, …);
these helpers decide which tenant a request acts on. Something a key may not see answers 404,
exactly like something that does not exist, so ids of other tenants never leak. A tenant an
operator names is checked: a malformed id is 400, an unknown one 404.
"""

from __future__ import annotations

from aigw_contracts import ApiKey, Gateway, errors

from ..tenancy import existing_tenant, tenant_ref
from .store import ManagedConfig


def target_tenant(key: ApiKey, requested: str | None, config: ManagedConfig) -> str:
    """The tenant a write applies to: the key's own, or (operators only) an existing one asked for."""
    if requested is None or requested == key.tenant:
        return key.tenant
    tenant_ref(requested)
    if not key.operator:
        raise errors.Forbidden("Only operator keys can act for another tenant.", param="tenant")
    return existing_tenant(requested, config.view.tenants)


def can_see(key: ApiKey, tenant: str | None) -> bool:
    return key.operator or tenant == key.tenant


def not_found(what: str, ref: str, param: str | None = None) -> errors.NotFound:
    err = errors.NotFound(f"No {what} '{ref}' exists or you do not have access to it.", param=param)
    err.code = f"{what}_not_found"
    return err


def listed_tenant(key: ApiKey, requested: str | None, config: ManagedConfig) -> str | None:
    """Whose entries a listing shows: the key's tenant, another one (operators), or None = every
    tenant (operators asking for no tenant in particular)."""
    if requested or not key.operator:
        return target_tenant(key, requested, config)
    return None


def in_use(what: str, users: list[Gateway], hint: str, param: str) -> errors.Conflict:
    """Refusal to delete something gateways still use, naming (up to ten of) them."""
    names = ", ".join(sorted(g.slug for g in users)[:10])
    return errors.Conflict(f"{what} is used by {len(users)} gateway(s): {names}; {hint}", param=param)
