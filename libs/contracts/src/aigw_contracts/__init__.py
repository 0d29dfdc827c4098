"""aigw contracts: the only code services share (API models, messages, subjects, SKUs, errors)."""

from . import errors, events, headers, skus, subjects
from .api import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessage,
    GeneratedUsage,
    GenerationContext,
    Usage,
)
from .config import (
    ApiKey,
    ConfigSnapshot,
    Deployment,
    Gateway,
    ParameterRule,
    Prices,
    Tenant,
    Timeouts,
    Upstream,
)
from .messages import CancelRequest, ChatEnvelope, RoutedCall, UpstreamTarget
from .usage import UsageEvent

__all__ = [
    "ApiKey",
    "CancelRequest",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatEnvelope",
    "ChatMessage",
    "ConfigSnapshot",
    "Deployment",
    "Gateway",
    "GeneratedUsage",
    "GenerationContext",
    "ParameterRule",
    "Prices",
    "RoutedCall",
    "Tenant",
    "Timeouts",
    "Upstream",
    "UpstreamTarget",
    "Usage",
    "UsageEvent",
    "errors",
    "events",
    "headers",
    "skus",
    "subjects",
]
