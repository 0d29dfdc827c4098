"""The embedded knowledge store: one directory on disk, in-process, vector + keyword search.

Layout of a store directory:

* `knowledge.sqlite3` — the source of truth: collections, documents (hashes, metadata) and chunks
  (text, heading path, float32 vector), every row keyed by tenant and collection. Writes are SQLite
  transactions (WAL), so a crash leaves each document either fully old or fully new.
* `vectors/<partition>.usearch` — one HNSW graph per (tenant, collection), a cache of the vectors in
  SQLite: saved on `flush()`, reconciled with SQLite when opened (chunks added or removed since the
  last save are applied), rebuilt if missing.
* The BM25 index (`aigw_retrieval.lexical`) is rebuilt in memory when a partition is first searched.

Why not LanceDB (measured on this machine, 100,000 chunks of 384 dims, top-5): with a tenant
prefilter, its flat scan took 140 ms p50 and its IVF_HNSW_SQ index 12 ms p50 (65 s to build; rows
added later are scanned flat until the index is optimized); it adds ~180 MB to the environment.
A brute-force numpy scan takes 11–17 ms p50 on one core, over the 10 ms target. A usearch HNSW graph
per partition answers in ~1 ms, the numpy BM25 in ~1 ms, and the wheel is ~11 MB.

Isolation (OWASP LLM08): a partition holds one tenant's collection and nothing else, so the vector
and keyword searches cannot even see another tenant's chunks; the SQL that reads hits back also
filters on tenant and collection.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from usearch.index import Index

from ..fusion import rrf
from ..lexical import LexicalIndex
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS collections (
    tenant TEXT NOT NULL, name TEXT NOT NULL, embedder TEXT NOT NULL, dim INTEGER NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (tenant, name)
);
CREATE TABLE IF NOT EXISTS documents (
    tenant TEXT NOT NULL, collection TEXT NOT NULL, docid TEXT NOT NULL,
    content_hash TEXT NOT NULL, meta_hash TEXT NOT NULL, title TEXT, ref TEXT,
    tags TEXT NOT NULL DEFAULT '[]', meta TEXT NOT NULL DEFAULT '{}', chunks INTEGER NOT NULL,
    updated_at REAL NOT NULL, PRIMARY KEY (tenant, collection, docid)
);
CREATE INDEX IF NOT EXISTS documents_ref ON documents (tenant, collection, ref);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, collection TEXT NOT NULL, docid TEXT NOT NULL,
    position INTEGER NOT NULL, text TEXT NOT NULL, headings TEXT NOT NULL, vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks (tenant, collection, docid, position);
"""

# Below this many chunks an exact scan is as fast as the graph and never misses.
_EXACT_BELOW = 2048


def lexical_text(text: str, headings: Iterable[str]) -> str:
    """What the keyword index sees for a chunk (its heading path matters as much as its words)."""
    return " ".join(headings) + "\n" + text


@dataclass
class _Partition:
    scope: Scope
    dim: int
    index: Index
    lexical: LexicalIndex
    path: Path
    dirty: bool = False


