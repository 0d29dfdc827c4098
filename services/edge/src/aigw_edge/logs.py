"""The access log: one JSON line per request (via the runtime's JSON formatter), never a secret.

`requestlog.RequestLogMiddleware` writes every line, chat completions included; routes add what they learned
(tenant, key, request id, model, how the request ended) to a dict it puts in the ASGI scope, and
may set `status` there when the client got none (499: it left first). Off for benchmarks: then
the middleware is not in the stack at all.
"""

from __future__ import annotations

import logging
import time
from typing import Any

SCOPE_KEY = "aigw.access"  # a dict in the ASGI scope that routes fill with what they learned

# 499 is nginx's "client closed request": the client left before we could answer.
CLIENT_CLOSED = 499


class AccessLog:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._log = logging.getLogger("aigw.edge.access")

    def write(self, method: str, path: str, status: int, started: float, **fields: Any) -> None:
        """`started` is a `time.perf_counter()` reading taken when the request arrived."""
        if not self.enabled:
            return
        fields.update(
            method=method,
            path=path,
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        self._log.info("request", extra=fields)
