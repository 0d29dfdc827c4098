"""A gateway's upstream and its fallback chain: retries, then the next upstream, then the error.

An attempt that fails before anything reached the client and before the upstream started
answering (so no answer is ever mixed or billed twice) is tried again: on the same upstream, or on
the next of the chain, as `retry.py` decides for its fault; never for a request the upstream
refused (4xx other than 408, 409, 429). An answer from a fallback names the upstream that answered
(`x-aigw-fallback`, `model`) and is priced as that upstream. Each attempt has its own timeouts
(`timeouts.py`); the request's deadline bounds them all, and no retry waits past it. Each attempt
goes to one of the upstream's deployments (`balance.py`), and its outcome feeds that deployment's
circuit breaker (`circuits.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from aigw_contracts import UpstreamTarget, headers
from aigw_contracts.errors import (
    DeadlineExceeded,
    GatewayError,
    RateLimited,
    Unavailable,
    UpstreamError,
)
from aigw_runtime import telemetry

from . import observe
from .balance import RATE_LIMIT_PAUSE_S, Pick, admitted, pick, reopens_in
from .circuits import Circuits
from .limits import RESPONSE_TOO_LARGE
from .retry import MIN_ATTEMPT_S, Verdict, verdict, wait_before_retry
from .state import CallState
from .upstream import UpstreamStatusError

log = logging.getLogger("aigw.worker.call")


def record(circuits: Circuits, chosen: Pick, err: GatewayError) -> None:
    """What an attempt's error says about its deployment's circuit (`circuits.py`)."""
    circuit = chosen.circuit
    if isinstance(err, RateLimited):
        circuits.pause(circuit, err.retry_after if err.retry_after is not None else RATE_LIMIT_PAUSE_S)
    elif (
        isinstance(err, UpstreamStatusError)
        and err.upstream_status < 500
        and err.code != "upstream_auth_failed"
    ):
        circuits.succeeded(circuit)  # it answered: the request was refused, not the upstream down
    elif isinstance(err, DeadlineExceeded) or (
        isinstance(err, UpstreamError) and err.code not in ("upstream_not_configured", RESPONSE_TOO_LARGE)
    ):
        circuits.failed(circuit)  # 5xx, connection failed or cut, malformed answer, timeout, refused key
    else:
        circuits.release(circuit)


async def answer_with_fallbacks(
    state: CallState, attempt: Callable[[float], Awaitable[None]], remaining: float
) -> None:
    """`attempt(remaining)` on the route's upstream, retried and then moved down the gateway's
    chain while it fails in a way another attempt may not. Each attempt goes to a deployment of
    its upstream picked by `balance.pick`; an upstream none of whose deployments takes requests now
    (circuits open, rate limits used up) is skipped, and when nothing in the chain is left (the last
    upstream's circuits all open), the request is answered 503 at once."""
    route = state.route
    settings = state.worker.settings
    circuits = state.worker.circuits
    budget = settings.upstream_retry_budget  # retries left for the whole request
    retries = 0  # of the current upstream
    avoid: set[str] = set()  # deployments of the current upstream that just failed
    skipped: list[UpstreamTarget] = []
    fallbacks_used = 0
    state.upstream_began = time.perf_counter()
    while True:
        target = route.upstream
        chosen = pick(target, circuits, avoid)
        if chosen is None and not route.fallbacks:
            # the last upstream: only open circuits keep it from being tried; a used-up rate
            # limit is the upstream's to answer (its 429 and Retry-After reach the client)
            chosen = pick(target, circuits, avoid, paused_too=True)
        if chosen is None:
            skipped.append(target)
            if not route.fallbacks or remaining < MIN_ATTEMPT_S:
                raise Unavailable(
                    "No upstream of this gateway can take a request now (circuit open after repeated "
                    "failures); retry later",
                    retry_after=reopens_in(skipped, circuits),
                )
            _next(state, target, None)
            retries, avoid = 0, set()
            fallbacks_used += 1
            continue
        state.deployment = chosen
        try:
            await _measured(state, attempt, remaining, retries, fallbacks_used)
        except GatewayError as err:
            record(circuits, chosen, err)
            if state.accepted or state.events.seq:
                raise  # part of the answer is out (or billed): the error ends it
            kind = verdict(err)
            if kind is Verdict.STOP:
                raise
            remaining = state.envelope.remaining()
            fallbacks = route.fallbacks
            allowed = target.max_retries if target.max_retries is not None else settings.upstream_max_retries
            avoid.add(chosen.name)
            # another deployment of the same upstream is worth a retry even after a timeout, and
            # needs no wait: its rate limit and its health are its own
            elsewhere = admitted(target, circuits, avoid)
            again = kind is Verdict.RETRY or elsewhere or (kind is Verdict.NEXT and not fallbacks)
            if again and retries < allowed and budget > 0:
                delay = 0.0 if elsewhere else wait_before_retry(err, retries, settings)
                if delay is not None and delay < remaining - MIN_ATTEMPT_S:
                    retries += 1
                    budget -= 1
                    observe.RETRIES.labels(target.id).inc()
                    log.info(
                        "upstream failed before answering; retrying it",
                        extra={
                            "request_id": state.request_id,
                            "upstream": target.id,
                            "deployment": chosen.name,
                            "status": err.status,
                            "code": err.code,
                            "retry": retries,
                            "delay_s": round(delay, 3),
                        },
                    )
                    if delay:
                        await asyncio.sleep(delay)
                    remaining = state.envelope.remaining()
                    continue
            if not fallbacks or remaining < MIN_ATTEMPT_S:
                raise
            _next(state, target, err)
            retries, avoid = 0, set()
            fallbacks_used += 1
        except BaseException:
            circuits.release(chosen.circuit)  # cancelled: no verdict on the upstream
            raise
        else:
            circuits.succeeded(chosen.circuit)
            return


def _next(state: CallState, target: UpstreamTarget, err: GatewayError | None) -> None:
    """On to the next upstream of the gateway's chain."""
    route = state.route
    following = route.fallbacks.pop(0)
    log.info(
        "upstream failed before answering; trying the next in the gateway's chain"
        if err is not None
        else "upstream's circuits are open; trying the next in the gateway's chain",
        extra={
            "request_id": state.request_id,
            "upstream": target.id,
            "status": err.status if err is not None else 503,
            "code": err.code if err is not None else "circuit_open",
            "fallback": following.id,
        },
    )
    route.upstream = following  # the answer's `model` follows (`state.answer_model`)
    state.events.first_header(headers.FALLBACK, following.id)
    observe.FALLBACKS.labels(route.gateway_slug or "").inc()


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
