"""Who may manage what. Admin keys manage their own tenant; operator keys manage every tenant.

Something a key may not see answers 404, exactly like something that does not exist, so ids of
other tenants never leak.
"""

from __future__ import annotations

from fastapi import Request

from aigw_contracts import ApiKey, Gateway, errors

from ..auth import KeyStore, header


def admin_key(request: Request, keys: KeyStore) -> ApiKey:
    key = keys.authenticate(header(request.scope, b"authorization"))
    if not (key.admin or key.operator):
        raise errors.Forbidden("This API key cannot use the management API; use an admin key.")
    return key


def operator_key(request: Request, keys: KeyStore) -> ApiKey:
    key = admin_key(request, keys)
    if not key.operator:
        raise errors.Forbidden("Only operator keys can do this.")
    return key


def target_tenant(key: ApiKey, requested: str | None) -> str:
    """The tenant a write applies to: the key's own, or (operators only) the one asked for."""
    if requested is None or requested == key.tenant:
        return key.tenant
    if not key.operator:
        raise errors.Forbidden("Only operator keys can act for another tenant.", param="tenant")
    return requested


def can_see(key: ApiKey, tenant: str | None) -> bool:
    return key.operator or tenant == key.tenant


def not_found(what: str, ref: str, param: str | None = None) -> errors.NotFound:
    err = errors.NotFound(f"No {what} '{ref}' exists or you do not have access to it.", param=param)
    err.code = f"{what}_not_found"
    return err


def listed_tenant(key: ApiKey, requested: str | None) -> str | None:
    """Whose entries a listing shows: the key's tenant, another one (operators), or None = every
    tenant (operators asking for no tenant in particular)."""
    if requested or not key.operator:
        return target_tenant(key, requested)
    return None


def in_use(what: str, users: list[Gateway], hint: str, param: str) -> errors.Conflict:
    """Refusal to delete something gateways still use, naming (up to ten of) them."""
    names = ", ".join(sorted(g.slug for g in users)[:10])
    return errors.Conflict(f"{what} is used by {len(users)} gateway(s): {names}; {hint}", param=param)
