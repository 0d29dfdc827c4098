"""Turns a client request plus a gateway into the upstream request body.

Order of messages: the gateway's instructions first (never overridable), then the request's
messages, then the prefill as a trailing assistant message (the worker puts it at the start of the
answer, so the answer contains it). Parameters follow each one's `ParameterRule`.
"""

from __future__ import annotations

from typing import Any

from aigw_contracts import ChatCompletionRequest, Gateway, errors
from aigw_contracts.api import INFERENCE_PARAMETERS
from aigw_contracts.config import ParameterRule

# Request fields forwarded to the upstream as they are (not gateway policy, not ours).
_PASS_THROUGH = ("user", "safety_identifier", "prompt_cache_key", "modalities")
_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")

# Public keys (embedded in web pages) may set only these; any other request value is ignored.
PUBLIC_KEY_PARAMETERS = frozenset({"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop"})


def _clamp(name: str, value: Any, rule: ParameterRule) -> Any:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise errors.InvalidRequest(f"'{name}' must be a number", param=name)
    if rule.min is not None and value < rule.min:
        value = type(value)(rule.min)
    if rule.max is not None and value > rule.max:
        value = type(value)(rule.max)
    return value


def effective_parameters(
    request: ChatCompletionRequest, gateway: Gateway | None, key_kind: str = "private"
) -> dict[str, Any]:
    """The inference parameters actually sent, after the gateway's policy (None values dropped)."""
    used: dict[str, Any] = {}
    for name in INFERENCE_PARAMETERS:
        asked = getattr(request, name)
        if key_kind == "public" and name not in PUBLIC_KEY_PARAMETERS:
            asked = None
        if gateway is None:
            value = asked
        else:
            configured = gateway.parameters.get(name)
            rule = gateway.rule(name)
            if rule.mode == "locked":
                value = configured
            elif rule.mode == "clamped":
                value = _clamp(name, asked if asked is not None else configured, rule)
            else:
                value = asked if asked is not None else configured
        if value is not None:
            used[name] = value
    return used


def cap_output_tokens(params: dict[str, Any], cap: int | None) -> None:
    if cap is None:
        return
    for name in _TOKEN_LIMITS:
        if name in params and params[name] > cap:
            params[name] = cap
    if not any(name in params for name in _TOKEN_LIMITS):
        params["max_completion_tokens"] = cap


def upstream_body(
    request: ChatCompletionRequest, gateway: Gateway | None, params: dict[str, Any]
) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if gateway is not None and gateway.instructions:
        messages.append({"role": "system", "content": gateway.instructions})
    messages.extend(m.model_dump(exclude_none=True) for m in request.messages)
    if gateway is not None and gateway.prefill:
        messages.append({"role": "assistant", "content": gateway.prefill})
    body: dict[str, Any] = {"messages": messages, **params}
    for name in _PASS_THROUGH:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    return body
