"""A whole (non-stream) answer: the upstream's JSON in, one `final` event with the client's
`ChatCompletion` out (the prefill prepended, citations annotated, usage priced)."""

from __future__ import annotations

import time
from typing import Any

from aigw_contracts.api import AssistantMessage, ChatCompletion, Choice
from aigw_contracts.errors import UpstreamError

from .citations import citation_annotations
from .state import CallState
from .timeouts import AttemptClock, limits_for
from .toolloop import whole_rounds


async def complete_answer(state: CallState, remaining: float) -> None:
    """The whole answer, across the tool loop's rounds, as the `final` event."""
    data = await fetch_answer(state, remaining)
    data = await whole_rounds(state, data, lambda left: fetch_answer(state, left))
    completion = to_completion(state, data)
    state.ttft_ms = (time.monotonic() - state.arrived) * 1000
    await state.events.final(completion.model_dump_json().encode())
    state.completed = True


async def fetch_answer(state: CallState, remaining: float) -> Any:
    """One whole upstream answer, parsed: its headers within the time to first token, all of it
    within the attempt's total (`timeouts.py`)."""
    upstream = state.worker.upstream
    limits = limits_for(state.worker.settings, state.route, False, remaining)
    clock = AttemptClock(limits)
    adapter = state.adapter
    try:
        async with clock.scope:
            prepared = state.prepare(False)
            request = await state.build(prepared, remaining, False, limits)
            response = await upstream.open(request, adapter, state.headers_seen)
            clock.first_token()
            state.first_token()
            content = await upstream.read_whole(response)
    except TimeoutError:
        if not clock.expired():
            raise
        raise clock.error() from None
    try:
        data = adapter.parse(content, prepared)
    except ValueError:  # not an answer (a proxy's page?): nothing billed, worth another attempt
        raise UpstreamError("The upstream model sent an answer that is not JSON") from None
    state.accepted = True
    return data


def to_completion(state: CallState, data: Any) -> ChatCompletion:
    """The client's answer from the upstream's; counts the generated text for an estimate."""
    raw_choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(raw_choices, list) or not raw_choices:
        raise UpstreamError("The upstream model sent an answer without choices")
    prefill = state.route.prefill or ""
    grounding = state.grounding()
    ledger = state.ledger
    choices: list[Choice] = []
    try:
        for position, raw in enumerate(raw_choices):
            message = dict(raw.get("message") or {})
            message["role"] = "assistant"
            content = message.get("content")
            if isinstance(content, str):
                ledger.completion_chars += len(content)
            if prefill and (content is None or isinstance(content, str)):
                message["content"] = prefill + (content or "")
            refusal = message.get("refusal")
            if isinstance(refusal, str):
                ledger.completion_chars += len(refusal)
            for name in ("annotations", "tool_calls"):  # null upstream: the seed's [] instead
                if message.get(name) is None:
                    message.pop(name, None)
            if grounding and isinstance(message.get("content"), str):
                cited = citation_annotations(message["content"], grounding)
                if cited:
                    message["annotations"] = [*(message.get("annotations") or []), *cited]
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    ledger.completion_chars += len(str(function.get("arguments") or ""))
            choices.append(
                Choice(
                    index=raw.get("index", position),
                    message=AssistantMessage.model_validate(message),
                    logprobs=raw.get("logprobs"),
                    finish_reason=raw.get("finish_reason") or "stop",
                )
            )
    except (AttributeError, TypeError, ValueError):
        raise UpstreamError("The upstream model sent an answer in an unexpected shape") from None
    usage = ledger.price(data.get("usage"))
    return ChatCompletion(
        id=f"chatcmpl-{state.request_id}",
        created=state.created,
        model=state.response_model,
        choices=choices,
        usage=usage,
        service_tier=data.get("service_tier") or "default",
        system_fingerprint=data.get("system_fingerprint"),
        generation_context=ledger.context(grounding),
    )
