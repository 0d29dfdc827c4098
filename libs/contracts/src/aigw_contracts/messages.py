"""Messages between services on the request path (version 1)."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .api import ROUTED, ChatCompletionRequest, ChatMessage, GeneratedUsage
from .config import Api, Deployment, Prices, Timeouts, Upstream
from .knowledge import GatewayKnowledge, Grounding, KnowledgeTool

_ROUTED_CONTEXT = {ROUTED: True}


class UpstreamTarget(BaseModel):
    """Everything a worker needs to call one upstream and price the call."""

    id: str  # upstream id, e.g. "@openai/gpt-5-mini"
    kind: Literal["catalog", "own"]
    provider: str
    model: str
    base_url: str
    # Own endpoints only, still sealed (secretbox): the worker opens it. Catalog keys stay in workers.
    api_key: str | None = Field(default=None, repr=False)
    prices: Prices  # already zero for own endpoints
    timeouts: Timeouts | None = None  # the upstream's own (`Upstream.timeouts`)
    max_retries: int | None = None  # the upstream's own (`Upstream.max_retries`)
    # Bounds what one call may generate: what spend control holds when a request sets no max_tokens.
    context_window: int | None = None
    api: Api | None = None  # the wire format it speaks (`Upstream.api`); None: OpenAI's
    deployments: list[Deployment] = Field(default_factory=list)  # `Upstream.deployments`, keys sealed

    @classmethod
    def of(cls, upstream: Upstream) -> UpstreamTarget:
        """The call target of a configured upstream, priced as billed (own endpoints at 0)."""
        return cls(
            id=upstream.id,
            kind=upstream.kind,
            provider=upstream.provider,
            model=upstream.model,
            base_url=upstream.base_url,
            api_key=upstream.api_key,
            prices=upstream.billed_prices(),
            timeouts=upstream.timeouts,
            max_retries=upstream.max_retries,
            context_window=upstream.context_window,
            api=upstream.api,
            deployments=upstream.deployments,
        )


class RoutedCall(BaseModel):
    """What the router decided: which upstream, with which body."""

    gateway_id: str | None = None  # None when a catalog model was called directly
    gateway_slug: str | None = None
    upstream: UpstreamTarget
    body: dict[str, Any]  # upstream request body without `model`, `stream`, `stream_options`
    prefill: str | None = None  # the answer starts with it; the upstream continues it
    params_used: dict[str, Any] = Field(default_factory=dict)
    response_model: str  # what `model` says in responses: the upstream's catalog tag
    # Set by the router for gateways with knowledge; the retrieval service then fills the two below.
    knowledge: GatewayKnowledge | None = None
    # The gateway's fallback chain, in order (see `Gateway.fallbacks`).
    fallbacks: list[UpstreamTarget] = Field(default_factory=list)
    # `QueryFunction` gateways: the search tool the worker answers itself (its definition is
    # already in `body["tools"]`); set by the retrieval service instead of injecting passages.
    knowledge_tool: KnowledgeTool | None = None
    # Passages injected into `body` (the worker reports them in `generation_context.grounding`).
    grounding: list[Grounding] = Field(default_factory=list)
    # Lines priced before the worker (knowledge search, embeddings, rewrites), listed in the
    # response's `generated_usage` ahead of the worker's own; each producer meters its own lines.
    prior_usage: list[GeneratedUsage] = Field(default_factory=list)
    # `query_rewrite`: a resolver-model call made by the retrieval service for a rewrite strategy;
    # the worker prices it under the `inference.resolving.query_rewrite.*` SKUs and meters it as
    # source "rewrite", so it is billed once, apart from the answer itself. `rerank`: the same for
    # the `model` reranker's call (`inference.resolving.rerank.*`, source "rerank").
    # `routing`: the router's complexity classification (`inference.resolving.routing_complexity.*`).
    purpose: Literal["chat", "query_rewrite", "rerank", "routing"] = "chat"
    # The level an auto-routing gateway's classifier gave (the worker tells the client in a header).
    routed_complexity: Literal["low", "medium", "high"] | None = None
    # Where the client's own messages sit in `body["messages"]` as the router built it ([start, end)):
    # past the router they travel only there (see `ChatEnvelope.forward_json`).
    client_span: tuple[int, int] | None = None
    # The gateway's timeouts (`Gateway.timeouts`), over each upstream's own.
    timeouts: Timeouts | None = None


class ChatEnvelope(BaseModel):
    """A chat completion on its way from the edge to a worker. Tenant comes from the key, never the body."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    request_id: str
    tenant: str
    key_id: str
    key_kind: Literal["private", "public"] = "private"
    reply: str  # the subject the edge reads this request's stream events from
    deadline: float  # unix seconds; past it, nobody should start work on this request
    received_at: float = Field(default_factory=time.time)
    trace: dict[str, str] = Field(default_factory=dict)  # W3C traceparent / tracestate
    request: ChatCompletionRequest
    route: RoutedCall | None = None
    # Milliseconds each stage took before the worker (`route`, `retrieve`), each measured by the
    # service that ran it; the worker reports them with its own on the answer's first event
    # (`headers.TIMING`). Left out of the JSON while unset.
    stages: dict[str, float] | None = None

    def stage(self, name: str, ms: float) -> None:
        """Record that stage `name` took `ms` milliseconds (added up when it ran more than once)."""
        stages = self.stages if self.stages is not None else {}
        stages[name] = stages.get(name, 0.0) + ms
        self.stages = stages

    def remaining(self, now: float | None = None) -> float:
        return self.deadline - (time.time() if now is None else now)

    @classmethod
    def routed(cls, data: bytes | str) -> ChatEnvelope:
        """An envelope as the router forwards it (`forward_json`): its request carries no messages."""
        return cls.model_validate_json(data, context=_ROUTED_CONTEXT)

    def forward_json(self) -> bytes:
        """The envelope for the next hop, the conversation sent once: the upstream body in `route`
        holds the client's messages (with instructions, prefill and passages), so `request` travels
        without them when `route.client_span` says where they are. A long prompt otherwise took
        twice its size on the bus."""
        recoverable = self.route is not None and self.route.client_span is not None
        exclude: Any = {"request": {"messages"}} if recoverable else None
        return self.model_dump_json(exclude_none=True, exclude=exclude).encode()

    def client_messages(self) -> list[ChatMessage]:
        """The client's own messages: from the request, or, past the router, from the upstream body."""
        if self.request.messages or self.route is None or self.route.client_span is None:
            return self.request.messages
        start, end = self.route.client_span
        return [ChatMessage.model_validate(m) for m in self.route.body.get("messages", [])[start:end]]


class CancelRequest(BaseModel):
    request_id: str
    reason: str = "client_disconnected"


class ModelsQuery(BaseModel):
    tenant: str
    key_kind: Literal["private", "public"] = "private"
