"""FastAPI dependencies every route shares: the app's objects, and who is calling.

The app's shared objects (key store, bus; the management API adds its own in
`manage.store` and `manage.upstreams`) live on `app.state`, set once by `create_app`, so routers are
plain module-level `APIRouter`s that any app built by `create_app` can include.

Authentication is a dependency that returns the caller's `ApiKey`. It declares the HTTP bearer
security scheme, which is what gives `/openapi.json` its `securitySchemes` and `/docs` its
Authorize button, but the key is checked from the raw headers by `KeyStore`, exactly as the chat
endpoint checks it (one rule for every route: one `Authorization` header, `Bearer <key>`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from aigw_contracts import ApiKey, errors

from .auth import KeyStore, authorization
from .bus import Bus
from .logs import SCOPE_KEY

bearer = HTTPBearer(
    auto_error=False,  # KeyStore says what is wrong with a key, as OpenAI's 401 body
    scheme_name="ApiKey",
    bearerFormat="aigw_…",
    description="An aigw API key, sent as `Authorization: Bearer aigw_…`.",
)


async def key_store(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.keys
    return keys


async def bus(request: Request) -> Bus:
    found: Bus = request.app.state.bus
    return found


Keys = Annotated[KeyStore, Depends(key_store)]
TheBus = Annotated[Bus, Depends(bus)]


async def api_key(
    request: Request,
    keys: Keys,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> ApiKey:
    """The caller's key, any kind; 401 without a usable one, 400 with several headers."""
    key = keys.authenticate(authorization(request.scope))
    fields = request.scope.get(SCOPE_KEY)  # the access log line's, when access logging is on
    if fields is not None:
        fields.update(tenant=key.tenant, key_id=key.id)
    return key


AnyKey = Annotated[ApiKey, Depends(api_key)]


async def private_key(key: AnyKey) -> ApiKey:
    """A private key (public keys are meant for browsers: they read nothing but completions)."""
    if key.kind == "public":
        raise errors.Forbidden("Public keys cannot use this endpoint; use a private key.")
    return key


async def admin_key(key: AnyKey) -> ApiKey:
    if not (key.admin or key.operator):
        raise errors.Forbidden("This API key cannot use the management API; use an admin key.")
    return key


async def operator_key(key: Annotated[ApiKey, Depends(admin_key)]) -> ApiKey:
    if not key.operator:
        raise errors.Forbidden("Only operator keys can do this.")
    return key


PrivateKey = Annotated[ApiKey, Depends(private_key)]
AdminKey = Annotated[ApiKey, Depends(admin_key)]
OperatorKey = Annotated[ApiKey, Depends(operator_key)]
