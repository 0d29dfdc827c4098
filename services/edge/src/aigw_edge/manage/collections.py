"""`/v1/collections`: knowledge collections, their documents, and direct search.

A collection's metadata is configuration (the config store, like gateways); its documents live in
the retrieval service's knowledge store, which the edge asks over NATS (`KnowledgeRequest` on
`RETRIEVAL_MANAGE`). The tenant and the collection always come from the caller's key and the path,
never from the body. Admin keys write; any private key may read and search its tenant's
collections; another tenant's collection answers 404, exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from aigw_contracts import ApiKey, errors, subjects
from aigw_contracts.config import TenantLimits
from aigw_contracts.ids import is_uuid, uuid7
from aigw_contracts.knowledge import Collection, KnowledgeDocument, KnowledgeRequest, KnowledgeSearch
from aigw_runtime import bus as runtime_bus

from ..bus import Bus
from ..deps import AdminKey, PrivateKey, TheBus
from ..errors import invalid_request
from ..openapi import errors as openapi_errors
from ..ratelimit import SharedLimits, Taken
from .access import can_see, in_use, listed_tenant, not_found, target_tenant
from .schemas import CollectionIn, CollectionOut, Deleted, DocumentsIn, ListOf
from .store import Config, ManagedConfig

# Reads and searches answer in milliseconds; writes embed every new chunk first (the bundled local
# model reads a few thousand tokens per second per core), so a batch may take a while.
READ_TIMEOUT = 30.0
WRITE_TIMEOUT = 300.0


class KnowledgeClient:
    """Asks the retrieval service; its error replies (an `Aigw-Status` header) are raised as such."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def ask(self, request: KnowledgeRequest, wait: float = READ_TIMEOUT) -> bytes:
        nc = self.bus.nc
        if nc is None or not nc.is_connected:
            raise errors.Unavailable("The gateway is not connected to its message bus; try again shortly")
        payload = request.model_dump_json(by_alias=True, exclude_defaults=True).encode()
        if len(payload) > nc.max_payload:
            raise errors.PayloadTooLarge(
                f"This batch is {len(payload)} bytes, over the message bus limit of {nc.max_payload}: "
                "send the documents in smaller batches (the CLI's `aigw doc import` does).",
            )
        reply = await runtime_bus.request(
            nc, subjects.RETRIEVAL_MANAGE, payload, wait, "retrieval service", "answer this knowledge request"
        )
        return reply.data


def _json(data: bytes, status: int = 200, taken: Taken | None = None) -> Response:
    headers = {k.decode(): v.decode() for k, v in taken.headers} if taken is not None else None
    return Response(data, status_code=status, media_type="application/json", headers=headers)


async def plan_limits(request: Request) -> SharedLimits | None:
    limits: SharedLimits | None = getattr(request.app.state, "limits", None)
    return limits


Limits = Annotated[SharedLimits | None, Depends(plan_limits)]


def tenant_limits(config: ManagedConfig, tenant: str) -> TenantLimits | None:
    found = config.view.tenants.get(tenant)
    return found.limits if found is not None else None


async def counted(limits: SharedLimits | None, taken: Taken, asking: Awaitable[bytes]) -> Response:
    """Ask the retrieval service; what was drawn from the plan goes back unless it answers."""
    try:
        data = await asking
    except BaseException:
        if limits is not None:
            limits.give_back(taken)
        raise
    return _json(data, taken=taken)


def _documents(body: Any) -> list[KnowledgeDocument]:
    """One document, or `{"documents": [...]}`."""
    try:
        if isinstance(body, dict) and "documents" in body:
            return DocumentsIn.model_validate(body).documents
        return [KnowledgeDocument.model_validate(body)]
    except ValidationError as exc:
        raise invalid_request(exc) from None


async def knowledge_client(bus: TheBus) -> KnowledgeClient:
    return KnowledgeClient(bus)


Retrieval = Annotated[KnowledgeClient, Depends(knowledge_client)]

router = APIRouter(
    prefix="/v1/collections", tags=["knowledge"], responses=openapi_errors(400, 401, 403, 404, 409, 503, 504)
)


def find(config: ManagedConfig, key: ApiKey, ref: str) -> Collection:
    if is_uuid(ref):
        found = config.view.collections.get(ref)
    else:
        found = next(
            (c for c in config.view.collections.values() if c.tenant == key.tenant and c.name == ref),
            None,
        )
    if found is None or not can_see(key, found.tenant):
        raise not_found("collection", ref, "collection")
    return found


def out(config: ManagedConfig, collection: Collection) -> CollectionOut:
    return CollectionOut.of(collection, sorted(g.slug for g in config.gateways_grounded_on(collection.id)))


def ask(key: ApiKey, collection: Collection, **fields: Any) -> KnowledgeRequest:
    return KnowledgeRequest(tenant=collection.tenant, collection=collection.id, key_id=key.id, **fields)


