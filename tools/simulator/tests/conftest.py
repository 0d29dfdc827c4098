"""The simulator under test runs as a real subprocess on a free port, as the gateway tests use it.

`sim` is one shared simulator (started once per session, history cleared before each test);
`start_sim` starts extra ones with their own flags or env, stopped when the test ends.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

STARTUP_DEADLINE_S = 15.0
POLL_INTERVAL_S = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Call `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


class SimProcess:
    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, port: int) -> None:
        self.process = process
        self.log_path = log_path
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kwargs: Any) -> openai.OpenAI:
        options: dict[str, Any] = {"api_key": "sk-test-not-a-real-key", "max_retries": 0, "timeout": 10.0}
        options.update(kwargs)
        return openai.OpenAI(base_url=f"{self.url}/v1", **options)

    def requests(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/sim/requests", timeout=5)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def clear(self) -> None:
        httpx.delete(f"{self.url}/sim/requests", timeout=5).raise_for_status()

    def last_request(self) -> dict[str, Any]:
        records = self.requests()
        assert records, "the simulator recorded no request"
        return records[-1]

    def wait_for_last_outcome(self, outcome: str, timeout: float = 5.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            records = self.requests()
            return records[-1] if records and records[-1]["outcome"] == outcome else None

        record: dict[str, Any] = poll(check, timeout, f"last request outcome {outcome!r}")
        return record

    def healthy(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"simulator exited with {self.process.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    def ready_line(self) -> dict[str, Any] | None:
        for line in self.log().splitlines():
            if line.startswith("{"):
                entry: dict[str, Any] = json.loads(line)
                if entry.get("event") == "simulator.ready":
                    return entry
        return None

    def wait_for_ready_line(self, timeout: float = STARTUP_DEADLINE_S) -> dict[str, Any]:
        line: dict[str, Any] = poll(self.ready_line, timeout, "the simulator's ready line")
        return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def spawn(
    log_dir: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> SimProcess:
    """Start a simulator without waiting for it; `port=0` lets it pick one (see its ready line)."""
    chosen = free_port() if port is None else port
    environment = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_SIM_")}
    environment.update(env or {})
    log_path = log_dir / f"simulator-{chosen}-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "aigw_simulator", "--port", str(chosen), *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    return SimProcess(process, log_path, chosen)


def start(log_dir: Path, *args: str, env: dict[str, str] | None = None) -> SimProcess:
    sim = spawn(log_dir, *args, env=env)
    try:
        poll(sim.healthy, STARTUP_DEADLINE_S, "the simulator's /healthz")
    except BaseException:
        sim.stop()
        raise
    return sim


@pytest.fixture(scope="session")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    sim = start(tmp_path_factory.mktemp("simulator"))
    yield sim
    sim.stop()


@pytest.fixture
def sim(shared_sim: SimProcess) -> SimProcess:
    shared_sim.clear()
    return shared_sim


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def _start(*args: str, env: dict[str, str] | None = None) -> SimProcess:
        sim = start(tmp_path, *args, env=env)
        started.append(sim)
        return sim

    yield _start
    for sim in started:
        sim.stop()


@pytest.fixture
def spawn_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    started: list[SimProcess] = []

    def _spawn(*args: str, env: dict[str, str] | None = None, port: int | None = None) -> SimProcess:
        sim = spawn(tmp_path, *args, env=env, port=port)
        started.append(sim)
        return sim

    yield _spawn
    for sim in started:
        sim.stop()
