"""A gateway's fallback chain: when its upstream fails before answering, the next one answers.

Only while nothing has reached the client and no upstream has accepted the request (so no answer is
ever mixed or billed twice), and only for faults another upstream may not have (429, 5xx,
unreachable, no answer in time), never for a request the upstream rejected (4xx). The answer then
names the upstream that answered (`x-aigw-fallback`, `model`) and is priced as that upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aigw_contracts import headers
from aigw_contracts.errors import GatewayError

from .state import CallState

log = logging.getLogger("aigw.worker.call")

# Statuses of upstream faults a gateway's fallback chain answers.
FALLBACK_ON = frozenset({429, 500, 502, 503, 504})


async def answer_with_fallbacks(
    state: CallState, attempt: Callable[[float], Awaitable[None]], remaining: float
) -> None:
    """`attempt(remaining)` on the route's upstream, then on each fallback in turn while it fails
    in a way the next may not."""
    route = state.route
    while True:
        try:
            await attempt(remaining)
            return
        except GatewayError as err:
            remaining = state.envelope.remaining()
            fallbacks = route.fallbacks
            if not fallbacks or state.accepted or state.events.seq or err.status not in FALLBACK_ON:
                raise
            if remaining <= 0:
                raise
            target = fallbacks.pop(0)
            log.info(
                "upstream failed before answering; trying the next in the gateway's chain",
                extra={
                    "request_id": state.request_id,
                    "upstream": route.upstream.id,
                    "status": err.status,
                    "code": err.code,
                    "fallback": target.id,
                },
            )
            route.upstream = target  # the answer's `model` follows (`state.answer_model`)
            state.events.first_header(headers.FALLBACK, target.id)
