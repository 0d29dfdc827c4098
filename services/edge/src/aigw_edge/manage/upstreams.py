"""`/v1/upstreams`: catalog models (operators) and tenants' own OpenAI-compatible endpoints."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from aigw_contracts import ApiKey, Upstream, errors
from aigw_contracts.config import deployment_names
from aigw_contracts.ids import uuid7
from aigw_runtime.netguard import Network, check_url
from aigw_runtime.secretbox import seal

from ..deps import AdminKey
from ..errors import invalid_request
from ..openapi import errors as openapi_errors
from .access import can_see, in_use, not_found, target_tenant
from .schemas import Deleted, ListOf, UpstreamIn, UpstreamOut, UpstreamPatch
from .store import Config, ManagedConfig


class UpstreamRules:
    """What an own endpoint must satisfy: a public address (SSRF) and a key we can encrypt."""

    def __init__(self, allowlist: list[Network], secrets_key: str | None) -> None:
        self.allowlist = allowlist
        self.secrets_key = secrets_key

    async def check_base_url(self, url: str) -> None:
        await asyncio.to_thread(check_url, url, self.allowlist)  # DNS resolution blocks

    def seal(self, api_key: str) -> str:
        if not self.secrets_key:
            raise errors.Unavailable(
                "the operator has not set AIGW_SECRETS_KEY, so API keys cannot be stored"
            )
        return seal(api_key, self.secrets_key)


async def upstream_rules(request: Request) -> UpstreamRules:
    """The app's `UpstreamRules` (`create_app` puts them on `app.state`)."""
    rules: UpstreamRules = request.app.state.upstream_rules
    return rules


Rules = Annotated[UpstreamRules, Depends(upstream_rules)]

router = APIRouter(
    prefix="/v1/upstreams", tags=["upstreams"], responses=openapi_errors(400, 401, 403, 404, 409)
)


def find(config: ManagedConfig, key: ApiKey, upstream_id: str) -> Upstream:
    upstream = config.upstream(upstream_id)
    if upstream is None or (upstream.kind == "own" and not can_see(key, upstream.tenant)):
        raise not_found("upstream", upstream_id, "upstream")
    return upstream


def must_manage(key: ApiKey, upstream: Upstream) -> None:
    if upstream.kind == "catalog" and not key.operator:
        raise errors.Forbidden("Only operator keys can change catalog models.")


async def build(
    rules: UpstreamRules,
    data: dict[str, Any],
    upstream_id: str,
    tenant: str | None,
    current: Upstream | None = None,
) -> Upstream:
    """The upstream to store: own endpoints' URLs checked (SSRF), API keys sealed. Keys not given
    again in an update are kept: the upstream's, and each deployment's (by name)."""
    own = data["kind"] == "own"
    if own:
        await rules.check_base_url(data["base_url"])
        data["prices"] = {}  # own endpoints bill tokens at 0; the tenant pays their provider
    secret = data.pop("api_key", None)
    if secret:
        data["api_key"] = rules.seal(secret)
    elif current is not None and current.api_key:
        data["api_key"] = current.api_key  # keep the sealed key
    kept = (
        dict(zip(deployment_names(current.deployments), current.deployments, strict=True)) if current else {}
    )
    deployments = []
    for i, deployment in enumerate(data.pop("deployments", None) or []):
        if own and deployment.get("base_url"):
            await rules.check_base_url(deployment["base_url"])
        key = deployment.pop("api_key", None)
        if key:
            deployment["api_key"] = rules.seal(key)
        else:
            previous = kept.get(deployment.get("name") or str(i))
            deployment["api_key"] = previous.api_key if previous is not None else None
        deployments.append(deployment)
    try:
        return Upstream(id=upstream_id, tenant=tenant if own else None, deployments=deployments, **data)
    except ValidationError as exc:
        raise invalid_request(exc) from None


