"""Calls of a gateway's resolver model on the request path (query rewriting, model reranking).

The call goes to the inference workers like any completion (they hold the providers' credentials),
with a `purpose` that makes the worker price it under its own SKUs and meter it under the request's
id as a source of its own (`rewrite`, `rerank`), so it is billed once, apart from the answer. Its
lines come back in the completion's `generation_context`, to be listed in the final response.

The model is the gateway's `knowledge.resolver` when set (a catalog model, or one of the tenant's
own endpoints), else the gateway's own model.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aigw_contracts import (
    ChatCompletionRequest,
    ChatEnvelope,
    GeneratedUsage,
    RoutedCall,
    UpstreamTarget,
    errors,
)
from aigw_contracts import headers as hdr
from aigw_contracts.catalog import builtin_catalog
from aigw_contracts.config import Upstream
from aigw_contracts.events import EventKind
from aigw_contracts.knowledge import GatewayKnowledge

# Sends an envelope to the worker pool and returns its first event: (headers, payload).
AskWorker = Callable[[ChatEnvelope, float], Awaitable[tuple[dict[str, str], bytes]]]

_CATALOG = {u.id: u for u in builtin_catalog()}


class ResolverCalls:
    def __init__(self, upstreams: dict[str, Upstream], ask: AskWorker | None) -> None:
        self.upstreams = upstreams  # the watched config view's upstreams
        self.ask = ask

    def target(self, envelope: ChatEnvelope, knowledge: GatewayKnowledge) -> UpstreamTarget:
        assert envelope.route is not None
        if knowledge.resolver is None:
            return envelope.route.upstream  # the gateway's own model
        upstream = self.upstreams.get(knowledge.resolver) or _CATALOG.get(knowledge.resolver)
        if upstream is None or (upstream.kind == "own" and upstream.tenant != envelope.tenant):
            raise errors.Unavailable(
                "This gateway's query resolver model is not available", param="knowledge.resolver"
            )
        return UpstreamTarget.of(upstream)

    async def complete(
        self,
        envelope: ChatEnvelope,
        knowledge: GatewayKnowledge,
        messages: list[dict[str, Any]],
        purpose: Literal["query_rewrite", "rerank"],
        failure: tuple[str, str],
    ) -> tuple[str, list[GeneratedUsage]]:
        """The resolver's answer text and its priced lines; `failure` is (message prefix, param) of
        the error the request gets when the call fails."""
        if self.ask is None:
            raise errors.Unavailable("Resolver model calls need the message bus")
        target = self.target(envelope, knowledge)
        call = ChatEnvelope(
            request_id=envelope.request_id,
            tenant=envelope.tenant,
            key_id=envelope.key_id,
            key_kind=envelope.key_kind,
            reply="",  # set by `ask`
            deadline=envelope.deadline,
            trace=envelope.trace,
            request=ChatCompletionRequest(
                model=target.id, messages=messages, metadata=envelope.request.metadata
            ),
            route=RoutedCall(
                gateway_id=envelope.route.gateway_id if envelope.route else None,
                upstream=target,
                body={"messages": messages, "temperature": 0},
                response_model=target.id,
                purpose=purpose,
            ),
        )
        event, payload = await self.ask(call, envelope.remaining())
        if event.get(hdr.EVENT) != EventKind.FINAL:
            status = int(event.get(hdr.STATUS) or event.get(hdr.NATS_STATUS) or 502)
            try:
                detail = json.loads(payload)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                detail = "no answer"
            prefix, param = failure
            raise errors.error_for_status(status, f"{prefix}: {detail}", param=param)
        body: dict[str, Any] = json.loads(payload)
        content = body["choices"][0]["message"].get("content") or ""
        lines = [
            GeneratedUsage.model_validate(line) for line in body["generation_context"]["generated_usage"]
        ]
        return content, lines
