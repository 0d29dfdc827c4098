"""Serving the app with uvicorn, and the JSON log line that says it is ready.

uvicorn is asked for httptools and uvloop ("auto" picks them when installed, as `uvicorn[standard]`
does on Linux); the access log is off because a log line per request would cost more than
answering it. Logs use the project's format (one JSON object per line on stderr, see
`aigw_runtime.logs`), written here because the simulator depends on nothing of ours.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
from typing import Any

import uvicorn

from aigw_simulator.app import create_app
from aigw_simulator.config import SimConfig

SERVICE = "simulator"
logger = logging.getLogger("aigw_simulator")

_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "service": SERVICE,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The ready line is how scripts learn the port, so it is written whatever the level.
    logger.setLevel(logging.INFO)


class _Server(uvicorn.Server):
    """uvicorn's server, plus one "ready" line once the socket listens (not before: a script that
    waits for the line may connect immediately)."""

    def __init__(self, config: uvicorn.Config, sim_config: SimConfig) -> None:
        super().__init__(config)
        self.sim_config = sim_config

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.started:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        defaults = self.sim_config.defaults
        logger.info(
            "ready",
            extra={
                "event": "simulator.ready",
                "host": host,
                "port": port,
                "url": f"http://{host}:{port}",
                "model": self.sim_config.model_id,
                "require_key": self.sim_config.require_key is not None,
                "defaults": {name: getattr(defaults, name) for name in defaults.__dataclass_fields__},
            },
        )


def build_server(config: SimConfig) -> uvicorn.Server:
    uvicorn_config = uvicorn.Config(
        create_app(config),
        host=config.host,
        port=config.port,
        loop="auto",
        http="auto",
        lifespan="off",
        access_log=False,
        log_config=None,
        log_level=config.log_level,
        server_header=False,
        # A request in `hang` never finishes on its own; don't let it hold up shutdown for long.
        timeout_graceful_shutdown=1,
        backlog=4096,
    )
    return _Server(uvicorn_config, config)


def serve(config: SimConfig) -> None:
    """Run the simulator until SIGINT/SIGTERM (blocking)."""
    setup_logging(config.log_level)
    build_server(config).run()
