"""Validating a chat-completions request body, with OpenAI's error messages where it matters.

Only what the simulator uses is checked; everything else in the body (temperature, seed, ...) is
accepted and ignored, but recorded for tests in /sim/requests. `tools` is read only when the `call`
knob asks for a tool call. `n`, `logprobs` and `top_logprobs` are honoured (`choices.py`);
`logit_bias` is checked as OpenAI checks it and recorded, but biases nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aigw_simulator.asgi import Headers
from aigw_simulator.config import Knobs
from aigw_simulator.directives import resolve_knobs
from aigw_simulator.errors import bad_request


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    knobs: Knobs
    call: str | None = None  # the function tool to call this turn; None answers with text
    n: int = 1  # choices to answer with
    top_logprobs: int | None = None  # None: no logprobs; else alternatives per token (0..20)

    @property
    def general(self) -> bool:
        """Whether the answer needs the general path (`choices.py`) rather than byte templates."""
        return self.n > 1 or self.top_logprobs is not None


def _max_tokens(payload: dict[str, Any]) -> int | None:
    # max_completion_tokens is the current name; max_tokens the deprecated one still widely sent.
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_request(f"Invalid '{name}': expected a non-negative integer.", param=name)
        return value
    return None


MAX_N = 128
MAX_TOP_LOGPROBS = 20


def _int_in(payload: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"Invalid type for '{name}': expected an integer.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise bad_request(
            f"Invalid '{name}': integer must be between {low} and {high}, got {value}.",
            param=name,
            code="invalid_value",
        )
    return value


def _logprobs(payload: dict[str, Any]) -> int | None:
    """How many alternatives per token to report: None when logprobs were not asked for."""
    asked = payload.get("logprobs")
    if asked is not None and not isinstance(asked, bool):
        raise bad_request("Invalid type for 'logprobs': expected a boolean.", param="logprobs")
    top = _int_in(payload, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and asked is not True:
        raise bad_request(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true.", param="top_logprobs"
        )
    return (top or 0) if asked else None


def _check_logit_bias(payload: dict[str, Any]) -> None:
    bias = payload.get("logit_bias")
    if bias is None:
        return
    if not isinstance(bias, dict):
        raise bad_request("Invalid type for 'logit_bias': expected an object.", param="logit_bias")
    for token, value in bias.items():
        if not token.isdigit():
            raise bad_request(
                f"Invalid key in 'logit_bias': {token!r} is not a token id.", param="logit_bias"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
            raise bad_request(
                f"Invalid value for 'logit_bias.{token}': expected a number between -100 and 100.",
                param="logit_bias",
            )


def _offered_functions(tools: Any) -> list[str]:
    """The names of the function tools in a request's `tools`."""
    if not isinstance(tools, list):
        return []
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str):
            names.append(name)
    return names


def _call_now(payload: dict[str, Any], messages: list[dict[str, Any]], knobs: Knobs) -> str | None:
    """The function to call this turn: the `call` knob, unless the model already got a tool result."""
    name = knobs.call
    if name is None or messages[-1].get("role") == "tool":
        return None
    offered = _offered_functions(payload.get("tools"))
    if name not in offered:
        listed = ", ".join(offered) or "none"
        raise bad_request(
            f"Invalid simulator override: call={name} but the request offers no function tool named "
            f"{name!r} in 'tools' (offered: {listed}).",
            param="tools",
        )
    return name


def parse_chat_request(payload: Any, headers: Headers, defaults: Knobs) -> ChatRequest:
    if not isinstance(payload, dict):
        raise bad_request("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    messages = payload.get("messages")
    if messages is None:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise bad_request("Invalid 'messages': expected a non-empty array.", "messages", "invalid_value")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad_request(f"Invalid type for 'messages[{index}]': expected an object.", "messages")
    stream = payload.get("stream") is True
    options = payload.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    knobs = resolve_knobs(defaults, headers, messages)
    _check_logit_bias(payload)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=include_usage,
        max_tokens=_max_tokens(payload),
        knobs=knobs,
        call=_call_now(payload, messages, knobs),
        n=_int_in(payload, "n", 1, MAX_N) or 1,
        top_logprobs=_logprobs(payload),
    )