_FROM_CATALOG = ("provider", "model", "base_url", "api", "context_window", "modalities", "parameters")


def from_catalog(config: ManagedConfig, data: dict[str, Any], catalog_id: str, given: set[str]) -> None:
    """Fill `data` (an own endpoint) from a catalog model, for a tenant bringing its own key for
    that provider: what the tenant sets itself wins, prices never come along (own endpoints bill
    tokens at 0: the tenant pays the provider)."""
    entry = config.upstream(catalog_id)
    if entry is None or entry.kind != "catalog":
        raise errors.InvalidRequest(f"'{catalog_id}' is not a catalog model", param="from_catalog")
    if not data.get("api_key"):
        raise errors.InvalidRequest(
            "bringing your own key for a catalog model needs 'api_key'", param="api_key"
        )
    for name in _FROM_CATALOG:
        if name not in given or data.get(name) is None:
            data[name] = getattr(entry, name)
    if not data.get("description"):
        data["description"] = f"{catalog_id} with the tenant's own key"


@router.post("", status_code=201, summary="Add an upstream (own endpoint, or a catalog model for operators)")
async def create(body: UpstreamIn, key: AdminKey, config: Config, rules: Rules) -> UpstreamOut:
    data = body.model_dump(exclude={"id", "tenant", "from_catalog"})
    if body.from_catalog is not None:
        from_catalog(config, data, body.from_catalog, body.model_fields_set)
    if body.kind == "catalog":
        if not key.operator:
            raise errors.Forbidden("Only operator keys can add catalog models.", param="kind")
        if not body.id or not body.id.startswith("@"):
            raise errors.InvalidRequest("catalog ids look like '@provider/model'", param="id")
        upstream_id, tenant = body.id, None
    else:
        upstream_id, tenant = uuid7(), target_tenant(key, body.tenant, config)
    upstream = await build(rules, data, upstream_id, tenant)
    await config.put("upstream", upstream, expect_revision=0)
    return UpstreamOut.of(upstream)


@router.get("", summary="List upstreams: the catalog and your own endpoints")
async def list_(key: AdminKey, config: Config) -> ListOf[UpstreamOut]:
    rows = [UpstreamOut.of(u) for u in config.upstreams() if u.kind == "catalog" or can_see(key, u.tenant)]
    return ListOf[UpstreamOut](data=sorted(rows, key=lambda u: (u.kind, u.id)))


@router.get("/{upstream_id:path}", summary="Show an upstream")
async def show(upstream_id: str, key: AdminKey, config: Config) -> UpstreamOut:
    return UpstreamOut.of(find(config, key, upstream_id))


@router.patch("/{upstream_id:path}", summary="Change an upstream")
async def update(
    upstream_id: str, body: UpstreamPatch, key: AdminKey, config: Config, rules: Rules
) -> UpstreamOut:
    current = find(config, key, upstream_id)
    must_manage(key, current)
    data = current.model_dump(exclude={"id", "tenant", "api_key", "deployments"})
    data["deployments"] = [d.model_dump(exclude={"api_key"}) for d in current.deployments]
    data.update(body.model_dump(exclude_unset=True))
    upstream = await build(rules, data, current.id, current.tenant, current)
    await config.put("upstream", upstream)
    return UpstreamOut.of(upstream)


@router.delete("/{upstream_id:path}", summary="Delete an upstream no gateway uses")
async def delete(upstream_id: str, key: AdminKey, config: Config) -> Deleted:
    upstream = find(config, key, upstream_id)
    must_manage(key, upstream)
    users = config.gateways_using(upstream.id)
    if users:
        raise in_use(f"upstream '{upstream.id}'", users, "point them at another upstream first", "upstream")
    if upstream.id not in config.view.upstreams:
        raise errors.InvalidRequest("built-in catalog models cannot be deleted", param="upstream")
    await config.delete("upstream", upstream.id)
    return Deleted(id=upstream.id, object="upstream")
