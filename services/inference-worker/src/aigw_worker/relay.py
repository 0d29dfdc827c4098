"""A streamed answer: the upstream's SSE in, the client's numbered delta events out as they come.

Each network read becomes at most one client event (`assemble.StreamAssembler` coalesces it); the
`final` event closes the stream with the finish reason, usage, `generation_context` and the
citation annotations of a grounded answer.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from aigw_contracts.errors import UpstreamError

from .assemble import StreamAssembler
from .chunks import ChunkWriter
from .citations import citation_annotations
from .state import CallState
from .timeouts import AttemptClock, limits_for
from .toolloop import streamed_rounds
from .upstream import body_chunks, transport_error


async def relay_answer(state: CallState, remaining: float) -> None:
    """The whole streamed answer, across the tool loop's rounds, ending in the `final` event."""
    route = state.route
    writer = ChunkWriter(
        f"chatcmpl-{state.request_id}",
        state.created,
        state.response_model,
        state.envelope.request.include_usage,
    )
    hide = state.loop.tool.name if state.loop is not None else None
    first = StreamAssembler(writer, route.prefill, hide, keep=bool(route.grounding))
    first = await relay_round(state, first, remaining)
    assembler, spoken = await streamed_rounds(
        state, first, lambda after: relay_round(state, after, state.envelope.remaining())
    )
    finishes = assembler.finish_reasons()
    if finishes.get(0) == "tool_calls" and not assembler.shown_tools:
        # only knowledge calls the loop could not run: nothing for the client to call
        finishes[0] = "stop"
    ledger = state.ledger
    usage = ledger.price(assembler.usage)
    grounding = state.grounding()  # no grounding (most requests): no answer text is joined
    context = ledger.context(grounding)
    cited: dict[int, list[dict[str, Any]]] | None = None
    if grounding:
        texts = {**assembler.said_by(), 0: "".join(spoken)}
        prefill = route.prefill or ""
        cited = {i: citation_annotations(prefill + text, grounding) for i, text in texts.items()}
    await state.events.final(writer.final(finishes, usage, context, cited))
    state.completed = True


async def relay_round(state: CallState, assembler: StreamAssembler, remaining: float) -> StreamAssembler:
    """One streamed upstream call, its deltas relayed to the client as they come. The upstream has
    accepted the request (`state.accepted`: it bills it) once its first event came; before that,
    a failure may be retried (`fallback.py`)."""
    upstream = state.worker.upstream
    limits = limits_for(state.worker.settings, state.route, True, remaining)
    clock = AttemptClock(limits)
    adapter = state.adapter
    events = state.events
    ledger = state.ledger
    watch_idle = limits.idle_on_clock  # else the transport keeps the idle gap: nothing per read
    started = False
    try:
        async with clock.scope:
            prepared = state.prepare(True)
            parser = adapter.decoder(state.worker.settings.upstream_max_sse_line_bytes, prepared)
            request = await state.build(prepared, remaining, True, limits)
            response = await upstream.open(request, adapter, state.headers_seen)
            try:
                try:
                    async for raw in body_chunks(response):
                        parsed = parser.feed(raw)
                        payloads = assembler.feed(parsed)
                        if started:
                            if watch_idle:
                                clock.read()
                        elif parsed:
                            started = True
                            clock.first_token()
                            state.first_token()
                            state.accepted = True
                        for payload in payloads:
                            if state.ttft_ms is None:
                                state.ttft_ms = (time.monotonic() - state.arrived) * 1000
                            await events.delta(payload)
                        ledger.completion_chars = assembler.completion_chars
                except httpx.HTTPError as exc:
                    raise transport_error(exc) from None
                tail = parser.close()
                if not started and not tail:  # nothing billed, nothing out: worth another attempt
                    raise UpstreamError("The upstream model ended the stream without answering")
                payloads = assembler.feed(tail) + assembler.close()
                state.accepted = True
                for payload in payloads:
                    await events.delta(payload)
                ledger.completion_chars = assembler.completion_chars
                if not assembler.done and assembler.finish_reason is None:
                    raise UpstreamError("The upstream model ended the stream before finishing its answer")
            finally:
                ledger.completion_chars = assembler.completion_chars
                await response.aclose()
    except TimeoutError:
        if not clock.expired():
            raise
        raise clock.error() from None
    return assembler
