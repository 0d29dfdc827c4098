"""Azure OpenAI: OpenAI's wire format at a deployment's URL, with an `api-version` and `api-key`.

An Azure upstream's `base_url` is its resource's `https://<resource>.openai.azure.com/openai`,
optionally with `?api-version=...` (default `API_VERSION`); its `model` is the deployment name.
Requests go to `{base}/deployments/{model}/chat/completions?api-version=...`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote

from aigw_contracts import UpstreamTarget

from .base import Prepared
from .openai import OpenAI

API_VERSION = "2024-10-21"  # Azure OpenAI's GA data-plane version with streaming usage


class Azure(OpenAI):
    name = "azure"

    def prepare(self, target: UpstreamTarget, body: dict[str, Any], stream: bool) -> Prepared:
        prepared = super().prepare(target, body, stream)
        base, _, query = target.base_url.partition("?")
        version = parse_qs(query).get("api-version", [API_VERSION])[0]
        prepared.path = (
            f"deployments/{quote(target.model, safe='')}/chat/completions?api-version={quote(version)}"
        )
        prepared.base = base
        return prepared

    def auth(self, key: str, url: str = "", prepared: Prepared | None = None) -> list[tuple[bytes, bytes]]:
        return [(b"api-key", key.encode("latin-1"))]
