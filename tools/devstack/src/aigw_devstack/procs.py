"""Child processes the stack starts: free ports, readiness with a deadline, stop by pid, restart.

Everything started here is stopped by its own pid (SIGTERM, then SIGKILL after a grace period), so
tests and `make run` leave nothing behind. A process can be started again as it was (same command,
environment and log, appended to), which is how `aigw-dev run` and tests bring one back.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_until(probe: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll `probe` until it is true; raise TimeoutError naming `what` past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if probe():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(interval)


@dataclass
class Process:
    """A started child process, its log file and how to stop it."""

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0  # time.monotonic() of the last start
    log_offset: int = 0  # where the last start's output begins in the log
    # The probe and deadline of the last `wait_ready`: a restart waits the same way.
    ready_probe: Callable[[], bool] | None = None
    ready_timeout: float = 30.0

    def start(self) -> Process:
        """Start the process (again, if it ran before: a previous run must have exited)."""
        assert not self.alive(), f"{self.name} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.log_offset = log.tell()
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(
            list(self.argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,  # Ctrl-C in `make run` reaches the launcher, which stops us in order
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The last run's exit status (negative: killed by that signal); None while it runs."""
        return None if self.popen is None else self.popen.poll()

    def wait_ready(self, probe: Callable[[], bool], timeout: float = 30.0) -> Process:
        self.ready_probe, self.ready_timeout = probe, timeout

        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; its log:\n{self.tail()}")
            try:
                return probe()
            except Exception:  # not listening yet, half-written file…: not ready
                return False

        deadline = time.monotonic() + timeout
        while True:
            if ready():
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; its log:\n{self.tail()}")
            time.sleep(0.02)

    def restart(self, wait: bool = True) -> Process:
        """Stop the process if it still runs, start it again as it was and, with `wait`, wait
        until it is ready by the probe it was last waited for."""
        self.stop()
        self.start()
        if wait and self.ready_probe is not None:
            self.wait_ready(self.ready_probe, self.ready_timeout)
        return self

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int | None:
        """Send `sig` and wait for the process to exit; its exit status (None if it was not running)."""
        if not self.alive():
            return self.exit_code
        self.signal(sig)
        assert self.popen is not None
        return self.popen.wait(timeout=timeout)

    def output(self) -> str:
        """What the process wrote since it was last started (earlier runs' lines excluded)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=5)
