"""`/v1/collections`: knowledge collections, their documents, and direct search.

A collection's metadata is configuration (the config store, like gateways); its documents live in
the retrieval service's knowledge store, which the edge asks over NATS (`KnowledgeRequest` on
`RETRIEVAL_MANAGE`). The tenant and the collection always come from the caller's key and the path,
never from the body. Admin keys write; any private key may read and search its tenant's
collections; another tenant's collection answers 404, exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from aigw_contracts import ApiKey, errors, subjects
from aigw_contracts.ids import is_uuid, uuid7
from aigw_contracts.knowledge import Collection, KnowledgeDocument, KnowledgeRequest, KnowledgeSearch
from aigw_runtime import bus as runtime_bus

from ..auth import KeyStore, header
from ..bus import Bus
from ..errors import invalid_request
from .access import admin_key, can_see, in_use, listed_tenant, not_found, target_tenant
from .schemas import CollectionIn, CollectionOut, DocumentsIn, ListOf
from .store import ManagedConfig

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


def _json(data: bytes, status: int = 200) -> Response:
    return Response(data, status_code=status, media_type="application/json")


def reader_key(request: Request, keys: KeyStore) -> ApiKey:
    key = keys.authenticate(header(request.scope, b"authorization"))
    if key.kind == "public":
        raise errors.Forbidden("Public keys cannot read knowledge collections; use a private key.")
    return key


def _documents(body: Any) -> list[KnowledgeDocument]:
    """One document, or `{"documents": [...]}`."""
    try:
        if isinstance(body, dict) and "documents" in body:
            return DocumentsIn.model_validate(body).documents
        return [KnowledgeDocument.model_validate(body)]
    except ValidationError as exc:
        raise invalid_request(exc) from None


def router(config: ManagedConfig, keys: KeyStore, bus: Bus) -> APIRouter:
    api = APIRouter(prefix="/v1/collections", tags=["knowledge"])
    retrieval = KnowledgeClient(bus)

    def find(key: ApiKey, ref: str) -> Collection:
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

    def out(collection: Collection) -> CollectionOut:
        return CollectionOut.of(
            collection, sorted(g.slug for g in config.gateways_grounded_on(collection.id))
        )

    def ask(key: ApiKey, collection: Collection, **fields: Any) -> KnowledgeRequest:
        return KnowledgeRequest(tenant=collection.tenant, collection=collection.id, key_id=key.id, **fields)

    # ------------------------------------------------------------------ collections
    @api.post("", status_code=201, summary="Create a knowledge collection")
    async def create(body: CollectionIn, request: Request) -> CollectionOut:
        key = admin_key(request, keys)
        tenant = target_tenant(key, body.tenant)
        if any(c.tenant == tenant and c.name == body.name for c in config.view.collections.values()):
            raise errors.Conflict(f"You already have a collection named '{body.name}'.", param="name")
        collection = Collection(id=uuid7(), tenant=tenant, name=body.name, description=body.description)
        await config.put("collection", collection, expect_revision=0)
        return out(collection)

    @api.get("", summary="List collections")
    async def list_(request: Request, tenant: str | None = None) -> ListOf:
        key = reader_key(request, keys)
        wanted = listed_tenant(key, tenant)
        rows = [out(c) for c in config.view.collections.values() if wanted is None or c.tenant == wanted]
        return ListOf(data=sorted(rows, key=lambda c: c.id))

    @api.get("/{ref}", summary="Show a collection (by id or name)")
    async def show(ref: str, request: Request) -> CollectionOut:
        return out(find(reader_key(request, keys), ref))

    @api.delete("/{ref}", summary="Delete a collection and its documents (no gateway may use it)")
    async def delete(ref: str, request: Request) -> dict[str, Any]:
        key = admin_key(request, keys)
        collection = find(key, ref)
        users = config.gateways_grounded_on(collection.id)
        if users:
            raise in_use(
                f"collection '{collection.name}'", users, "remove their knowledge first", "collection"
            )
        # Documents first: if the retrieval service is down, the collection stays and can be retried.
        await retrieval.ask(ask(key, collection, op="drop"), WRITE_TIMEOUT)
        await config.delete("collection", collection.id)
        return {"id": collection.id, "object": "collection", "deleted": True}

    # ------------------------------------------------------------------ documents
    @api.post("/{ref}/documents", summary='Add or update documents: one, or {"documents": [...]}')
    async def add(ref: str, body: dict[str, Any], request: Request) -> Response:
        key = admin_key(request, keys)
        collection = find(key, ref)
        documents = _documents(body)
        return _json(
            await retrieval.ask(ask(key, collection, op="upsert", documents=documents), WRITE_TIMEOUT)
        )

    @api.post(
        "/{ref}/documents:import",
        summary="Import JSON Lines (one document per line); unchanged documents cost nothing",
        openapi_extra={
            "requestBody": {
                "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                "required": True,
            }
        },
    )
    async def import_(ref: str, request: Request) -> Response:
        key = admin_key(request, keys)
        collection = find(key, ref)
        try:
            text = (await request.body()).decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidRequest("JSON Lines must be UTF-8 text.") from None
        if not text.strip():
            raise errors.InvalidRequest("The import is empty: send one JSON document per line.")
        return _json(await retrieval.ask(ask(key, collection, op="import", jsonl=text), WRITE_TIMEOUT))

    @api.get("/{ref}/documents", summary="List a collection's documents")
    async def documents(
        ref: str,
        request: Request,
        offset: int = Query(default=0, ge=0),
        limit: int = Query(default=100, ge=1, le=1000),
    ) -> Response:
        key = reader_key(request, keys)
        collection = find(key, ref)
        return _json(await retrieval.ask(ask(key, collection, op="list", offset=offset, limit=limit)))

    @api.get("/{ref}/documents/{docid:path}", summary="Show a document's metadata")
    async def document(ref: str, docid: str, request: Request) -> Response:
        key = reader_key(request, keys)
        collection = find(key, ref)
        return _json(await retrieval.ask(ask(key, collection, op="get", docid=docid)))

    @api.delete("/{ref}/documents/{docid:path}", summary="Delete a document")
    async def delete_document(ref: str, docid: str, request: Request) -> Response:
        key = admin_key(request, keys)
        collection = find(key, ref)
        return _json(await retrieval.ask(ask(key, collection, op="delete", docid=docid), WRITE_TIMEOUT))

    # ------------------------------------------------------------------ search
    @api.post("/{ref}/search", summary="Search a collection (top, minScore, reranker, includeReferences)")
    async def search(ref: str, body: KnowledgeSearch, request: Request) -> Response:
        key = reader_key(request, keys)
        collection = find(key, ref)
        return _json(await retrieval.ask(ask(key, collection, op="search", search=body)))

    return api
