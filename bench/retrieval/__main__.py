"""`python -m bench.retrieval`: top-5 search latency over 100,000 chunks on the embedded store, and
ingestion rates.

* search: one tenant's collection of `--chunks` chunks (plus another tenant's 10% more, so isolation
  is exercised), synthetic but structured data (vectors drawn around 1,000 topic centroids, text from
  a Zipf vocabulary of 20,000 words, ~120 words per chunk). Queries are a chunk's vector plus noise
  and 3–6 of its words. Embedding is excluded (the target: p50 ≤ 10 ms). Each mode runs `--runs`
  times of `--queries` queries and the median of the runs' percentiles is reported (noisy machines).
* ingestion (store only): chunks/s writing those chunks (SQLite + HNSW + BM25), vectors given;
* ingestion (end to end): chunks/s through `Ingestor` with the bundled MiniLM embedder (numpy);
* cold open: the first search after reopening the store (graph load + BM25 rebuild).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aigw_contracts.knowledge import KnowledgeDocument
from aigw_retrieval.embed import MiniLMEmbedder
from aigw_retrieval.ingest import Ingestor
from aigw_retrieval.stores import ChunkRecord, DocumentInfo, EmbeddedStore, Scope, StoreQuery

DIM = 384
TARGET = Scope("bench-tenant", "big")
NOISE = Scope("other-tenant", "big")


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Corpus:
    def __init__(self, seed: int = 7, topics: int = 1000, vocabulary: int = 20_000) -> None:
        self.rng = np.random.default_rng(seed)
        centroids = self.rng.standard_normal((topics, DIM)).astype(np.float32)
        self.centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        p = 1.0 / np.arange(1, vocabulary + 1) ** 1.07
        self.p = p / p.sum()
        self.words = np.array([f"w{i}" for i in range(vocabulary)])

    def batch(self, n: int) -> tuple[np.ndarray, list[str]]:
        topic = self.rng.integers(0, len(self.centroids), n)
        vectors = self.centroids[topic] + 0.6 * self.rng.standard_normal((n, DIM)).astype(
            np.float32
        ) / np.sqrt(DIM)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        words = self.words[self.rng.choice(len(self.words), size=(n, 120), p=self.p)]
        return vectors.astype(np.float32), [" ".join(row) for row in words]


def fill(store: EmbeddedStore, scope: Scope, corpus: Corpus, chunks: int, per_doc: int = 5) -> float:
    """Write `chunks` chunks; returns chunks/s."""
    store.create_collection_sync(scope, "synthetic", DIM)
    store.warm(scope)  # the graph grows with the writes, as it does in service
    written = 0
    started = time.perf_counter()
    last = started
    while written < chunks:
        n = min(2000, chunks - written)
        vectors, texts = corpus.batch(n)
        items = []
        for d in range(0, n, per_doc):
            docid = f"doc-{written + d}"
            records = [
                ChunkRecord(i, texts[d + i], ("Section",), vectors[d + i]) for i in range(min(per_doc, n - d))
            ]
            items.append((DocumentInfo(docid, docid, "m", title=docid), records))
        store.replace_documents_sync(scope, items)
        written += n
        now = time.perf_counter()
        if now - last > 5 or written == chunks:
            _progress(
                f"  {scope.tenant}: {written:,}/{chunks:,} chunks, {written / (now - started):,.0f} chunks/s"
            )
            last = now
    store.flush_sync()
    return chunks / (time.perf_counter() - started)


def queries(store: EmbeddedStore, corpus: Corpus, n: int) -> list[tuple[np.ndarray, str]]:
    """Queries made from stored chunks of the target collection (so each has a true answer)."""
    rows = store._db.execute(
        "SELECT text, vector FROM chunks WHERE tenant = ? AND collection = ? ORDER BY random() LIMIT ?",
        (TARGET.tenant, TARGET.collection, n),
    ).fetchall()
    out = []
    for text, blob in rows:
        v = np.frombuffer(blob, dtype=np.float32) + 0.3 * corpus.rng.standard_normal(DIM).astype(
            np.float32
        ) / np.sqrt(DIM)
        words = text.split()
        picked = corpus.rng.choice(len(words), size=int(corpus.rng.integers(3, 7)), replace=False)
        out.append(((v / np.linalg.norm(v)).astype(np.float32), " ".join(words[i] for i in picked)))
    return out


def measure(store: EmbeddedStore, qs: list[tuple[np.ndarray, str]], mode: str) -> dict[str, float]:
    times = []
    for vector, text in qs:
        q = StoreQuery(k=5, mode=mode, vector=vector, text=text, min_similarity=0.2)  # type: ignore[arg-type]
        t = time.perf_counter()
        hits = store.search_sync(TARGET, q)
        times.append(time.perf_counter() - t)
        assert all(h.chunk.docid.startswith("doc-") for h in hits)
    ms = np.asarray(times) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
    }


async def ingest_end_to_end(path: Path, docs: int) -> dict[str, float]:
    store = EmbeddedStore(path)
    scope = Scope("bench-tenant", "e2e")
    embedder = MiniLMEmbedder()
    await store.create_collection(scope, embedder.name, embedder.dim)
    sentences = [
        "Our refund policy lets customers return items within thirty days of delivery.",
        "Invoices are issued monthly and can be downloaded from the billing page.",
        "Support is available on weekdays from nine to five, except public holidays.",
        "Passwords must be rotated every ninety days and may not be reused.",
    ]
    documents = [
        KnowledgeDocument(
            docid=f"d{i}",
            text=f"# Policy {i}\n\n" + " ".join(sentences[(i + j) % 4] for j in range(12)),
            content_type="text/markdown",
        )
        for i in range(docs)
    ]

    def show(p: Any) -> None:
        _progress(f"  e2e: {p.processed}/{p.total} documents, {p.report.chunks} chunks")

    started = time.perf_counter()
    report = await Ingestor(store, embedder).ingest(scope, documents, progress=show, total=docs)
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    again = await Ingestor(store, embedder).ingest(scope, documents)
    unchanged_s = time.perf_counter() - started
    await store.close()
    assert again.unchanged == docs
    return {
        "documents": docs,
        "chunks": report.chunks,
        "tokens": report.embedding_tokens,
        "chunks_per_s": report.chunks / elapsed,
        "tokens_per_s": report.embedding_tokens / elapsed,
        "reingest_unchanged_s": unchanged_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--e2e-docs", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="aigw-bench-retrieval-") as tmp:
        root = Path(tmp)
        corpus = Corpus()
        store = EmbeddedStore(root / "kb")
        _progress(f"filling {args.chunks:,} chunks (+{args.chunks // 10:,} of another tenant)")
        ingest_rate = fill(store, TARGET, corpus, args.chunks)
        fill(store, NOISE, corpus, args.chunks // 10)
        qs = queries(store, corpus, args.queries)
        results: dict[str, Any] = {
            "chunks": args.chunks,
            "store_ingest_chunks_per_s": ingest_rate,
            "search_ms": {},
        }
        for mode in ("hybrid", "vector", "lexical"):
            runs = []
            for r in range(args.runs):
                runs.append(measure(store, qs, mode))
                _progress(
                    f"  {mode} run {r + 1}/{args.runs}: p50 {runs[-1]['p50']:.2f} ms, p99 {runs[-1]['p99']:.2f} ms"
                )
            results["search_ms"][mode] = {
                k: statistics.median(x[k] for x in runs) for k in ("p50", "p90", "p99")
            }
        store.close_sync()

        started = time.perf_counter()
        reopened = EmbeddedStore(root / "kb")
        vector, text = qs[0]
        reopened.search_sync(TARGET, StoreQuery(k=5, vector=vector, text=text))
        results["cold_open_first_search_s"] = time.perf_counter() - started
        reopened.close_sync()

        _progress(f"end-to-end ingestion of {args.e2e_docs} documents with the bundled MiniLM (numpy)")
        results["e2e_ingest"] = asyncio.run(ingest_end_to_end(root / "e2e", args.e2e_docs))

    print(json.dumps(results, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    (args.out / f"retrieval-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
