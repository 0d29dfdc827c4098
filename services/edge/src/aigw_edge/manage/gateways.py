"""`/v1/gateways`: create, list, show, update, delete, versions, export and import.

Names are unique per tenant and `version` counts a gateway's writes: `ManagedConfig.put_gateway`
keeps both."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from aigw_contracts import ApiKey, ChatCompletionRequest, Gateway, errors
from aigw_contracts.ids import is_uuid, uuid7
from aigw_contracts.knowledge import AVAILABLE_RERANKERS, AVAILABLE_STRATEGIES, GatewayKnowledge

from ..deps import AdminKey
from ..errors import invalid_request
from ..openapi import errors as openapi_errors
from .access import can_see, listed_tenant, not_found, target_tenant
from .schemas import Deleted, GatewayIn, GatewayOut, GatewayPatch, ListOf
from .store import Config, ManagedConfig

EXPORT_FORMAT = "aigw.gateway.v1"


def _check_parameters(parameters: dict[str, Any]) -> None:
    """Gateway parameters obey the same bounds as a request's (temperature 0..2, top_p 0..1, …)."""
    try:
        ChatCompletionRequest(model="check", messages=[{"role": "user", "content": "x"}], **parameters)
    except ValidationError as exc:
        err = invalid_request(exc)
        err.param = f"parameters.{err.param}" if err.param else "parameters"
        raise err from None
    except TypeError as exc:
        raise errors.InvalidRequest(str(exc), param="parameters") from None


def _check_knowledge(config: ManagedConfig, tenant: str, value: Any) -> GatewayKnowledge:
    """The gateway's knowledge, with its collection (named by id or name) resolved to the tenant's
    collection id; another tenant's collection answers exactly like one that does not exist."""
    try:
        knowledge = GatewayKnowledge.model_validate(value)
    except ValidationError as exc:
        err = invalid_request(exc)
        err.param = f"knowledge.{err.param}" if err.param else "knowledge"
        raise err from None
    collection = config.collection(tenant, knowledge.collection)
    if collection is None:
        raise errors.InvalidRequest(
            f"No collection '{knowledge.collection}' is available to you.", param="knowledge.collection"
        )
    if knowledge.strategy not in AVAILABLE_STRATEGIES:
        raise errors.InvalidRequest(
            f"The query strategy '{knowledge.strategy}' is not available yet; use one of "
            f"{', '.join(sorted(AVAILABLE_STRATEGIES))}.",
            param="knowledge.strategy",
        )
    if knowledge.resolver is not None:
        resolver = config.upstream(knowledge.resolver)
        if resolver is None or (resolver.kind == "own" and resolver.tenant != tenant):
            raise errors.InvalidRequest(
                f"No upstream '{knowledge.resolver}' is available to you.", param="knowledge.resolver"
            )
    if knowledge.reranker not in AVAILABLE_RERANKERS:
        raise errors.InvalidRequest(
            f"The reranker '{knowledge.reranker}' is not available; use one of "
            f"{', '.join(sorted(AVAILABLE_RERANKERS))}.",
            param="knowledge.reranker",
        )
    if knowledge.reranker == "model" and knowledge.strategy == "QueryFunction":
        raise errors.InvalidRequest(
            "The model reranker works with the Plain, Concatenate and rewrite strategies; a "
            "QueryFunction gateway searches per tool call: use rrf, lexical or none.",
            param="knowledge.reranker",
        )
    return knowledge.model_copy(update={"collection": collection.id})


def _build(config: ManagedConfig, gateway_id: str, tenant: str, data: dict[str, Any]) -> Gateway:
    upstream = config.upstream(data["upstream"])
    if upstream is None or (upstream.kind == "own" and upstream.tenant != tenant):
        raise errors.InvalidRequest(
            f"No upstream '{data['upstream']}' is available to you.", param="upstream"
        )
    data["fallbacks"] = data.get("fallbacks") or []  # null (in a PATCH) clears the chain
    named = [(f"fallbacks[{i}]", u) for i, u in enumerate(data["fallbacks"])]
    routing = data.get("routing")
    if routing is not None:
        named += [(f"routing.{field}", routing[field]) for field in ("classifier", "low", "medium", "high")]
    for param, upstream_id in named:
        other = config.upstream(upstream_id)
        if other is None or (other.kind == "own" and other.tenant != tenant):
            raise errors.InvalidRequest(f"No upstream '{upstream_id}' is available to you.", param=param)
    _check_parameters(data.get("parameters") or {})
    if data.get("knowledge") is not None:
        data["knowledge"] = _check_knowledge(config, tenant, data["knowledge"])
    try:
        return Gateway(id=gateway_id, tenant=tenant, **data)
    except ValidationError as exc:
        raise invalid_request(exc) from None


