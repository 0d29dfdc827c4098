"""OpenAI's chat completions, and every OpenAI-compatible provider or server: the baseline.

Nothing is translated: the body goes as the router made it (plus `model` and streaming options),
streams are relayed as their SSE events (the assembler parses them), answers as their JSON.
"""

from __future__ import annotations

from typing import Any

import httpx

from aigw_contracts import UpstreamTarget
from aigw_contracts.errors import GatewayError

from ..jsonio import loads
from ..sse import SSEParser
from ..upstream import status_error
from .base import Prepared, StreamDecoder, body_json


class OpenAI:
    name = "openai"
    path = "chat/completions"

    def prepare(self, target: UpstreamTarget, body: dict[str, Any], stream: bool) -> Prepared:
        data: dict[str, Any] = dict(body)
        data["model"] = target.model
        if stream:
            data["stream"] = True
            data["stream_options"] = {"include_usage": True}  # always: usage is what we bill
        else:
            data.pop("stream", None)
            data.pop("stream_options", None)
        return Prepared(self.path, body_json(data))

    def auth(self, key: str, url: str = "", prepared: Prepared | None = None) -> list[tuple[bytes, bytes]]:
        return [(b"Authorization", b"Bearer " + key.encode("latin-1"))]

    def parse(self, content: bytes, prepared: Prepared) -> Any:
        return loads(content)

    def decoder(self, max_line: int, prepared: Prepared) -> StreamDecoder:
        return SSEParser(max_line)

    def error(self, status: int, raw: bytes, headers: httpx.Headers) -> GatewayError:
        err = status_error(status, raw, headers)
        if status == 400 and b"context_length_exceeded" in raw:
            err.code = "context_length_exceeded"  # OpenAI's code, which SDK users branch on
        return err
