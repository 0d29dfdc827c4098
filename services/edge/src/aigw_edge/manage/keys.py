"""`/v1/keys`: API keys. The secret is shown once, at creation; only its peppered hash is stored."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from aigw_contracts import ApiKey, errors
from aigw_contracts.config import PUBLIC_KEY_DEFAULT_RPM_PER_IP, KeyLimits
from aigw_contracts.ids import uuid7
from aigw_contracts.keys import new_secret

from ..auth import KeyStore
from .access import admin_key, can_see, listed_tenant, not_found, target_tenant
from .schemas import KeyCreated, KeyIn, KeyOut, KeyPatch, ListOf
from .store import ManagedConfig


def router(config: ManagedConfig, keys: KeyStore) -> APIRouter:
    api = APIRouter(prefix="/v1/keys", tags=["keys"])

    def find(key: ApiKey, key_id: str) -> ApiKey:
        found = config.view.keys.get(key_id)
        if found is None or not can_see(key, found.tenant):
            raise not_found("api_key", key_id, "key")
        return found

    @api.post("", status_code=201, summary="Create an API key (the secret is in this answer only)")
    async def create(body: KeyIn, request: Request) -> KeyCreated:
        key = admin_key(request, keys)
        tenant = target_tenant(key, body.tenant)
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

    @api.get("", summary="List API keys (never their secrets)")
    async def list_(request: Request, tenant: str | None = None) -> ListOf:
        key = admin_key(request, keys)
        wanted = listed_tenant(key, tenant)
        rows = [KeyOut.of(k) for k in config.view.keys.values() if wanted is None or k.tenant == wanted]
        return ListOf(data=sorted(rows, key=lambda k: k.id))

    @api.get("/{key_id}", summary="Show an API key")
    async def show(key_id: str, request: Request) -> KeyOut:
        return KeyOut.of(find(admin_key(request, keys), key_id))

    @api.patch("/{key_id}", summary="Rename an API key or change its rate limits (each null: no limit)")
    async def update(key_id: str, body: KeyPatch, request: Request) -> KeyOut:
        found = find(admin_key(request, keys), key_id)
        changes = body.model_dump(exclude_unset=True)
        if changes.get("name", "") is None:
            changes["name"] = ""
        if "limits" in changes:  # the limits given replace those; null clears them all
            given = body.limits.model_dump(exclude_unset=True) if body.limits else None
            changes["limits"] = found.limits.model_copy(update=given) if given is not None else KeyLimits()
        updated = found.model_copy(update=changes)
        await config.put("key", updated)
        return KeyOut.of(updated)

    @api.post("/{key_id}/revoke", summary="Revoke an API key (effective on every replica within a second)")
    async def revoke(key_id: str, request: Request) -> KeyOut:
        found = find(admin_key(request, keys), key_id)
        revoked = found.model_copy(update={"revoked": True})
        await config.put("key", revoked)
        return KeyOut.of(revoked)

    @api.delete("/{key_id}", summary="Delete an API key")
    async def delete(key_id: str, request: Request) -> dict[str, Any]:
        found = find(admin_key(request, keys), key_id)
        await config.delete("key", found.id)
        return {"id": found.id, "object": "api_key", "deleted": True}

    return api
