"""The production knowledge store: Weaviate (weaviate-client v4, async), hybrid vector + keyword search.

Schema (created on `connect()` when missing), every class multi-tenant:

* `AigwChunk` — one object per chunk: text, heading path, docid, position, content hash, the
  document's title/__ref/__tags/__meta (copied so a hit needs no second read) and its vector
  (self-provided, HNSW, cosine);
* `AigwDocument` — one per document: hashes and metadata (what re-ingesting it must do);
* `AigwCollection` — one per collection: embedder and dimension.

Isolation: one Weaviate tenant per aigw tenant, so each tenant's objects live in shards of their own
and every query names the tenant; the collection is a filter inside the same query.

Hybrid search is Weaviate's own (`fusion_type=RANKED`: reciprocal rank fusion, like the embedded
store) with the vectors returned, so the cosine floor (`minScore`) is checked here exactly as the
embedded store checks it. Chunk UUIDs derive from (collection, docid, content hash, position): writing
a document twice writes the same objects, which is what makes an interrupted import safe to re-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import re
from typing import Any

import numpy as np
import weaviate
from weaviate.classes.config import Configure, DataType, Property, Tokenization, VectorDistances
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.classes.tenants import Tenant
from weaviate.util import generate_uuid5

from ..fusion import RRF_K
from ._base import (
    ChunkRecord,
    CollectionExists,
    CollectionNotFound,
    DocumentInfo,
    Scope,
    StoredChunk,
    StoreHit,
    StoreQuery,
)

CHUNKS = "AigwChunk"
DOCUMENTS = "AigwDocument"
COLLECTIONS = "AigwCollection"
_TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def weaviate_tenant(tenant: str) -> str:
    """Weaviate tenant names allow [A-Za-z0-9_-]{1,64}; any other aigw tenant id maps to a digest."""
    if _TENANT_NAME.match(tenant):
        return tenant
    return "h-" + hashlib.sha256(tenant.encode()).hexdigest()[:40]


def _text(name: str, *, searchable: bool = False) -> Property:
    return Property(
        name=name,
        data_type=DataType.TEXT,
        index_searchable=searchable,
        index_filterable=True,
        tokenization=Tokenization.WORD if searchable else Tokenization.FIELD,
    )


class WeaviateStore:
    def __init__(self, client: weaviate.WeaviateAsyncClient, *, write_batch: int = 200) -> None:
        self._client = client
        self._write_batch = write_batch
        self._known_tenants: set[str] = set()

    @classmethod
    async def connect(
        cls, host: str = "localhost", port: int = 8080, grpc_port: int = 50051
    ) -> WeaviateStore:
        client = weaviate.use_async_with_local(host=host, port=port, grpc_port=grpc_port)
        await client.connect()
        store = cls(client)
        await store.ensure_schema()
        return store

    async def ensure_schema(self) -> None:
        mt = Configure.multi_tenancy(enabled=True, auto_tenant_creation=True, auto_tenant_activation=True)
        if not await self._client.collections.exists(CHUNKS):
            await self._client.collections.create(
                CHUNKS,
                multi_tenancy_config=mt,
                vector_config=Configure.Vectors.self_provided(
                    vector_index_config=Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
                ),
                properties=[
                    _text("collection"),
                    _text("docid"),
                    _text("content_hash"),
                    Property(name="position", data_type=DataType.INT),
                    _text("text", searchable=True),
                    Property(name="headings", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.WORD),
                    _text("title"),
                    _text("ref"),
                    Property(name="tags", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
                    Property(
                        name="meta", data_type=DataType.TEXT, index_searchable=False, index_filterable=False
                    ),
                ],
            )
        if not await self._client.collections.exists(DOCUMENTS):
            await self._client.collections.create(
                DOCUMENTS,
                multi_tenancy_config=mt,
                vector_config=Configure.Vectors.self_provided(),
                properties=[
                    _text("collection"),
                    _text("docid"),
                    _text("content_hash"),
                    _text("meta_hash"),
                    _text("title"),
                    _text("ref"),
                    Property(name="tags", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
                    Property(
                        name="meta", data_type=DataType.TEXT, index_searchable=False, index_filterable=False
                    ),
                    Property(name="chunks", data_type=DataType.INT),
                ],
            )
        if not await self._client.collections.exists(COLLECTIONS):
            await self._client.collections.create(
                COLLECTIONS,
                multi_tenancy_config=mt,
                vector_config=Configure.Vectors.self_provided(),
                properties=[_text("name"), _text("embedder"), Property(name="dim", data_type=DataType.INT)],
            )

    # ------------------------------------------------------------------ helpers

    def _use(self, name: str, tenant: str) -> Any:
        return self._client.collections.use(name).with_tenant(weaviate_tenant(tenant))

    async def _ensure_tenant(self, tenant: str) -> None:
        name = weaviate_tenant(tenant)
        if name in self._known_tenants:
            return
        for cls in (CHUNKS, DOCUMENTS, COLLECTIONS):
            collection = self._client.collections.use(cls)
            if not await collection.tenants.exists(name):
                await collection.tenants.create([Tenant(name=name)])
        self._known_tenants.add(name)

    async def _collection_obj(self, scope: Scope) -> Any | None:
        await self._ensure_tenant(scope.tenant)
        result = await self._use(COLLECTIONS, scope.tenant).query.fetch_objects(
            filters=Filter.by_property("name").equal(scope.collection), limit=1
        )
        return result.objects[0] if result.objects else None

    async def _require(self, scope: Scope) -> None:
        if await self._collection_obj(scope) is None:
            raise CollectionNotFound(f"collection '{scope.collection}' not found")

    def _in_collection(self, scope: Scope) -> Any:
        return Filter.by_property("collection").equal(scope.collection)

    @staticmethod
    def _check(result: Any) -> None:
        if result.has_errors:
            first = next(iter(result.errors.values()))
            raise RuntimeError(f"weaviate refused {len(result.errors)} objects: {first.message}")

    @staticmethod
    def _doc_uuid(scope: Scope, docid: str) -> str:
        return str(generate_uuid5(f"{scope.collection}\x00{docid}"))

    # ------------------------------------------------------------------ collections

    async def create_collection(self, scope: Scope, embedder: str, dim: int) -> None:
        if await self._collection_obj(scope) is not None:
            raise CollectionExists(f"collection '{scope.collection}' already exists")
        await self._use(COLLECTIONS, scope.tenant).data.insert(
            properties={"name": scope.collection, "embedder": embedder, "dim": dim},
            uuid=generate_uuid5(scope.collection),
        )

    async def delete_collection(self, scope: Scope) -> bool:
        obj = await self._collection_obj(scope)
        where = self._in_collection(scope)
        await self._use(CHUNKS, scope.tenant).data.delete_many(where=where)
        await self._use(DOCUMENTS, scope.tenant).data.delete_many(where=where)
        if obj is None:
            return False
        await self._use(COLLECTIONS, scope.tenant).data.delete_by_id(obj.uuid)
        return True

    async def list_collections(self, tenant: str) -> list[str]:
        await self._ensure_tenant(tenant)
        result = await self._use(COLLECTIONS, tenant).query.fetch_objects(limit=10_000)
        return sorted(str(o.properties["name"]) for o in result.objects)

    # ------------------------------------------------------------------ documents

    @staticmethod
    def _doc(props: dict[str, Any]) -> DocumentInfo:
        return DocumentInfo(
            docid=str(props["docid"]),
            content_hash=str(props["content_hash"]),
            meta_hash=str(props["meta_hash"]),
            title=props.get("title") or None,
            ref=props.get("ref") or None,
            tags=list(props.get("tags") or []),
            meta=json.loads(props.get("meta") or "{}"),
            chunks=int(props.get("chunks") or 0),
        )

    async def document_states(self, scope: Scope, docids: list[str]) -> dict[str, DocumentInfo]:
        await self._require(scope)
        out: dict[str, DocumentInfo] = {}
        documents = self._use(DOCUMENTS, scope.tenant)
        for start in range(0, len(docids), 200):
            part = docids[start : start + 200]
            result = await documents.query.fetch_objects(
                filters=self._in_collection(scope) & Filter.by_property("docid").contains_any(part),
                limit=len(part),
            )
            for obj in result.objects:
                doc = self._doc(obj.properties)
                out[doc.docid] = doc
        return out

    def _doc_props(self, scope: Scope, doc: DocumentInfo, chunks: int) -> dict[str, Any]:
        return {
            "collection": scope.collection,
            "docid": doc.docid,
            "content_hash": doc.content_hash,
            "meta_hash": doc.meta_hash,
            "title": doc.title or "",
            "ref": doc.ref or "",
            "tags": doc.tags,
            "meta": json.dumps(doc.meta),
            "chunks": chunks,
        }

    async def replace_documents(
        self, scope: Scope, items: list[tuple[DocumentInfo, list[ChunkRecord]]]
    ) -> None:
        await self._require(scope)
        chunks_api = self._use(CHUNKS, scope.tenant)
        objects: list[DataObject[dict[str, Any], None]] = []
        for doc, chunks in items:
            for chunk in chunks:
                objects.append(
                    DataObject(
                        uuid=generate_uuid5(
                            f"{scope.collection}\x00{doc.docid}\x00{doc.content_hash}\x00{chunk.position}"
                        ),
                        vector=chunk.vector.astype(float).tolist(),
                        properties={
                            "collection": scope.collection,
                            "docid": doc.docid,
                            "content_hash": doc.content_hash,
                            "position": chunk.position,
                            "text": chunk.text,
                            "headings": list(chunk.headings),
                            "title": doc.title or "",
                            "ref": doc.ref or "",
                            "tags": doc.tags,
                            "meta": json.dumps(doc.meta),
                        },
                    )
                )
        for start in range(0, len(objects), self._write_batch):
            self._check(await chunks_api.data.insert_many(objects[start : start + self._write_batch]))
        # New chunks are in; now the old ones (other content hash) go, then the document row records it.
        for doc, _ in items:
            await chunks_api.data.delete_many(
                where=self._in_collection(scope)
                & Filter.by_property("docid").equal(doc.docid)
                & Filter.by_property("content_hash").not_equal(doc.content_hash)
            )
        rows = [
            DataObject(
                uuid=self._doc_uuid(scope, doc.docid), properties=self._doc_props(scope, doc, len(chunks))
            )
            for doc, chunks in items
        ]
        self._check(await self._use(DOCUMENTS, scope.tenant).data.insert_many(rows))

    async def update_metadata(self, scope: Scope, docs: list[DocumentInfo]) -> None:
        await self._require(scope)
        chunks_api = self._use(CHUNKS, scope.tenant)
        documents = self._use(DOCUMENTS, scope.tenant)
        for doc in docs:
            props = {
                "title": doc.title or "",
                "ref": doc.ref or "",
                "tags": doc.tags,
                "meta": json.dumps(doc.meta),
            }
            result = await chunks_api.query.fetch_objects(
                filters=self._in_collection(scope) & Filter.by_property("docid").equal(doc.docid),
                limit=10_000,
                return_properties=["position"],
            )
            await asyncio.gather(
                *(chunks_api.data.update(uuid=o.uuid, properties=props) for o in result.objects)
            )
            await documents.data.update(
                uuid=self._doc_uuid(scope, doc.docid), properties={**props, "meta_hash": doc.meta_hash}
            )

    async def delete_document(self, scope: Scope, docid: str) -> bool:
        await self._require(scope)
        where = self._in_collection(scope) & Filter.by_property("docid").equal(docid)
        await self._use(CHUNKS, scope.tenant).data.delete_many(where=where)
        result = await self._use(DOCUMENTS, scope.tenant).data.delete_many(where=where)
        return bool(result.successful)

    async def list_documents(self, scope: Scope, offset: int = 0, limit: int = 100) -> list[DocumentInfo]:
        await self._require(scope)
        result = await self._use(DOCUMENTS, scope.tenant).query.fetch_objects(
            filters=self._in_collection(scope), limit=limit, offset=offset
        )
        return sorted((self._doc(o.properties) for o in result.objects), key=lambda d: d.docid)

    # ------------------------------------------------------------------ search

    @staticmethod
    def _chunk(props: dict[str, Any]) -> StoredChunk:
        return StoredChunk(
            docid=str(props["docid"]),
            position=int(props["position"]),
            text=str(props["text"]),
            headings=tuple(props.get("headings") or ()),
            title=props.get("title") or None,
            ref=props.get("ref") or None,
            tags=list(props.get("tags") or []),
            meta=json.loads(props.get("meta") or "{}"),
        )

    @staticmethod
    def _vector_of(obj: Any) -> np.ndarray:
        vector = obj.vector
        if isinstance(vector, dict):
            vector = vector.get("default") or next(iter(vector.values()))
        return np.asarray(vector, dtype=np.float32)

    async def search(self, scope: Scope, query: StoreQuery) -> list[StoreHit]:
        await self._require(scope)
        chunks_api = self._use(CHUNKS, scope.tenant)
        where = self._in_collection(scope)
        use_vector = query.mode in ("hybrid", "vector") and query.vector is not None
        use_lexical = query.mode in ("hybrid", "lexical") and bool(query.text)
        hits: list[StoreHit] = []
        if use_vector and query.vector is not None and (query.mode == "vector" or not use_lexical):
            result = await chunks_api.query.near_vector(
                near_vector=query.vector.astype(float).tolist(),
                limit=query.k,
                distance=1.0 - query.min_similarity,
                filters=where,
                return_metadata=MetadataQuery(distance=True),
            )
            for obj in result.objects:
                similarity = 1.0 - float(obj.metadata.distance)
                hits.append(StoreHit(self._chunk(obj.properties), similarity, similarity, None))
        elif use_vector and query.vector is not None:
            result = await chunks_api.query.hybrid(
                query=query.text,
                vector=query.vector.astype(float).tolist(),
                alpha=0.5,
                fusion_type=HybridFusion.RANKED,
                query_properties=["text", "headings"],
                limit=query.depth,
                filters=where,
                include_vector=True,
                return_metadata=MetadataQuery(score=True),
            )
            # RANKED fusion adds alpha/(60 + rank) per leg; with alpha 0.5 the best possible is 1/60.
            best = 1.0 / RRF_K
            for obj in result.objects:
                vector = self._vector_of(obj)
                similarity = float(vector @ query.vector / max(float(np.linalg.norm(vector)), 1e-12))
                if similarity < query.min_similarity:
                    continue
                score = min(1.0, float(obj.metadata.score or 0.0) / best)
                hits.append(StoreHit(self._chunk(obj.properties), score, similarity, None))
                if len(hits) == query.k:
                    break
        elif use_lexical:
            result = await chunks_api.query.bm25(
                query=query.text,
                query_properties=["text", "headings"],
                limit=query.k,
                filters=where,
                return_metadata=MetadataQuery(score=True),
            )
            top = float(result.objects[0].metadata.score or 1.0) if result.objects else 1.0
            for obj in result.objects:
                bm25 = float(obj.metadata.score or 0.0)
                if bm25 / top >= query.min_similarity:
                    hits.append(StoreHit(self._chunk(obj.properties), bm25 / top, None, bm25))
        return hits

    async def chunks_by_ref(self, scope: Scope, ref: str, limit: int = 32) -> list[StoredChunk]:
        await self._require(scope)
        result = await self._use(CHUNKS, scope.tenant).query.fetch_objects(
            filters=self._in_collection(scope) & Filter.by_property("ref").equal(ref), limit=limit
        )
        return sorted(
            (self._chunk(o.properties) for o in result.objects), key=lambda c: (c.docid, c.position)
        )

    async def flush(self) -> None:
        return None  # Weaviate acknowledges writes once they are durable on its side

    async def available(self) -> bool:
        """Weaviate's readiness endpoint answers ready (`/v1/.well-known/ready`)."""
        try:
            ready = self._client.is_ready()  # a closed client answers False at once, not awaitable
            return bool(await ready if inspect.isawaitable(ready) else ready)
        except Exception:  # a refused or dropped connection: not ready, whatever the client raised
            return False

    async def close(self) -> None:
        await self._client.close()
