"""What one request consumed: its upstream calls' usage, priced, and the usage events it publishes.

A request may call its upstream several times (a `QueryFunction` gateway's tool loop): each
round's usage joins the request's total, and the request is priced once, as the upstream that
answered. When an upstream reports no usage, tokens are estimated from the text (`pricing.py`) and
the lines say so. The lines in the client's answer and in the usage event are the same lines.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from aigw_contracts import ChatEnvelope, GeneratedUsage, GenerationContext, RoutedCall, Usage, UsageEvent
from aigw_contracts.knowledge import KNOWLEDGE_UPSTREAM, Grounding

from .knowledge_tool import KnowledgeLoop
from .pricing import (
    MAX_REPORTED_TOKENS,
    SOURCES,
    add_usage,
    checked_usage,
    estimated_usage,
    merge_lines,
    price_lines,
    prompt_chars,
)

log = logging.getLogger("aigw.worker.accounting")

Status = Literal["completed", "failed", "cancelled"]


class Ledger:
    """One request's usage so far. `completion_chars` counts the current round's generated text,
    for an estimate when its upstream reports no usage."""

    __slots__ = (
        "completion_chars",
        "earlier",
        "earlier_estimated",
        "estimated",
        "lines",
        "loop",
        "request_id",
        "route",
        "usage",
    )

    def __init__(self, request_id: str, route: RoutedCall, loop: KnowledgeLoop | None) -> None:
        self.request_id = request_id
        self.route = route  # read when pricing: a fallback may have changed its upstream
        self.loop = loop
        self.usage: Usage | None = None
        self.lines: list[GeneratedUsage] = []
        self.estimated = False
        self.completion_chars = 0
        # The usage of a tool loop's rounds before the current one.
        self.earlier: Usage | None = None
        self.earlier_estimated = False

    def _round_usage(self, raw: Any) -> Usage:
        """This upstream call's usage, estimated (and marked so) when the upstream sent none."""
        usage, fixed = checked_usage(raw)
        if fixed:
            # Billed (and shown to the client) as corrected; the upstream's numbers are kept here.
            log.warning(
                "upstream reported impossible usage; recorded within bounds",
                extra={
                    "request_id": self.request_id,
                    "upstream": self.route.upstream.id,
                    "upstream_kind": self.route.upstream.kind,
                    "corrections": fixed,
                    "max_tokens": MAX_REPORTED_TOKENS,
                },
            )
        if usage is None:
            self.earlier_estimated = True
            return estimated_usage(prompt_chars(self.route.body), self.completion_chars)
        return usage

    def next_round(self, raw: Any) -> None:
        """A tool-loop round ended (`raw`: its upstream's usage object): its usage joins the
        request's, its text count starts over."""
        self.earlier = add_usage(self.earlier, self._round_usage(raw))
        self.completion_chars = 0

    def price(self, raw: Any) -> Usage:
        """The request's usage, with the last round's (`raw`), priced as the upstream that answered."""
        usage = add_usage(self.earlier, self._round_usage(raw))
        self.usage, self.estimated = usage, self.earlier_estimated
        target = self.route.upstream
        self.lines = price_lines(usage, target.prices, target.id, self.estimated, self.route.purpose)
        return usage

    def context(self, grounding: list[Grounding]) -> GenerationContext:
        """`generation_context` of the answer: every line of the request (those priced before the
        worker and the knowledge searches first; each producer meters only its own), the tool
        loop's calls and the passages that grounded the answer."""
        loop = self.loop
        tool_lines = merge_lines(loop.lines) if loop is not None else []
        context = GenerationContext(
            generated_usage=[*self.route.prior_usage, *tool_lines, *self.lines],
            runned_functions=loop.functions if loop is not None else [],
        )
        if grounding:
            context.grounding = [g.model_dump(exclude_none=True) for g in grounding]  # type: ignore[attr-defined]
        return context

    def usage_events(
        self, envelope: ChatEnvelope, status: Status, arrived: float, ttft_ms: float | None
    ) -> list[UsageEvent]:
        """The usage events of a request an upstream accepted: the answer's, then the tool loop's
        searches (metered as retrieval's)."""
        if self.usage is None:
            self.price(None)  # a stream that broke: bill what was produced, estimated
        route = self.route
        target = route.upstream
        event = UsageEvent(
            request_id=envelope.request_id,
            source=SOURCES[route.purpose],
            tenant=envelope.tenant,
            key_id=envelope.key_id,
            gateway_id=route.gateway_id,
            upstream=target.id,
            upstream_kind=target.kind,
            model=target.model,
            lines=self.lines,
            metadata=envelope.request.metadata or {},
            status=status,
            started_at=datetime.fromtimestamp(envelope.received_at, UTC),
            latency_ms=round((time.monotonic() - arrived) * 1000, 3),
            ttft_ms=round(ttft_ms, 3) if ttft_ms is not None else None,
        )
        events = [event]
        loop = self.loop
        if loop is not None and loop.lines:
            events.append(
                event.model_copy(
                    update={
                        "source": "retrieval",
                        "upstream": KNOWLEDGE_UPSTREAM,
                        "upstream_kind": "catalog",
                        "model": loop.tool.name,
                        "lines": merge_lines(loop.lines),
                        "ttft_ms": None,
                    }
                )
            )
        return events
