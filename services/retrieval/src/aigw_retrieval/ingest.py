"""Ingestion: documents in, chunks with vectors out, with docid upsert semantics.

For each document the stored hashes decide the work:

* same text and same metadata → nothing (no chunking, no embedding, no write);
* same text, new title/__ref/__tags/__meta → a metadata update, no re-embedding;
* new text (or a new docid) → chunk, embed, and replace the document's chunks atomically.

The text hash also covers the chunking parameters and the embedder's name, so changing either
re-indexes on the next import. That same rule makes imports resumable: a crash mid-way leaves every
document either stored whole or not at all, and re-running the import skips what was done, at the
cost of one hash lookup per document.

Documents are processed in windows (`window` documents): one state lookup, one embedding call
(batched by the embedder) and one store write per window; progress is reported after each.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

from pydantic import ValidationError

from aigw_contracts.knowledge import IngestReport, KnowledgeDocument

from .chunking import chunk_text
from .documents import DocumentFormatError, parse_document
from .embed import Embedder
from .stores import ChunkRecord, DocumentInfo, KnowledgeStore, Scope

MAX_ERRORS = 100


@dataclass(frozen=True)
class Progress:
    processed: int  # documents (or lines) handled so far
    total: int | None  # when known up front
    report: IngestReport


ProgressCallback = Callable[[Progress], Awaitable[None] | None]


def meta_hash(doc: KnowledgeDocument, title: str | None) -> str:
    payload = json.dumps(
        [title, doc.ref, doc.tags, doc.meta], sort_keys=True, ensure_ascii=False, default=str
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def embedding_text(text: str, headings: tuple[str, ...]) -> str:
    """What is embedded for a chunk: its heading path, then its text (the path says what it is about)."""
    return (" > ".join(headings) + "\n\n" + text) if headings else text


@dataclass
class _Pending:
    line: int
    doc: KnowledgeDocument
    info: DocumentInfo
    text: str


class Ingestor:
    def __init__(
        self,
        store: KnowledgeStore,
        embedder: Embedder,
        *,
        max_chars: int = 1200,
        overlap: int = 150,
        window: int = 32,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.max_chars = max_chars
        self.overlap = overlap
        self.window = window

    def content_hash(self, doc: KnowledgeDocument) -> str:
        h = hashlib.sha256()
        for part in (self.embedder.name, str(self.max_chars), str(self.overlap), doc.content_type, doc.text):
            h.update(part.encode())
            h.update(b"\x00")
        return h.hexdigest()

    async def ingest(
        self,
        scope: Scope,
        documents: Iterable[KnowledgeDocument] | AsyncIterable[KnowledgeDocument],
        *,
        progress: ProgressCallback | None = None,
        total: int | None = None,
    ) -> IngestReport:
        async def numbered() -> AsyncIterator[tuple[int, KnowledgeDocument | str]]:
            if isinstance(documents, AsyncIterable):
                n = 0
                async for doc in documents:
                    n += 1
                    yield n, doc
            else:
                for n, doc in enumerate(documents, start=1):
                    yield n, doc

        return await self._run(scope, numbered(), progress, total)

    async def ingest_jsonl(
        self,
        scope: Scope,
        lines: Iterable[str | bytes],
        *,
        progress: ProgressCallback | None = None,
        total: int | None = None,
    ) -> IngestReport:
        """A JSON Lines import: one document per line; a bad line is counted and reported, not fatal."""

        async def parsed() -> AsyncIterator[tuple[int, KnowledgeDocument | str]]:
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield n, KnowledgeDocument.model_validate_json(line)
                except ValidationError as exc:
                    yield n, f"line {n}: {exc.errors()[0]['msg']} at {exc.errors()[0]['loc']}"

        return await self._run(scope, parsed(), progress, total)

    async def _run(
        self,
        scope: Scope,
        items: AsyncIterator[tuple[int, KnowledgeDocument | str]],
        progress: ProgressCallback | None,
        total: int | None,
    ) -> IngestReport:
        report = IngestReport()
        window: list[_Pending] = []
        processed = 0

        async def report_progress() -> None:
            if progress is not None:
                result = progress(Progress(processed, total, report))
                if result is not None:
                    await result

        async for line, item in items:
            processed += 1
            report.total += 1
            if isinstance(item, str):
                self._fail(report, item)
                continue
            try:
                parsed = parse_document(item.text, item.content_type, item.title)
            except DocumentFormatError as exc:
                self._fail(report, f"line {line}: {exc}")
                continue
            info = DocumentInfo(
                docid=item.docid,
                content_hash=self.content_hash(item),
                meta_hash=meta_hash(item, parsed.title),
                title=parsed.title,
                ref=item.ref,
                tags=item.tags,
                meta=item.meta,
            )
            if any(p.doc.docid == item.docid for p in window):
                await self._flush(scope, window, report)  # the later version of a docid wins
                window.clear()
                await report_progress()
            window.append(_Pending(line, item, info, parsed.text))
            if len(window) >= self.window:
                await self._flush(scope, window, report)
                window.clear()
                await report_progress()
        if window:
            await self._flush(scope, window, report)
        await self.store.flush()
        await report_progress()
        return report

    @staticmethod
    def _fail(report: IngestReport, message: str) -> None:
        report.failed += 1
        if len(report.errors) < MAX_ERRORS:
            report.errors.append(message)

    async def _flush(self, scope: Scope, window: list[_Pending], report: IngestReport) -> None:
        states = await self.store.document_states(scope, [p.info.docid for p in window])
        to_embed: list[_Pending] = []
        meta_only: list[DocumentInfo] = []
        for pending in window:
            stored = states.get(pending.info.docid)
            if stored is not None and stored.content_hash == pending.info.content_hash:
                if stored.meta_hash == pending.info.meta_hash:
                    report.unchanged += 1
                else:
                    meta_only.append(pending.info)
                    report.metadata_only += 1
            else:
                to_embed.append(pending)
                if stored is None:
                    report.created += 1
                else:
                    report.updated += 1
        if to_embed:
            chunked = [chunk_text(p.text, self.max_chars, self.overlap) for p in to_embed]
            texts = [embedding_text(c.text, c.headings) for chunks in chunked for c in chunks]
            embeddings = await self.embedder.embed(texts)
            report.embedding_tokens += embeddings.tokens
            report.chunks += len(texts)
            items: list[tuple[DocumentInfo, list[ChunkRecord]]] = []
            row = 0
            for pending, chunks in zip(to_embed, chunked, strict=True):
                records = []
                for c in chunks:
                    records.append(ChunkRecord(c.position, c.text, c.headings, embeddings.vectors[row]))
                    row += 1
                items.append((pending.info, records))
            await self.store.replace_documents(scope, items)
        if meta_only:
            await self.store.update_metadata(scope, meta_only)
