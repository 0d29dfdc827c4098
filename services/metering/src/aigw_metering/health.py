"""Health for supervisors: a tiny HTTP server on `AIGW_METERING_HEALTH_PORT`.

* `GET /healthz` → 200 while the process runs its loops (liveness);
* `GET /readyz` → 200 when the usage store takes inserts and NATS is connected, else 503
  (readiness: an orchestrator should alert, not restart — events wait safely in JetStream).

Both answer the same JSON snapshot (counters, the last store error), which tests and operators
read. HTTP rather than a NATS subject because every supervisor (k8s probes, compose, systemd
timers with curl) speaks it, and because "NATS is down" is one of the things it must report.
Plain asyncio: two fixed routes don't justify a web framework in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Health:
    store_ok: bool = False
    nats_ok: bool = False
    store: str = ""
    last_error: str | None = None
    failing_since: float | None = None  # wall time of the first failure in a row
    consecutive_failures: int = 0
    inserted_lines: int = 0
    inserted_events: int = 0
    batches: int = 0
    duplicates_skipped: int = 0  # events delivered again and not stored again
    dead_letters: int = 0
    reserialized_batches: int = 0  # refused by ClickHouse as published, stored re-serialized
    noncanonical_events: int = 0  # not in the contract's exact JSON shape: validated via the model
    held_events: int = 0  # received, not yet acknowledged
    started_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.store_ok and self.nats_ok

    def store_failed(self, error: str) -> None:
        if self.store_ok or self.failing_since is None:
            self.failing_since = time.time()
        self.store_ok = False
        self.last_error = error
        self.consecutive_failures += 1

    def store_recovered(self) -> None:
        self.store_ok = True
        self.failing_since = None
        self.consecutive_failures = 0

    def snapshot(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = "ok" if self.ready else "unhealthy"
        return data


class HealthServer:
    def __init__(self, health: Health, host: str, port: int) -> None:
        self.health = health
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)

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
            if method != "GET" or path not in ("/healthz", "/readyz"):
                status, body = "404 Not Found", b'{"error": "not found"}'
            else:
                ok = path == "/healthz" or self.health.ready
                status = "200 OK" if ok else "503 Service Unavailable"
                body = json.dumps(self.health.snapshot()).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        finally:
            writer.close()
