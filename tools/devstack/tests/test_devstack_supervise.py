"""The launcher's supervision against real child processes (a clock of the test's own for backoff)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigw_devstack.procs import Process, wait_until
from aigw_devstack.supervise import Backoff, Supervisor


def test_backoff_doubles_to_ten_seconds_and_resets_after_thirty_seconds_up() -> None:
    backoff = Backoff()
    assert [backoff.delay(uptime=1.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(uptime=30.0) == 0.5
    assert backoff.delay(uptime=0.1) == 1.0


def _sleeper(tmp_path: Path, name: str, script: str = "print('up', flush=True); time.sleep(60)") -> Process:
    argv = [sys.executable, "-c", f"import time; {script}"]
    return Process(name, argv, tmp_path / f"{name}.log")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def children(tmp_path: Path) -> Iterator[dict[str, Process]]:
    procs = {name: _sleeper(tmp_path, name) for name in ("a", "b")}
    for proc in procs.values():
        proc.start().wait_ready(lambda p=proc: "up" in p.output(), timeout=20)  # type: ignore[misc]
    yield procs
    for proc in procs.values():
        proc.stop(grace=1)


def test_a_killed_child_is_reported_and_restarted_after_its_backoff_and_the_others_untouched(
    children: dict[str, Process],
) -> None:
    clock, said = Clock(), list[str]()
    supervisor = Supervisor(
        lambda: children, lambda n: children[n].restart(wait=False), said.append, clock=clock
    )
    pid_a, pid_b = children["a"].pid, children["b"].pid
    children["a"].started_at = clock.now - 5  # it had run 5 s
    assert children["a"].kill() == -signal.SIGKILL

    supervisor.check()
    assert said == ["a exited (-9); restarting in 0.5 s"]
    clock.now += 0.4
    supervisor.check()
    assert not children["a"].alive(), "restarted before its backoff"
    clock.now += 0.1
    supervisor.check()
    assert children["a"].alive() and children["a"].pid != pid_a
    assert said[-1] == f"a restarted (pid {children['a'].pid})"
    assert children["b"].pid == pid_b and children["b"].alive()

    wait_until(lambda: "up" in children["a"].output(), 20, "a restarted")
    supervisor.check()
    assert said[-1].startswith(f"a is ready again (pid {children['a'].pid}, ")
    assert children["a"].output().count("up") == 1, "a restart's output starts at its own lines"
    assert children["a"].log_path.read_text().count("up") == 2, "the log keeps the earlier run's lines"

    children["a"].started_at = clock.now  # dies again at once: the next delay doubles
    children["a"].kill(signal.SIGTERM)
    supervisor.check()
    assert said[-1] == f"a exited ({-signal.SIGTERM}); restarting in 1 s"


def test_a_child_that_cannot_start_is_retried_with_growing_delays(tmp_path: Path) -> None:
    crashing = _sleeper(tmp_path, "crasher", "raise SystemExit(3)")
    crashing.start()
    crashing.popen.wait(20)  # type: ignore[union-attr]
    clock, said = Clock(), list[str]()
    children = {"crasher": crashing}
    supervisor = Supervisor(
        lambda: children, lambda n: children[n].restart(wait=False), said.append, clock=clock
    )
    try:
        for delay in ("0.5", "1", "2", "4"):
            crashing.started_at = clock.now
            supervisor.check()
            assert said[-1] == f"crasher exited (3); restarting in {delay} s"
            clock.now += float(delay)
            supervisor.check()
            assert said[-1].startswith("crasher restarted")
            crashing.popen.wait(20)  # type: ignore[union-attr]
    finally:
        crashing.stop(grace=1)
