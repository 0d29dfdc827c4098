"""Calls of a gateway's resolver model on the request path (query rewriting, model reranking).

The call goes to the inference workers like any completion (they hold the providers' credentials),
with a `purpose` that makes the worker price it under its own SKUs and meter it under the request's
id as a source of its own (`rewrite`, `rerank`), so it is billed once, apart from the answer. Its
lines come back in the completion's `generation_context`, to be listed in the final response.

The model is the gateway's `knowledge.resolver` when set (a catalog model, or one of the tenant's
own endpoints), else the gateway's own model.

A resolver call may take `AIGW_RESOLVER_TIMEOUT` seconds (3 by default), not the request's whole
deadline: past that the worker stops it (`workercall.model_call`'s `limit`; nothing is billed unless
the resolver answered) and the call fails with `ResolverTimeout`, on which the request goes on
without it (`rewrite.py`: the plain query; `rerank.py`: the fused order).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aigw_contracts import (
    ChatEnvelope,
    GeneratedUsage,
    UpstreamTarget,
    errors,
)
from aigw_contracts.catalog import builtin_catalog
from aigw_contracts.config import Upstream
from aigw_contracts.knowledge import GatewayKnowledge
from aigw_runtime.workercall import answer_wait, completion_of, model_call

TIMEOUT = 3.0  # seconds a resolver call may take (`AIGW_RESOLVER_TIMEOUT`)

# Sends an envelope to the worker pool and returns its first event: (headers, payload).
AskWorker = Callable[[ChatEnvelope, float], Awaitable[tuple[dict[str, str], bytes]]]

_CATALOG = {u.id: u for u in builtin_catalog()}


class ResolverTimeout(errors.DeadlineExceeded):
    """The resolver did not answer within `AIGW_RESOLVER_TIMEOUT`: the caller goes on without it."""


class ResolverCalls:
    def __init__(
        self, upstreams: dict[str, Upstream], ask: AskWorker | None, timeout: float = TIMEOUT
    ) -> None:
        self.upstreams = upstreams  # the watched config view's upstreams
        self.ask = ask
        self.timeout = timeout

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
        the error the request gets when the call fails. `ResolverTimeout` when it was too slow."""
        if self.ask is None:
            raise errors.Unavailable("Resolver model calls need the message bus")
        call = model_call(envelope, self.target(envelope, knowledge), messages, purpose, limit=self.timeout)
        try:
            event, payload = await self.ask(call, answer_wait(call))
            return completion_of(event, payload, failure)
        except errors.DeadlineExceeded as err:  # the worker stopped it at the limit, or never said
            raise ResolverTimeout(f"{failure[0]}: {err.message}", param=failure[1]) from None
