"""The error of an upstream answer larger than the worker accepts.

One tenant's own endpoint must not exhaust the worker every tenant shares: a whole answer's body
(after decompression: a 1 MB gzip body may hold 1 GB) and a streamed answer's lines are capped
(`WorkerSettings.upstream_max_body_bytes`, `upstream_max_sse_line_bytes`). Past a cap the request
fails alone with this 502, and reading stops there.
"""

from __future__ import annotations

from aigw_contracts.errors import UpstreamError

RESPONSE_TOO_LARGE = "upstream_response_too_large"


def response_too_large(what: str, limit: int) -> UpstreamError:
    return UpstreamError(
        f"The upstream model sent {what} larger than this gateway accepts ({limit} bytes)",
        code=RESPONSE_TOO_LARGE,
    )
