"""Health for supervisors: a tiny HTTP server every NATS service runs on its health port.

* `GET /healthz` → 200 while the process runs its event loop (liveness);
* `GET /readyz` → 200 when the service can do its work (connected to NATS, subscribed, its stores
  up), else 503 (readiness: take it out of rotation, alert);
* `GET /metrics` → the process's Prometheus metrics (`metrics.py`).

The first two answer a JSON snapshot of the service's state. HTTP rather than a NATS subject because every
supervisor (k8s probes, compose healthchecks, systemd timers with curl) speaks it, and because "NATS
is down" is one of the things it must report. Plain asyncio: two fixed routes don't justify a web
framework in these processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from .metrics import CONTENT_TYPE, exposition


class HealthServer:
    def __init__(
        self, host: str, port: int, ready: Callable[[], bool], snapshot: Callable[[], dict[str, Any]]
    ) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self.snapshot = snapshot
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        if self.port == 0:  # an ephemeral port (tests): say which one was taken
            self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            path = path.split("?", 1)[0]
            content_type = "application/json"
            if method == "GET" and path == "/metrics":
                status, body, content_type = "200 OK", exposition(), CONTENT_TYPE
            elif method != "GET" or path not in ("/healthz", "/readyz"):
                status, body = "404 Not Found", b'{"error": "not found"}'
            else:
                ready = self.ready()
                ok = path == "/healthz" or ready
                status = "200 OK" if ok else "503 Service Unavailable"
                data = {**self.snapshot(), "ready": ready, "status": "ok" if ready else "unhealthy"}
                body = json.dumps(data, default=str).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()
