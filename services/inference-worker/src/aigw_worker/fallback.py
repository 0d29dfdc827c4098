"""A gateway's upstream and its fallback chain: retries, then the next upstream, then the error.

An attempt that fails before anything reached the client and before the upstream started
answering (so no answer is ever mixed or billed twice) is tried again: on the same upstream, or on
the next of the chain, as `retry.py` decides for its fault; never for a request the upstream
refused (4xx other than 408, 409, 429). An answer from a fallback names the upstream that answered
(`x-aigw-fallback`, `model`) and is priced as that upstream. Each attempt has its own timeouts
(`timeouts.py`); the request's deadline bounds them all, and no retry waits past it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aigw_contracts import headers
from aigw_contracts.errors import GatewayError

from .retry import MIN_ATTEMPT_S, Verdict, verdict, wait_before_retry
from .state import CallState

log = logging.getLogger("aigw.worker.call")


async def answer_with_fallbacks(
    state: CallState, attempt: Callable[[float], Awaitable[None]], remaining: float
) -> None:
    """`attempt(remaining)` on the route's upstream, retried and then moved down the gateway's
    chain while it fails in a way another attempt may not."""
    route = state.route
    settings = state.worker.settings
    budget = settings.upstream_retry_budget  # retries left for the whole request
    retries = 0  # of the current upstream
    while True:
        try:
            await attempt(remaining)
            return
        except GatewayError as err:
            if state.accepted or state.events.seq:
                raise  # part of the answer is out (or billed): the error ends it
            kind = verdict(err)
            if kind is Verdict.STOP:
                raise
            remaining = state.envelope.remaining()
            fallbacks = route.fallbacks
            target = route.upstream
            allowed = target.max_retries if target.max_retries is not None else settings.upstream_max_retries
            again = kind is Verdict.RETRY or (kind is Verdict.NEXT and not fallbacks)
            if again and retries < allowed and budget > 0:
                delay = wait_before_retry(err, retries, settings)
                if delay is not None and delay < remaining - MIN_ATTEMPT_S:
                    retries += 1
                    budget -= 1
                    log.info(
                        "upstream failed before answering; retrying it",
                        extra={
                            "request_id": state.request_id,
                            "upstream": target.id,
                            "status": err.status,
                            "code": err.code,
                            "retry": retries,
                            "delay_s": round(delay, 3),
                        },
                    )
                    await asyncio.sleep(delay)
                    remaining = state.envelope.remaining()
                    continue
            if not fallbacks or remaining < MIN_ATTEMPT_S:
                raise
            following = fallbacks.pop(0)
            log.info(
                "upstream failed before answering; trying the next in the gateway's chain",
                extra={
                    "request_id": state.request_id,
                    "upstream": target.id,
                    "status": err.status,
                    "code": err.code,
                    "fallback": following.id,
                },
            )
            retries = 0
            route.upstream = following  # the answer's `model` follows (`state.answer_model`)
            state.events.first_header(headers.FALLBACK, following.id)
