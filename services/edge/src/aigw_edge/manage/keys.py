"""`/v1/keys`: API keys. The secret is shown once, at creation; only its peppered hash is stored."""

from __future__ import annotations

import time

from fastapi import APIRouter

from aigw_contracts import ApiKey, errors
from aigw_contracts.config import PUBLIC_KEY_DEFAULT_RPM_PER_IP, KeyLimits
from aigw_contracts.ids import uuid7
from aigw_contracts.keys import new_secret

from ..deps import AdminKey, Keys
from ..openapi import errors as openapi_errors
from .access import can_see, listed_tenant, not_found, target_tenant
from .schemas import Deleted, KeyCreated, KeyIn, KeyOut, KeyPatch, ListOf
from .store import Config, ManagedConfig

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=openapi_errors(400, 401, 403, 404))


def find(config: ManagedConfig, key: ApiKey, key_id: str) -> ApiKey:
    found = config.view.keys.get(key_id)
    if found is None or not can_see(key, found.tenant):
        raise not_found("api_key", key_id, "key")
    return found


@router.post("", status_code=201, summary="Create an API key (the secret is in this answer only)")
async def create(body: KeyIn, key: AdminKey, config: Config, keys: Keys) -> KeyCreated:
    tenant = target_tenant(key, body.tenant, config)
    if body.operator and not key.operator:
        raise errors.Forbidden("Only operator keys can create operator keys.", param="operator")
    if body.kind == "public" and (body.admin or body.operator):
        raise errors.InvalidRequest("public keys cannot be admin keys", param="admin")
    now = time.time()
    expires_at = body.expires_at if body.expires_in is None else now + body.expires_in
    limits = body.limits or KeyLimits()
    if body.kind == "public" and (
        body.limits is None or "requests_per_minute_per_ip" not in body.limits.model_fields_set
    ):
        limits = limits.model_copy(update={"requests_per_minute_per_ip": PUBLIC_KEY_DEFAULT_RPM_PER_IP})
    secret = new_secret()
    created = ApiKey(
        id=uuid7(),
        tenant=tenant,
        hash=keys.hash(secret.encode()),
        kind=body.kind,
        admin=body.admin,
        operator=body.operator,
        name=body.name,
        expires_at=expires_at,
        created_at=now,
        prefix=secret[:12],
        limits=limits,
    )
    await config.put("key", created, expect_revision=0)
    return KeyCreated(secret=secret, **KeyOut.of(created).model_dump())


@router.get("", summary="List API keys (never their secrets)")
async def list_(key: AdminKey, config: Config, tenant: str | None = None) -> ListOf[KeyOut]:
    wanted = listed_tenant(key, tenant, config)
    rows = [KeyOut.of(k) for k in config.view.keys.values() if wanted is None or k.tenant == wanted]
    return ListOf[KeyOut](data=sorted(rows, key=lambda k: k.id))


@router.get("/{key_id}", summary="Show an API key")
async def show(key_id: str, key: AdminKey, config: Config) -> KeyOut:
    return KeyOut.of(find(config, key, key_id))


@router.patch("/{key_id}", summary="Rename an API key or change its rate limits (each null: no limit)")
async def update(key_id: str, body: KeyPatch, key: AdminKey, config: Config) -> KeyOut:
    found = find(config, key, key_id)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("name", "") is None:
        changes["name"] = ""
    if "limits" in changes:  # the limits given replace those; null clears them all
        given = body.limits.model_dump(exclude_unset=True) if body.limits else None
        changes["limits"] = found.limits.model_copy(update=given) if given is not None else KeyLimits()
    updated = found.model_copy(update=changes)
    await config.put("key", updated)
    return KeyOut.of(updated)


@router.post("/{key_id}/revoke", summary="Revoke an API key (effective on every replica within a second)")
async def revoke(key_id: str, key: AdminKey, config: Config) -> KeyOut:
    found = find(config, key, key_id)
    revoked = found.model_copy(update={"revoked": True})
    await config.put("key", revoked)
    return KeyOut.of(revoked)


@router.delete("/{key_id}", summary="Delete an API key")
async def delete(key_id: str, key: AdminKey, config: Config) -> Deleted:
    found = find(config, key, key_id)
    await config.delete("key", found.id)
    return Deleted(id=found.id, object="api_key")
