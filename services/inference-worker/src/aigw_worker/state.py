"""One request's state while the worker answers it, shared by the modules that each handle one part
of the answer: `fallback.py` (the gateway's chain), `relay.py` (streamed answers), `complete.py`
(whole answers), `toolloop.py` (the knowledge tool's rounds) and `accounting.py` (usage). `call.py`
runs the request's lifecycle on top of it.
"""

from __future__ import annotations

import time

import httpx
from opentelemetry import trace

from aigw_contracts import ChatEnvelope, RoutedCall, UpstreamTarget
from aigw_contracts.knowledge import Grounding
from aigw_runtime import telemetry

from . import observe
from .accounting import Ledger
from .balance import Pick, exhausted_for
from .context import WorkerContext
from .events import Events
from .knowledge_tool import KnowledgeLoop
from .providers import Adapter, Prepared, adapter_for
from .timeouts import Limits


def answer_model(target: UpstreamTarget) -> str:
    """What `model` says in an answer from `target`: a catalog model's tag (`@openai/gpt-5-mini`,
    what the client may call directly), an own endpoint's model name (its upstream id is an
    internal UUID). Decided here from the upstream that actually answers, so a fallback's answer
    names the fallback, whatever the router put in `RoutedCall.response_model`."""
    return target.model if target.kind == "own" else target.id


class CallState:
    def __init__(self, worker: WorkerContext, envelope: ChatEnvelope, route: RoutedCall) -> None:
        self.worker = worker
        self.envelope = envelope
        self.route = route
        self.request_id = envelope.request_id
        self.stream = bool(envelope.request.stream)
        self.events = Events(worker, envelope.reply, route)
        self.arrived = time.monotonic()
        self.created = int(time.time())
        self.accepted = False  # the upstream answered 2xx: it has read (and bills) the prompt
        self.completed = False
        self.ttft_ms: float | None = None
        # perf_counter at the first upstream call and at the upstream's first token (Server-Timing).
        self.upstream_began: float | None = None
        self.first_token_at: float | None = None
        # A `QueryFunction` gateway's tool loop.
        self.loop: KnowledgeLoop | None = None
        if route.knowledge_tool is not None and worker.bus is not None:
            self.loop = KnowledgeLoop(route.knowledge_tool, envelope, worker.bus, route.prefill)
        self.ledger = Ledger(self.request_id, route, self.loop)
        self.deployment: Pick | None = None  # where the current attempt goes (`fallback.py` picks)
        self.events.timing = self.timing

    def target(self) -> UpstreamTarget:
        """The current upstream as the current attempt calls it: at the picked deployment's URL."""
        target, pick = self.route.upstream, self.deployment
        if pick is not None and pick.base_url and pick.base_url != target.base_url:
            return target.model_copy(update={"base_url": pick.base_url})
        return target

    def prepare(self, stream: bool) -> Prepared:
        """The current attempt's request as its upstream's wire format wants it."""
        return self.adapter.prepare(self.target(), self.route.body, stream)

    async def build(
        self, prepared: Prepared, remaining: float, stream: bool, limits: Limits
    ) -> httpx.Request:
        """The current attempt's upstream request, to the picked deployment with its key."""
        pick = self.deployment
        return await self.worker.upstream.build(
            self.target(),
            prepared,
            remaining,
            stream,
            limits,
            self.adapter,
            api_key=pick.api_key if pick else None,
        )

    def headers_seen(self, headers: httpx.Headers) -> None:
        """An upstream answer's headers: a deployment whose rate limit is used up is paused."""
        pick = self.deployment
        if pick is not None:
            seconds = exhausted_for(headers)
            if seconds is not None:
                self.worker.circuits.pause(pick.circuit, seconds)

    def first_token(self) -> None:
        """The upstream's first token (a whole answer's headers) of the current attempt."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if telemetry.tracing.on:
            trace.get_current_span().add_event("first_token")

    def timing(self, final: bool) -> str:
        """The stages so far, for the request's first event: the router's and retrieval's, the
        upstream's time to first token and, when that event is the final one, the relay."""
        began, first = self.upstream_began, self.first_token_at
        ttft = (first - began) * 1000 if began is not None and first is not None else None
        relay = (time.perf_counter() - first) * 1000 if final and first is not None else None
        return observe.timing(self.envelope.stages, ttft, relay)

    @property
    def response_model(self) -> str:
        """What `model` says in the answer (and in each of its stream chunks)."""
        return answer_model(self.route.upstream)

    def grounding(self) -> list[Grounding]:
        """The passages that grounded the answer: injected ones, then those the tool loop found."""
        if self.loop is None:
            return self.route.grounding
        return [*self.route.grounding, *self.loop.grounding]

    @property
    def adapter(self) -> Adapter:
        """The wire format of the current upstream (a fallback may speak another)."""
        return adapter_for(self.route.upstream)
