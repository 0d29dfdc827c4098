"""`/v1/keys`: API keys. The secret is shown once, at creation; only its peppered hash is stored."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request

from aigw_contracts import ApiKey, errors
from aigw_contracts.ids import uuid7
from aigw_contracts.keys import new_secret

from ..auth import KeyStore
from .access import admin_key, can_see, listed_tenant, not_found, target_tenant
from .schemas import KeyCreated, KeyIn, KeyOut, ListOf
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
