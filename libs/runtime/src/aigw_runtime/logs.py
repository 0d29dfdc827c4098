"""The structured log format every service writes: one JSON object per line on stderr.

Part of the contract with ops (log shippers parse it). Fields passed with `extra={...}` become
top-level keys. Secrets never belong in a log line: `redact` shortens anything key-like.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def redact(secret: str | None) -> str:
    if not secret:
        return ""
    return secret[:6] + "…"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                # An extra field never overwrites the line's own keys ("level", "msg", …).
                line[f"extra_{key}" if key in line else key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


READY = logging.getLogger("aigw.ready")


def setup_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    READY.setLevel(logging.INFO)  # supervisors wait for this line whatever the level


def log_ready(**fields: Any) -> None:
    """The one line saying a service is subscribed and serving: `{"msg": "ready", ...}`."""
    READY.info("ready", extra=fields)