class EmbeddedStore:
    def __init__(
        self,
        path: str | Path,
        *,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 64,
        vector_dtype: str = "f16",
    ) -> None:
        self.path = Path(path)
        (self.path / "vectors").mkdir(parents=True, exist_ok=True)
        self._connectivity = connectivity
        self._expansion_add = expansion_add
        self._expansion_search = expansion_search
        self._dtype = vector_dtype
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.path / "knowledge.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._parts: dict[Scope, _Partition] = {}

    # ------------------------------------------------------------------ partitions

    def _vector_file(self, scope: Scope) -> Path:
        digest = hashlib.sha256(f"{scope.tenant}\x00{scope.collection}".encode()).hexdigest()[:40]
        return self.path / "vectors" / f"{digest}.usearch"

    def _dim(self, scope: Scope) -> int:
        row = self._db.execute(
            "SELECT dim FROM collections WHERE tenant = ? AND name = ?", (scope.tenant, scope.collection)
        ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection '{scope.collection}' not found")
        return int(row[0])

    def _new_index(self, dim: int) -> Index:
        return Index(
            ndim=dim,
            metric="cos",
            dtype=self._dtype,
            connectivity=self._connectivity,
            expansion_add=self._expansion_add,
        )

    def _partition(self, scope: Scope) -> _Partition:
        part = self._parts.get(scope)
        if part is not None:
            return part
        dim = self._dim(scope)
        path = self._vector_file(scope)
        index = Index.restore(str(path)) if path.exists() else None
        if index is None or index.ndim != dim:
            index = self._new_index(dim)
        rows = [
            (chunk_id, lexical_text(text, json.loads(headings)))
            for chunk_id, text, headings in self._db.execute(
                "SELECT id, text, headings FROM chunks WHERE tenant = ? AND collection = ?",
                (scope.tenant, scope.collection),
            )
        ]
        lexical = LexicalIndex()
        lexical.load(rows)
        want = np.asarray([r[0] for r in rows], dtype=np.int64)
        del rows
        have = np.asarray(index.keys, dtype=np.int64) if len(index) else np.zeros(0, dtype=np.int64)
        extra = np.setdiff1d(have, want)
        missing = np.setdiff1d(want, have)
        if extra.size:
            index.remove(extra.astype(np.uint64))
        for start in range(0, missing.size, 8192):
            keys = missing[start : start + 8192]
            found = self._db.execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({','.join('?' * keys.size)})"
                " AND +tenant = ? AND +collection = ?",
                (*keys.tolist(), scope.tenant, scope.collection),
            ).fetchall()
            vectors = np.vstack([np.frombuffer(blob, dtype=np.float32) for _, blob in found])
            index.add(np.asarray([r[0] for r in found], dtype=np.uint64), vectors)
        part = _Partition(scope, dim, index, lexical, path, dirty=bool(extra.size or missing.size))
        self._parts[scope] = part
        return part

    # ------------------------------------------------------------------ collections

    def create_collection_sync(self, scope: Scope, embedder: str, dim: int) -> None:
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO collections (tenant, name, embedder, dim, created_at) VALUES (?, ?, ?, ?, ?)",
                    (scope.tenant, scope.collection, embedder, dim, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise CollectionExists(f"collection '{scope.collection}' already exists") from exc

    async def create_collection(self, scope: Scope, embedder: str, dim: int) -> None:
        self.create_collection_sync(scope, embedder, dim)

    def delete_collection_sync(self, scope: Scope) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                args = (scope.tenant, scope.collection)
                self._db.execute("DELETE FROM chunks WHERE tenant = ? AND collection = ?", args)
                self._db.execute("DELETE FROM documents WHERE tenant = ? AND collection = ?", args)
                gone = self._db.execute(
                    "DELETE FROM collections WHERE tenant = ? AND name = ?", args
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._parts.pop(scope, None)
            self._vector_file(scope).unlink(missing_ok=True)
            return bool(gone)

    async def delete_collection(self, scope: Scope) -> bool:
        return await asyncio.to_thread(self.delete_collection_sync, scope)

    async def list_collections(self, tenant: str) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT name FROM collections WHERE tenant = ? ORDER BY name", (tenant,))
            return [r[0] for r in rows]

    def collection_info(self, scope: Scope) -> tuple[str, int]:
        """The embedder name and dimension a collection was created with."""
        with self._lock:
            row = self._db.execute(
                "SELECT embedder, dim FROM collections WHERE tenant = ? AND name = ?",
                (scope.tenant, scope.collection),
            ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection '{scope.collection}' not found")
        return str(row[0]), int(row[1])

    # ------------------------------------------------------------------ documents

    @staticmethod
    def _doc(row: tuple[Any, ...]) -> DocumentInfo:
        docid, content_hash, meta_hash, title, ref, tags, meta, chunks = row
        return DocumentInfo(
            docid, content_hash, meta_hash, title, ref, json.loads(tags), json.loads(meta), int(chunks)
        )

    _DOC_COLUMNS = "docid, content_hash, meta_hash, title, ref, tags, meta, chunks"

    def document_states_sync(self, scope: Scope, docids: list[str]) -> dict[str, DocumentInfo]:
        out: dict[str, DocumentInfo] = {}
        with self._lock:
            self._dim(scope)
            for start in range(0, len(docids), 500):
                part = docids[start : start + 500]
                rows = self._db.execute(
                    f"SELECT {self._DOC_COLUMNS} FROM documents WHERE tenant = ? AND collection = ? "
                    f"AND docid IN ({','.join('?' * len(part))})",
                    (scope.tenant, scope.collection, *part),
                )
                for row in rows:
                    out[row[0]] = self._doc(row)
        return out

    async def document_states(self, scope: Scope, docids: list[str]) -> dict[str, DocumentInfo]:
        return self.document_states_sync(scope, docids)

    def _upsert_doc_row(self, scope: Scope, doc: DocumentInfo, chunks: int) -> None:
        self._db.execute(
            "INSERT INTO documents (tenant, collection, docid, content_hash, meta_hash, title, ref, tags, meta,"
            " chunks, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant, collection, docid) DO UPDATE SET content_hash = excluded.content_hash,"
            " meta_hash = excluded.meta_hash, title = excluded.title, ref = excluded.ref, tags = excluded.tags,"
            " meta = excluded.meta, chunks = excluded.chunks, updated_at = excluded.updated_at",
            (
                scope.tenant, scope.collection, doc.docid, doc.content_hash, doc.meta_hash, doc.title,
                doc.ref, json.dumps(doc.tags), json.dumps(doc.meta), chunks, time.time(),
            ),
        )  # fmt: skip

    def _delete_chunks(self, scope: Scope, docid: str) -> list[tuple[int, str]]:
        """Delete a document's chunks; returns (id, lexical text) of what was removed."""
        rows = self._db.execute(
            "SELECT id, text, headings FROM chunks WHERE tenant = ? AND collection = ? AND docid = ?",
            (scope.tenant, scope.collection, docid),
        ).fetchall()
        if rows:
            self._db.execute(
                "DELETE FROM chunks WHERE tenant = ? AND collection = ? AND docid = ?",
                (scope.tenant, scope.collection, docid),
            )
        return [(r[0], lexical_text(r[1], json.loads(r[2]))) for r in rows]

    def replace_documents_sync(
        self, scope: Scope, items: list[tuple[DocumentInfo, list[ChunkRecord]]]
    ) -> None:
        with self._lock:
            dim = self._dim(scope)
            removed: list[tuple[int, str]] = []
            added: list[tuple[int, str, npt.NDArray[np.float32]]] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for doc, chunks in items:
                    removed.extend(self._delete_chunks(scope, doc.docid))
                    for chunk in chunks:
                        vector = np.ascontiguousarray(chunk.vector, dtype=np.float32)
                        if vector.shape != (dim,):
                            raise ValueError(
                                f"vector of shape {vector.shape}, collection has dimension {dim}"
                            )
                        cursor = self._db.execute(
                            "INSERT INTO chunks (tenant, collection, docid, position, text, headings, vector)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (
                                scope.tenant, scope.collection, doc.docid, chunk.position, chunk.text,
                                json.dumps(list(chunk.headings)), vector.tobytes(),
                            ),
                        )  # fmt: skip
                        assert cursor.lastrowid is not None
                        added.append((cursor.lastrowid, lexical_text(chunk.text, chunk.headings), vector))
                    self._upsert_doc_row(scope, doc, len(chunks))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            part = self._parts.get(scope)
            if part is not None:
                self._apply(part, removed, added)

    @staticmethod
    def _apply(
        part: _Partition,
        removed: list[tuple[int, str]],
        added: list[tuple[int, str, npt.NDArray[np.float32]]],
    ) -> None:
        if removed:
            part.index.remove(np.asarray([r[0] for r in removed], dtype=np.uint64))
            for key, text in removed:
                part.lexical.remove(key, text)
        if added:
            part.index.add(
                np.asarray([a[0] for a in added], dtype=np.uint64), np.vstack([a[2] for a in added])
            )
            for key, text, _ in added:
                part.lexical.add(key, text)
        part.dirty = part.dirty or bool(removed or added)

    async def replace_documents(
        self, scope: Scope, items: list[tuple[DocumentInfo, list[ChunkRecord]]]
    ) -> None:
        await asyncio.to_thread(self.replace_documents_sync, scope, items)

    def update_metadata_sync(self, scope: Scope, docs: list[DocumentInfo]) -> None:
        with self._lock:
            self._dim(scope)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for doc in docs:
                    self._db.execute(
                        "UPDATE documents SET meta_hash = ?, title = ?, ref = ?, tags = ?, meta = ?, updated_at = ?"
                        " WHERE tenant = ? AND collection = ? AND docid = ?",
                        (
                            doc.meta_hash, doc.title, doc.ref, json.dumps(doc.tags), json.dumps(doc.meta),
                            time.time(), scope.tenant, scope.collection, doc.docid,
                        ),
                    )  # fmt: skip
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def update_metadata(self, scope: Scope, docs: list[DocumentInfo]) -> None:
        self.update_metadata_sync(scope, docs)

    def delete_document_sync(self, scope: Scope, docid: str) -> bool:
        with self._lock:
            self._dim(scope)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                removed = self._delete_chunks(scope, docid)
                gone = self._db.execute(
                    "DELETE FROM documents WHERE tenant = ? AND collection = ? AND docid = ?",
                    (scope.tenant, scope.collection, docid),
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            part = self._parts.get(scope)
            if part is not None:
                self._apply(part, removed, [])
            return bool(gone)

    async def delete_document(self, scope: Scope, docid: str) -> bool:
        return self.delete_document_sync(scope, docid)

    async def list_documents(self, scope: Scope, offset: int = 0, limit: int = 100) -> list[DocumentInfo]:
        with self._lock:
            self._dim(scope)
            rows = self._db.execute(
                f"SELECT {self._DOC_COLUMNS} FROM documents WHERE tenant = ? AND collection = ?"
                " ORDER BY docid LIMIT ? OFFSET ?",
                (scope.tenant, scope.collection, limit, offset),
            ).fetchall()
        return [self._doc(r) for r in rows]

    # ------------------------------------------------------------------ search

    def _fetch(self, scope: Scope, keys: list[int]) -> dict[int, StoredChunk]:
        if not keys:
            return {}
        rows = self._db.execute(
            "SELECT c.id, c.docid, c.position, c.text, c.headings, d.title, d.ref, d.tags, d.meta"
            " FROM chunks c CROSS JOIN documents d"  # CROSS JOIN: SQLite keeps chunks (by id) outer
            " ON d.tenant = c.tenant AND d.collection = c.collection AND d.docid = c.docid"
            # `+` keeps SQLite on the primary key (one lookup per id) instead of scanning the whole
            # partition through chunks_doc; tenant and collection are still checked on every row.
            f" WHERE c.id IN ({','.join('?' * len(keys))}) AND +c.tenant = ? AND +c.collection = ?",
            (*keys, scope.tenant, scope.collection),
        )
        return {
            r[0]: StoredChunk(
                r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], json.loads(r[7]), json.loads(r[8])
            )
            for r in rows
        }

    def _vector_leg(
        self, part: _Partition, vector: npt.NDArray[np.float32], depth: int
    ) -> list[tuple[int, float]]:
        size = len(part.index)
        if not size:
            return []
        part.index.expansion_search = max(self._expansion_search, depth)  # type: ignore[misc]
        matches = part.index.search(vector, min(depth, size), exact=size <= _EXACT_BELOW)
        return [(int(k), 1.0 - float(d)) for k, d in zip(matches.keys, matches.distances, strict=True)]

    @staticmethod
    def _similarities(part: _Partition, keys: list[int], vector: npt.NDArray[np.float32]) -> dict[int, float]:
        if not keys:
            return {}
        got = part.index.get(np.asarray(keys, dtype=np.uint64))
        found = [
            (k, v)
            for k, v in zip(keys, got if isinstance(got, tuple) else (got,), strict=True)
            if v is not None
        ]
        if not found:
            return {}
        rows = np.vstack([v for _, v in found]).astype(np.float32)
        sims = rows @ vector / np.maximum(np.linalg.norm(rows, axis=1), 1e-12)
        return {k: float(s) for (k, _), s in zip(found, sims, strict=True)}

    def search_sync(self, scope: Scope, query: StoreQuery) -> list[StoreHit]:
        with self._lock:
            part = self._partition(scope)
            depth = query.depth
            use_vector = query.mode in ("hybrid", "vector") and query.vector is not None
            use_lexical = query.mode in ("hybrid", "lexical") and bool(query.text)
            vector_hits = self._vector_leg(part, query.vector, depth) if use_vector else []  # type: ignore[arg-type]
            lexical_hits = part.lexical.search(query.text or "", depth) if use_lexical else []
            ranked: list[tuple[int, float, float | None, float | None]]
            if query.mode == "lexical" or not use_vector:
                best = lexical_hits[0][1] if lexical_hits else 1.0
                ranked = [(k, s / best, None, s) for k, s in lexical_hits]
                ranked = [r for r in ranked if r[1] >= query.min_similarity]
            else:
                assert query.vector is not None
                vector_hits = [h for h in vector_hits if h[1] >= query.min_similarity]
                if query.mode == "vector" or not lexical_hits:
                    ranked = [(k, s, s, None) for k, s in vector_hits]
                else:
                    seen = {k for k, _ in vector_hits}
                    sims = self._similarities(
                        part, [k for k, _ in lexical_hits if k not in seen], query.vector
                    )
                    # a keyword match must also be about the query: the same cosine floor applies to it
                    lexical_hits = [
                        (k, s)
                        for k, s in lexical_hits
                        if k in seen or sims.get(k, -1.0) >= query.min_similarity
                    ]
                    ranked = []
                    for f in rrf(vector_hits, lexical_hits):
                        sim = f.similarity if f.similarity is not None else sims.get(f.key)
                        ranked.append((f.key, f.score, sim, f.lexical))
            ranked = ranked[: query.k]
            chunks = self._fetch(scope, [r[0] for r in ranked])
        return [StoreHit(chunks[k], score, sim, lex) for k, score, sim, lex in ranked if k in chunks]

    async def search(self, scope: Scope, query: StoreQuery) -> list[StoreHit]:
        # Inline on the event loop: a search holds the CPU for about a millisecond, less than a thread hop.
        return self.search_sync(scope, query)

    async def chunks_by_ref(self, scope: Scope, ref: str, limit: int = 32) -> list[StoredChunk]:
        with self._lock:
            self._dim(scope)
            rows = self._db.execute(
                "SELECT c.docid, c.position, c.text, c.headings, d.title, d.ref, d.tags, d.meta"
                " FROM documents d JOIN chunks c"
                " ON c.tenant = d.tenant AND c.collection = d.collection AND c.docid = d.docid"
                " WHERE d.tenant = ? AND d.collection = ? AND d.ref = ? ORDER BY c.docid, c.position LIMIT ?",
                (scope.tenant, scope.collection, ref, limit),
            ).fetchall()
        return [
            StoredChunk(
                r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], json.loads(r[6]), json.loads(r[7])
            )
            for r in rows
        ]

    def warm(self, scope: Scope) -> None:
        """Load a partition now (startup), rather than on its first search."""
        with self._lock:
            self._partition(scope)

    # ------------------------------------------------------------------ durability

    def flush_sync(self) -> None:
        with self._lock:
            for part in self._parts.values():
                if part.dirty:
                    tmp = part.path.with_suffix(".tmp")
                    part.index.save(str(tmp))
                    os.replace(tmp, part.path)
                    part.dirty = False

    async def flush(self) -> None:
        await asyncio.to_thread(self.flush_sync)

    async def available(self) -> bool:
        """The store's files are where it opened them and writable: a directory moved, deleted or
        unmounted (the open SQLite handle would go on working on the orphaned file) or made
        read-only is unavailable."""
        db, vectors = self.path / "knowledge.sqlite3", self.path / "vectors"
        try:
            return db.is_file() and os.access(db, os.W_OK) and os.access(vectors, os.W_OK | os.X_OK)
        except OSError:
            return False

    def close_sync(self) -> None:
        self.flush_sync()
        with self._lock:
            self._parts.clear()
            self._db.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)