router = APIRouter(
    prefix="/v1/gateways", tags=["gateways"], responses=openapi_errors(400, 401, 403, 404, 409)
)


def find(config: ManagedConfig, key: ApiKey, ref: str) -> Gateway:
    """A gateway by id, slug or name; 404 if the key may not see it, 409 for a name two gateways
    share (possible only from before names were unique, or a race between two edges)."""
    if is_uuid(ref):
        gateway = config.view.gateways.get(ref)
    else:
        named = [
            g for g in config.view.gateways.values() if g.tenant == key.tenant and ref in (g.slug, g.name)
        ]
        if len(named) > 1:
            raise errors.Conflict(
                f"{len(named)} gateways are named '{ref}': "
                f"{', '.join(sorted(g.slug for g in named))}; name one by its slug or id.",
                param="gateway",
            )
        gateway = named[0] if named else None
    if gateway is None or not can_see(key, gateway.tenant):
        raise not_found("gateway", ref, "gateway")
    return gateway


@router.post("", status_code=201, summary="Create a gateway (names are unique per tenant)")
async def create(body: GatewayIn, key: AdminKey, config: Config) -> GatewayOut:
    tenant = target_tenant(key, body.tenant, config)
    gateway = _build(config, uuid7(), tenant, body.model_dump(exclude={"tenant"}))
    return GatewayOut.of(await config.put_gateway(gateway))


@router.get("", summary="List gateways")
async def list_(key: AdminKey, config: Config, tenant: str | None = None) -> ListOf[GatewayOut]:
    wanted = listed_tenant(key, tenant, config)
    rows = [GatewayOut.of(g) for g in config.view.gateways.values() if wanted is None or g.tenant == wanted]
    return ListOf[GatewayOut](data=sorted(rows, key=lambda g: g.id))


@router.get("/{ref}", summary="Show a gateway (by id, slug or name)")
async def show(ref: str, key: AdminKey, config: Config) -> GatewayOut:
    return GatewayOut.of(find(config, key, ref))


@router.patch("/{ref}", summary="Change some fields of a gateway (its version goes up by one)")
async def update(ref: str, body: GatewayPatch, key: AdminKey, config: Config) -> GatewayOut:
    current = find(config, key, ref)
    revision = config.revision("gateway", current.id)
    data = current.model_dump(exclude={"id", "tenant", "version"})
    data.update(body.model_dump(exclude_unset=True))
    gateway = _build(config, current.id, current.tenant, data)
    return GatewayOut.of(await config.put_gateway(gateway, replaces=current, revision=revision))


@router.delete("/{ref}", summary="Delete a gateway")
async def delete(ref: str, key: AdminKey, config: Config) -> Deleted:
    gateway = find(config, key, ref)
    await config.delete("gateway", gateway.id)
    return Deleted(id=gateway.id, object="gateway")


@router.get("/{ref}/versions", summary="Earlier versions of a gateway, oldest first")
async def versions(ref: str, key: AdminKey, config: Config) -> ListOf[GatewayOut]:
    gateway = find(config, key, ref)
    history = await config.writer.history("gateway", gateway.id)
    return ListOf[GatewayOut](data=[GatewayOut.of(g) for _, g in history if isinstance(g, Gateway)])


@router.get("/{ref}/export", summary="Export a gateway as portable JSON")
async def export(ref: str, key: AdminKey, config: Config) -> dict[str, Any]:
    gateway = find(config, key, ref)
    return {"format": EXPORT_FORMAT, **gateway.model_dump(exclude={"id", "tenant", "version"})}


@router.post("/import", status_code=201, summary="Create a gateway from exported JSON")
async def import_(body: dict[str, Any], key: AdminKey, config: Config) -> GatewayOut:
    if body.pop("format", None) != EXPORT_FORMAT:
        raise errors.InvalidRequest(
            f"not an aigw gateway export (format must be {EXPORT_FORMAT})", param="format"
        )
    try:
        parsed = GatewayIn.model_validate(body)
    except ValidationError as exc:
        raise invalid_request(exc) from None
    return await create(parsed, key, config)
