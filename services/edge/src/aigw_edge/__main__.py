"""`aigw-edge`: serve the edge with uvicorn (uvloop, httptools; see `server.server_config`),
settings from the environment."""

from __future__ import annotations

import logging
import socket
import sys

import uvicorn

from aigw_runtime.logs import log_ready, setup_logging

from .app import create_app
from .server import server_config
from .settings import EdgeSettings

log = logging.getLogger("aigw.edge")


class _Server(uvicorn.Server):
    """Logs the "ready" line the stack waits for once the socket listens (after the lifespan
    connected to NATS). uvicorn handles SIGTERM/SIGINT: stop accepting, let in-flight requests
    finish within `shutdown_grace`, then run the lifespan's shutdown (drain NATS)."""

    def __init__(self, config: uvicorn.Config, settings: EdgeSettings) -> None:
        super().__init__(config)
        self.settings = settings

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            s = self.settings
            log_ready(host=s.host, port=s.port, edge_id=s.edge_id)


def _plain(record: logging.LogRecord) -> bool:
    """uvicorn adds a terminal-coloured copy of some messages; JSON lines don't want it."""
    record.__dict__.pop("color_message", None)
    return True


def main() -> None:
    settings = EdgeSettings()
    setup_logging("edge", settings.log_level)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_plain)
    config = server_config(create_app(settings), settings)
    server = _Server(config, settings)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's "startup failed" code


if __name__ == "__main__":
    main()
