"""Management requests (`KnowledgeRequest` on `subjects.RETRIEVAL_MANAGE`): documents and direct search.

Every reply is JSON; an error reply carries `headers.STATUS` and an OpenAI error body, which the
edge raises as the same error (`Bus.ask`). Writes and searches are metered to the caller's key:
ingestion bills the embedding tokens it spent, a search bills one search plus its query tokens.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from aigw_contracts import errors
from aigw_contracts.ids import uuid7
from aigw_contracts.knowledge import (
    DocumentSummary,
    IngestReport,
    KnowledgeRequest,
    KnowledgeSearchResult,
)

from .documents import DocumentFormatError
from .search import UnsupportedReranker
from .service import Knowledge
from .stores import CollectionNotFound, DocumentInfo, Scope

log = logging.getLogger("aigw.retrieval.manage")

Reply = tuple[bytes, dict[str, str] | None]


def _summary(info: DocumentInfo) -> DocumentSummary:
    return DocumentSummary(
        docid=info.docid, title=info.title, ref=info.ref, tags=info.tags, meta=info.meta, chunks=info.chunks
    )


def _dump(value: Any) -> bytes:
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json(by_alias=True).encode()
    return json.dumps(value, separators=(",", ":")).encode()


class Manager:
    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge

    async def answer(self, data: bytes) -> Reply:
        try:
            request = KnowledgeRequest.model_validate_json(data)
        except ValidationError as exc:
            return errors.error_reply(errors.invalid_message(exc, "knowledge request"))
        if self.knowledge.foreign(request.tenant, request.collection):
            return errors.error_reply(_no_collection(request.collection))
        started = datetime.now(UTC)
        try:
            result = await self._run(request, Scope(request.tenant, request.collection), started)
        except errors.GatewayError as err:
            return errors.error_reply(err)
        except UnsupportedReranker as exc:
            return errors.error_reply(errors.InvalidRequest(str(exc), param="reranker"))
        except DocumentFormatError as exc:
            return errors.error_reply(errors.InvalidRequest(str(exc), param="text"))
        except Exception:
            log.exception("knowledge request failed", extra={"op": request.op, "tenant": request.tenant})
            return errors.error_reply(
                errors.InternalError("The knowledge store could not do this; it has been logged.")
            )
        return _dump(result), None

    async def _run(self, request: KnowledgeRequest, scope: Scope, started: datetime) -> Any:
        k = self.knowledge
        op = request.op
        if op in ("upsert", "import", "search"):
            k.affordable(request.tenant, request.key_id)  # 402 once a balance or budget is spent
        if op in ("upsert", "import"):
            await k.writable(scope)
            if op == "upsert":
                if not request.documents:
                    raise errors.InvalidRequest("No documents to add.", param="documents")
                report = await k.ingestor.ingest(scope, request.documents)
                if report.failed == report.total:  # nothing usable: a plain 400, not a report of failure
                    self._meter(request, report, started)
                    raise errors.InvalidRequest(report.errors[0] if report.errors else "No usable document.")
            else:
                if request.jsonl is None:
                    raise errors.InvalidRequest("An import needs JSON Lines.", param="jsonl")
                report = await k.ingestor.ingest_jsonl(scope, request.jsonl.splitlines())
            self._meter(request, report, started)
            return report
        if op == "search":
            if request.search is None:
                raise errors.InvalidRequest("A search needs a query.", param="query")
            try:
                result = await k.searcher.search(scope, request.search)
            except CollectionNotFound:  # no document was ever added: nothing to find
                result = KnowledgeSearchResult(passages=[])
            lines = k.lines(1, result.embedding_tokens)
            k.meter(
                request_id=uuid7(),
                tenant=request.tenant,
                key_id=request.key_id,
                lines=lines,
                started_at=started,
            )
            k.charge(request.tenant, request.key_id, lines)
            return result
        if op == "list":
            try:
                docs = await k.store.list_documents(scope, request.offset, request.limit)
            except CollectionNotFound:
                docs = []
            return {
                "object": "list",
                "data": [_summary(d).model_dump(mode="json", by_alias=True) for d in docs],
                "offset": request.offset,
                "limit": request.limit,
            }
        if op in ("get", "delete"):
            if not request.docid:
                raise errors.InvalidRequest("Which document? 'docid' is missing.", param="docid")
            if op == "get":
                try:
                    states = await k.store.document_states(scope, [request.docid])
                except CollectionNotFound:
                    states = {}
                if request.docid not in states:
                    raise _no_document(request.docid)
                return _summary(states[request.docid])
            try:
                gone = await k.store.delete_document(scope, request.docid)
            except CollectionNotFound:
                gone = False
            if not gone:
                raise _no_document(request.docid)
            await k.store.flush()
            return {"docid": request.docid, "object": "document", "deleted": True}
        # drop
        return {"collection": request.collection, "object": "collection.data", "deleted": await k.drop(scope)}

    def _meter(self, request: KnowledgeRequest, report: IngestReport, started: datetime) -> None:
        lines = self.knowledge.lines(0, report.embedding_tokens)
        self.knowledge.meter(
            request_id=uuid7(), tenant=request.tenant, key_id=request.key_id, lines=lines, started_at=started
        )
        self.knowledge.charge(request.tenant, request.key_id, lines)


def _no_document(docid: str) -> errors.NotFound:
    err = errors.NotFound(f"No document '{docid}' exists in this collection.", param="docid")
    err.code = "document_not_found"
    return err


def _no_collection(ref: str) -> errors.NotFound:
    err = errors.NotFound(
        f"No collection '{ref}' exists or you do not have access to it.", param="collection"
    )
    err.code = "collection_not_found"
    return err
