"""One module per provider wire format behind one interface (`base.Adapter`); `adapter_for` picks
the one an upstream speaks (`UpstreamTarget.api`; unset: OpenAI's chat completions). Adding a
provider is adding a module here, an entry in `ADAPTERS` and its catalog entries."""

from __future__ import annotations

from aigw_contracts import UpstreamTarget

from .anthropic import Anthropic
from .azure import Azure
from .base import Adapter, Prepared, StreamDecoder, UpstreamOverloaded
from .bedrock import Bedrock
from .gemini import Gemini
from .openai import OpenAI

OPENAI = OpenAI()
ADAPTERS: dict[str, Adapter] = {
    "openai": OPENAI,
    "anthropic": Anthropic(),
    "gemini": Gemini(),
    "azure": Azure(),
    "bedrock": Bedrock(),
}

__all__ = ["ADAPTERS", "OPENAI", "Adapter", "Prepared", "StreamDecoder", "UpstreamOverloaded", "adapter_for"]


def adapter_for(target: UpstreamTarget) -> Adapter:
    api = target.api
    return OPENAI if api is None else ADAPTERS[api]
