"""Metering's health: ready when the usage store takes inserts and NATS is connected.

Served by the runtime's health server (`aigw_runtime.health`): an orchestrator should alert, not
restart, on a metering that is not ready — events wait safely in JetStream. The snapshot
(counters, the last store error) is what tests and operators read.
"""

from __future__ import annotations

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
    request_log_rows: int = 0  # request log rows stored
    request_log_dead: int = 0  # request log events dead-lettered
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
