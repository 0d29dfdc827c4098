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
import time
from collections.abc import Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from aigw_contracts import headers
from aigw_contracts.errors import GatewayError
from aigw_runtime import telemetry

from . import observe
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
    fallbacks_used = 0
    state.upstream_began = time.perf_counter()
    while True:
        try:
            await _measured(state, attempt, remaining, retries, fallbacks_used)
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
                    observe.RETRIES.labels(target.id).inc()
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
            fallbacks_used += 1
            observe.FALLBACKS.labels(route.gateway_slug or "").inc()
            route.upstream = following  # the answer's `model` follows (`state.answer_model`)
            state.events.first_header(headers.FALLBACK, following.id)


async def _measured(
    state: CallState, attempt: Callable[[float], Awaitable[None]], remaining: float, retry: int, fallback: int
) -> None:
    """One attempt, counted by outcome and timed; with tracing on, a span of its own (each retry
    and fallback is one), current while it runs so the upstream call carries its `traceparent`."""
    upstream = state.route.upstream.id
    began = time.perf_counter()
    err: BaseException | None = None
    try:
        if telemetry.tracing.on and trace.get_current_span().is_recording():
            attributes: dict[str, str | int] = {
                "aigw.upstream": upstream,
                "aigw.retry": retry,
                "aigw.fallback": fallback,
            }
            with telemetry.tracing.tracer.start_as_current_span(
                "upstream.attempt", kind=SpanKind.CLIENT, attributes=attributes
            ):
                await attempt(remaining)
        else:
            await attempt(remaining)
    except BaseException as exc:
        err = exc
        raise
    finally:
        observe.ATTEMPTS(upstream, observe.outcome(err)).inc()
        observe.DURATION(upstream).observe(time.perf_counter() - began)
