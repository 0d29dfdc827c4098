"""The request path: a routed envelope of a gateway with knowledge in, the grounded envelope out.

For each envelope (`route.knowledge` set by the router):

1. the conversation becomes search terms by the gateway's strategy (`query.py`; the rewrite
   strategies ask a resolver model through the workers first, `rewrite.py`); `QueryFunction`
   gateways skip steps 1–3: the model gets a search tool instead, answered by the worker's tool
   loop through `tool.py`;
2. the gateway's collection is searched for the envelope's tenant (from the caller's key; the
   store applies it inside the query, so no query can reach another tenant's passages);
3. the passages go into `route.body["messages"]` as fenced, untrusted data (`inject.py`), their ids
   into `route.grounding` (the worker reports them in the response), and the priced knowledge lines
   into `route.prior_usage` (the worker lists them in `generated_usage`; this service meters them);
4. the envelope goes on to `WORKER_CHAT` with the reply set to a bounce subject of this replica: if
   no worker listens, nats-server bounces a 503 status there and `bounce` turns it into an error
   event for the edge.

Every failure ends in an error event on the envelope's reply subject: the edge never waits in vain.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from aigw_contracts import ChatEnvelope, GeneratedUsage, errors, headers, subjects
from aigw_contracts.knowledge import Collection, Grounding, KnowledgeSearch, KnowledgeSearchResult
from aigw_runtime import telemetry
from aigw_runtime.bus import DEFAULT_MAX_PAYLOAD, Outgoing, error_outgoing

from .inject import inject_into_body
from .query import UnsupportedStrategy, query_terms
from .rerank import ModelReranker, candidates
from .rewrite import REWRITE_STRATEGIES, Rewriter
from .search import UnsupportedReranker
from .service import Knowledge
from .stores import CollectionNotFound, Scope
from .tool import offer_tool

log = logging.getLogger("aigw.retrieval.chat")


class Grounder:
    def __init__(
        self,
        knowledge: Knowledge,
        retrieval_id: str,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        rewriter: Rewriter | None = None,
        reranker: ModelReranker | None = None,
    ) -> None:
        self.knowledge = knowledge
        self.retrieval_id = retrieval_id
        self.max_payload = max_payload
        self.rewriter = rewriter
        self.reranker = reranker

    async def chat(self, data: bytes) -> Outgoing | None:
        try:
            envelope = ChatEnvelope.routed(data)
        except ValueError:
            log.warning("dropped a malformed envelope")  # no reply subject we can trust
            return None
        started = datetime.now(UTC)
        began = time.perf_counter()
        try:
            with telemetry.request_span("retrieve", envelope.trace, **{"aigw.tenant": envelope.tenant}):
                out = await self._ground(envelope, started, began)
            return out
        except errors.GatewayError as err:
            return error_outgoing(envelope.reply, err)
        except Exception:
            log.exception("grounding failed", extra={"request_id": envelope.request_id})
            return error_outgoing(
                envelope.reply,
                errors.InternalError("The gateway could not search its knowledge for this request"),
            )

    async def _ground(self, envelope: ChatEnvelope, started: datetime, began: float) -> Outgoing:
        route = envelope.route
        if route is None or route.knowledge is None:
            raise errors.InternalError("The request reached the retrieval service without a knowledge route")
        if envelope.remaining() <= 0:
            raise errors.DeadlineExceeded("The request's deadline passed before its knowledge was searched")
        knowledge = route.knowledge
        k = self.knowledge
        if knowledge.strategy == "QueryFunction":
            collection = self._collection(envelope.tenant, knowledge.collection)
            scope = Scope(envelope.tenant, collection.id if collection is not None else knowledge.collection)
            offer_tool(envelope, knowledge, scope, collection)
            envelope.stage("retrieve", (time.perf_counter() - began) * 1000)
            return self._forward(envelope)
        rewrite_lines: list[GeneratedUsage] = []
        try:
            if knowledge.strategy in REWRITE_STRATEGIES:
                if self.rewriter is None:
                    raise errors.Unavailable("Query rewriting is not available in this retrieval service")
                terms, rewrite_lines = await self.rewriter.queries(envelope, knowledge)
                if not terms:  # the resolver said nothing usable: search the last user message
                    plain = knowledge.model_copy(update={"strategy": "Plain"})
                    terms = query_terms(envelope.client_messages(), plain, k.settings.max_query_chars)
            else:
                terms = query_terms(envelope.client_messages(), knowledge, k.settings.max_query_chars)
        except UnsupportedStrategy as exc:
            raise errors.InvalidRequest(f"This gateway's {exc}.", param="knowledge.strategy") from None
        collection = self._collection(envelope.tenant, knowledge.collection)
        scope = Scope(envelope.tenant, collection.id if collection is not None else knowledge.collection)
        result = KnowledgeSearchResult(passages=[])
        by_model = knowledge.reranker == "model"
        if by_model and self.reranker is None:
            raise errors.Unavailable("Model reranking is not available in this retrieval service")
        if terms:
            search = KnowledgeSearch(
                query=terms,
                top=candidates(knowledge.top) if by_model else knowledge.top,
                min_score=knowledge.min_score,
                reranker="rrf" if by_model else knowledge.reranker,
            )
            try:
                with telemetry.span("search", **{"aigw.terms": len(terms), "aigw.top": search.top}):
                    result = await k.searcher.search(scope, search)
            except CollectionNotFound:  # no document added yet: answer without passages
                pass
            except UnsupportedReranker as exc:
                raise errors.InvalidRequest(f"This gateway's {exc}.", param="knowledge.reranker") from None
        passages = result.passages
        lines = k.lines(1 if terms else 0, result.embedding_tokens)
        rerank_lines: list[GeneratedUsage] = []
        if by_model and passages:
            assert self.reranker is not None
            passages, rerank_lines = await self.reranker.rerank(envelope, knowledge, terms, passages)
        if passages:
            route.body["messages"] = inject_into_body(route.body.get("messages", []), passages)
            route.grounding = [Grounding.of(p) for p in passages]
        # The resolver's lines were metered by the worker that ran it; this service meters `lines`.
        route.prior_usage = [*route.prior_usage, *rewrite_lines, *lines, *rerank_lines]
        envelope.stage("retrieve", (time.perf_counter() - began) * 1000)
        out = self._forward(envelope)
        k.meter(
            request_id=envelope.request_id,
            tenant=envelope.tenant,
            key_id=envelope.key_id,
            gateway_id=route.gateway_id,
            lines=lines,
            started_at=started,
            metadata=envelope.request.metadata,
        )
        return out

    def _collection(self, tenant: str, ref: str) -> Collection | None:
        """The tenant's collection; another tenant's is a 404, exactly like an unknown one would be."""
        collection = self.knowledge.collection(tenant, ref)
        if collection is None and self.knowledge.foreign(tenant, ref):
            raise errors.NotFound(
                "This gateway's knowledge collection does not exist.", code="collection_not_found"
            )
        return collection

    def _forward(self, envelope: ChatEnvelope) -> Outgoing:
        """The envelope on to the workers, replies bounced here if none listens."""
        payload = envelope.forward_json()
        if len(payload) > self.max_payload:
            raise errors.PayloadTooLarge(
                "The conversation with its retrieved passages is larger than the message bus allows; "
                "send a shorter conversation or lower the gateway's knowledge `top`.",
                code="context_too_large",
            )
        return Outgoing(
            subjects.WORKER_CHAT,
            payload,
            telemetry.nats_headers(envelope.trace),
            reply=subjects.bounce_subject(self.retrieval_id, envelope.reply),
            fail_to=envelope.reply,
        )

    def bounce(self, subject: str, hdrs: dict[str, str] | None) -> Outgoing | None:
        """A no-responders bounce from the worker pool, as a 503 error event for the edge."""
        if (hdrs or {}).get(headers.NATS_STATUS) != headers.NO_RESPONDERS:
            return None
        reply = subjects.reply_from_bounce(self.retrieval_id, subject)
        return error_outgoing(
            reply, errors.Unavailable("No inference worker is available; try again shortly", retry_after=1)
        )
