"""Turns a client request plus a gateway into the upstream request body.

Order of messages: the gateway's instructions first (never overridable), then the request's
messages, then the prefill as a trailing assistant message (the worker puts it at the start of the
answer, so the answer contains it). Parameters follow each one's `ParameterRule`; which request
fields are inference parameters, which a request may override by default, which public keys may set
and which pass through is `aigw_contracts.api.PARAMETERS`, the one list of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aigw_contracts import ChatCompletionRequest, Gateway, errors
from aigw_contracts.api import INFERENCE_PARAMETERS, PASS_THROUGH, PUBLIC_KEY_PARAMETERS
from aigw_contracts.config import ParameterRule

_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")


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


@dataclass(frozen=True, slots=True)
class ParameterStep:
    """What a gateway's policy does with one inference parameter, for one kind of key."""

    name: str
    mode: str  # "locked", "clamped" or "default" (the request's value, else the configured one)
    configured: Any
    rule: ParameterRule | None  # for "clamped"
    askable: bool  # the key kind may set it (public keys only the `PUBLIC_KEY_PARAMETERS`)


def parameter_plan(gateway: Gateway | None, key_kind: str = "private") -> tuple[ParameterStep, ...]:
    """The gateway's policy for every inference parameter, worked out once: it depends only on the
    gateway (one version of it) and the key kind, so the router keeps it per gateway version
    (`app.Router`) instead of looking every rule up again for every request."""
    steps = []
    for name in INFERENCE_PARAMETERS:
        askable = key_kind != "public" or name in PUBLIC_KEY_PARAMETERS
        if gateway is None:
            steps.append(ParameterStep(name, "default", None, None, askable))
            continue
        rule = gateway.rule(name)
        steps.append(ParameterStep(name, rule.mode, gateway.parameters.get(name), rule, askable))
    return tuple(steps)


def apply_plan(request: ChatCompletionRequest, plan: tuple[ParameterStep, ...]) -> dict[str, Any]:
    """The inference parameters actually sent for `request` under `plan` (None values dropped)."""
    used: dict[str, Any] = {}
    for step in plan:
        asked = getattr(request, step.name) if step.askable else None
        if step.mode == "locked":
            value = step.configured
        elif step.mode == "clamped":
            assert step.rule is not None
            value = _clamp(step.name, asked if asked is not None else step.configured, step.rule)
        else:
            value = asked if asked is not None else step.configured
        if value is not None:
            used[step.name] = value
    return used


def effective_parameters(
    request: ChatCompletionRequest, gateway: Gateway | None, key_kind: str = "private"
) -> dict[str, Any]:
    """The inference parameters actually sent, after the gateway's policy (None values dropped)."""
    return apply_plan(request, parameter_plan(gateway, key_kind))


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
    for name in PASS_THROUGH:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    _check_combination(request, gateway, body)
    return body


def _asked(request: ChatCompletionRequest, body: dict[str, Any], name: str) -> bool:
    """Whether the body's value of `name` is the request's (not ignored by the policy)."""
    asked = getattr(request, name)
    return asked is not None and body.get(name) == asked


def _check_combination(request: ChatCompletionRequest, gateway: Gateway | None, body: dict[str, Any]) -> None:
    """Refuse (400) what the request asked for that cannot work with what the gateway made of it:
    checked here, on the parameters actually sent, because a gateway may supply (or lock away)
    the other half. Values the gateway itself set are its administrator's business."""
    if _asked(request, body, "top_logprobs") and body.get("logprobs") is not True:
        raise errors.InvalidRequest(  # the gateway keeps `logprobs` from being true
            "'top_logprobs' needs 'logprobs' set to true, and this gateway's policy does not let it be.",
            param="top_logprobs",
            code="invalid_value",
        )
    if not body.get("tools"):
        for name in ("tool_choice", "parallel_tool_calls"):
            if _asked(request, body, name):
                raise errors.InvalidRequest(
                    f"'{name}' is only allowed when 'tools' are specified.", param=name, code="invalid_value"
                )
    n = body.get("n")
    knowledge = gateway.knowledge if gateway is not None else None
    if isinstance(n, int) and n > 1 and knowledge is not None and knowledge.strategy == "QueryFunction":
        raise errors.InvalidRequest(
            "'n' above 1 is not available on a gateway whose model searches its knowledge itself "
            "(QueryFunction): each choice would need searches of its own.",
            param="n",
            code="invalid_value",
        )