# ---------------------------------------------------------------------- collections
@router.post("", status_code=201, summary="Create a knowledge collection")
async def create(body: CollectionIn, key: AdminKey, config: Config, limits: Limits) -> CollectionOut:
    tenant = target_tenant(key, body.tenant, config)
    if any(c.tenant == tenant and c.name == body.name for c in config.view.collections.values()):
        raise errors.Conflict(f"You already have a collection named '{body.name}'.", param="name")
    collection = Collection(id=uuid7(), tenant=tenant, name=body.name, description=body.description)
    if limits is not None:  # the tenant's cap on collections, counted across every replica
        existing = {c.id for c in config.view.collections.values() if c.tenant == tenant}
        await limits.claim_collection(tenant, tenant_limits(config, tenant), collection.id, existing)
    await config.put("collection", collection, expect_revision=0)
    return out(config, collection)


@router.get("", summary="List collections")
async def list_(key: PrivateKey, config: Config, tenant: str | None = None) -> ListOf[CollectionOut]:
    wanted = listed_tenant(key, tenant, config)
    rows = [out(config, c) for c in config.view.collections.values() if wanted is None or c.tenant == wanted]
    return ListOf[CollectionOut](data=sorted(rows, key=lambda c: c.id))


@router.get("/{ref}", summary="Show a collection (by id or name)")
async def show(ref: str, key: PrivateKey, config: Config) -> CollectionOut:
    return out(config, find(config, key, ref))


@router.delete("/{ref}", summary="Delete a collection and its documents (no gateway may use it)")
async def delete(ref: str, key: AdminKey, config: Config, retrieval: Retrieval) -> Deleted:
    collection = find(config, key, ref)
    users = config.gateways_grounded_on(collection.id)
    if users:
        raise in_use(f"collection '{collection.name}'", users, "remove their knowledge first", "collection")
    # Documents first: if the retrieval service is down, the collection stays and can be retried.
    await retrieval.ask(ask(key, collection, op="drop"), WRITE_TIMEOUT)
    await config.delete("collection", collection.id)
    return Deleted(id=collection.id, object="collection")


# ---------------------------------------------------------------------- documents
@router.post("/{ref}/documents", summary='Add or update documents: one, or {"documents": [...]}')
async def add(
    ref: str, body: dict[str, Any], key: AdminKey, config: Config, retrieval: Retrieval, limits: Limits
) -> Response:
    collection = find(config, key, ref)
    documents = _documents(body)
    taken = await _insertions(limits, config, collection, len(documents))
    return await counted(
        limits, taken, retrieval.ask(ask(key, collection, op="upsert", documents=documents), WRITE_TIMEOUT)
    )


async def _insertions(
    limits: SharedLimits | None, config: ManagedConfig, collection: Collection, count: int
) -> Taken:
    """Count `count` document insertions against the tenant's documents per day."""
    if limits is None:
        return Taken()
    return await limits.admit_documents(collection.tenant, tenant_limits(config, collection.tenant), count)


@router.post(
    "/{ref}/documents:import",
    summary="Import JSON Lines (one document per line); unchanged documents cost nothing",
    openapi_extra={
        "requestBody": {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "required": True,
        }
    },
)
async def import_(
    ref: str, request: Request, key: AdminKey, config: Config, retrieval: Retrieval, limits: Limits
) -> Response:
    collection = find(config, key, ref)
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("JSON Lines must be UTF-8 text.") from None
    if not text.strip():
        raise errors.InvalidRequest("The import is empty: send one JSON document per line.")
    lines = sum(1 for line in text.splitlines() if line.strip())  # one document a line
    taken = await _insertions(limits, config, collection, lines)
    return await counted(
        limits, taken, retrieval.ask(ask(key, collection, op="import", jsonl=text), WRITE_TIMEOUT)
    )


@router.get("/{ref}/documents", summary="List a collection's documents")
async def documents(
    ref: str,
    key: PrivateKey,
    config: Config,
    retrieval: Retrieval,
    offset: int = Query(default=0, ge=0),
    limit: int = Query(default=100, ge=1, le=1000),
) -> Response:
    collection = find(config, key, ref)
    return _json(await retrieval.ask(ask(key, collection, op="list", offset=offset, limit=limit)))


@router.get("/{ref}/documents/{docid:path}", summary="Show a document's metadata")
async def document(ref: str, docid: str, key: PrivateKey, config: Config, retrieval: Retrieval) -> Response:
    collection = find(config, key, ref)
    return _json(await retrieval.ask(ask(key, collection, op="get", docid=docid)))


@router.delete("/{ref}/documents/{docid:path}", summary="Delete a document")
async def delete_document(
    ref: str, docid: str, key: AdminKey, config: Config, retrieval: Retrieval
) -> Response:
    collection = find(config, key, ref)
    return _json(await retrieval.ask(ask(key, collection, op="delete", docid=docid), WRITE_TIMEOUT))


# ---------------------------------------------------------------------- search
@router.post("/{ref}/search", summary="Search a collection (top, minScore, reranker, includeReferences)")
async def search(
    ref: str, body: KnowledgeSearch, key: PrivateKey, config: Config, retrieval: Retrieval, limits: Limits
) -> Response:
    collection = find(config, key, ref)
    taken = Taken()
    if limits is not None:
        taken = await limits.admit_search(collection.tenant, tenant_limits(config, collection.tenant))
    return await counted(limits, taken, retrieval.ask(ask(key, collection, op="search", search=body)))
