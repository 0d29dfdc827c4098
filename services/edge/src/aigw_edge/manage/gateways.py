"""`/v1/gateways`: create, list, show, update, delete, versions, export and import."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from aigw_contracts import ApiKey, ChatCompletionRequest, Gateway, errors
from aigw_contracts.ids import is_uuid, uuid7
from aigw_contracts.knowledge import AVAILABLE_RERANKERS, AVAILABLE_STRATEGIES, GatewayKnowledge

from ..auth import KeyStore
from ..errors import invalid_request
from .access import admin_key, can_see, listed_tenant, not_found, target_tenant
from .schemas import GatewayIn, GatewayOut, GatewayPatch, ListOf
from .store import ManagedConfig

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


def router(config: ManagedConfig, keys: KeyStore) -> APIRouter:
    api = APIRouter(prefix="/v1/gateways", tags=["gateways"])

    def find(key: ApiKey, ref: str) -> Gateway:
        if is_uuid(ref):
            gateway = config.view.gateways.get(ref)
        else:
            gateway = next(
                (
                    g
                    for g in config.view.gateways.values()
                    if g.tenant == key.tenant and ref in (g.slug, g.name)
                ),
                None,
            )
        if gateway is None or not can_see(key, gateway.tenant):
            raise not_found("gateway", ref, "gateway")
        return gateway

    def out(gateway: Gateway) -> GatewayOut:
        return GatewayOut.of(gateway, config.revision("gateway", gateway.id))

    @api.post("", status_code=201, summary="Create a gateway")
    async def create(body: GatewayIn, request: Request) -> GatewayOut:
        key = admin_key(request, keys)
        tenant = target_tenant(key, body.tenant)
        gateway = _build(config, uuid7(), tenant, body.model_dump(exclude={"tenant"}))
        await config.put("gateway", gateway, expect_revision=0)
        return out(gateway)

    @api.get("", summary="List gateways")
    async def list_(request: Request, tenant: str | None = None) -> ListOf:
        key = admin_key(request, keys)
        wanted = listed_tenant(key, tenant)
        rows = [out(g) for g in config.view.gateways.values() if wanted is None or g.tenant == wanted]
        return ListOf(data=sorted(rows, key=lambda g: g.id))

    @api.get("/{ref}", summary="Show a gateway (by id, slug or name)")
    async def show(ref: str, request: Request) -> GatewayOut:
        return out(find(admin_key(request, keys), ref))

    @api.patch("/{ref}", summary="Change some fields of a gateway")
    async def update(ref: str, body: GatewayPatch, request: Request) -> GatewayOut:
        key = admin_key(request, keys)
        current = find(key, ref)
        revision = config.revision("gateway", current.id)
        data = current.model_dump(exclude={"id", "tenant"})
        data.update(body.model_dump(exclude_unset=True))
        gateway = _build(config, current.id, current.tenant, data)
        await config.put("gateway", gateway, expect_revision=revision or None)
        return out(gateway)

    @api.delete("/{ref}", summary="Delete a gateway")
    async def delete(ref: str, request: Request) -> dict[str, Any]:
        gateway = find(admin_key(request, keys), ref)
        await config.delete("gateway", gateway.id)
        return {"id": gateway.id, "object": "gateway", "deleted": True}

    @api.get("/{ref}/versions", summary="Earlier versions of a gateway, oldest first")
    async def versions(ref: str, request: Request) -> ListOf:
        gateway = find(admin_key(request, keys), ref)
        history = await config.writer.history("gateway", gateway.id)
        return ListOf(
            data=[GatewayOut.of(g, rev) for rev, g in history if isinstance(g, Gateway)],
        )

    @api.get("/{ref}/export", summary="Export a gateway as portable JSON")
    async def export(ref: str, request: Request) -> dict[str, Any]:
        gateway = find(admin_key(request, keys), ref)
        return {"format": EXPORT_FORMAT, **gateway.model_dump(exclude={"id", "tenant"})}

    @api.post("/import", status_code=201, summary="Create a gateway from exported JSON")
    async def import_(body: dict[str, Any], request: Request) -> GatewayOut:
        if body.pop("format", None) != EXPORT_FORMAT:
            raise errors.InvalidRequest(
                f"not an aigw gateway export (format must be {EXPORT_FORMAT})", param="format"
            )
        try:
            parsed = GatewayIn.model_validate(body)
        except ValidationError as exc:
            raise invalid_request(exc) from None
        return await create(parsed, request)

    return api
