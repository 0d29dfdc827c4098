"""`aigw-dev run` (`make run`) as an operator uses it: a process that dies is restarted, the others
keep running, and SIGTERM stops every child."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from aigw_devstack import free_port
from tests.conftest import TEST_ENV

NAMES = {  # a child's program -> its name in the launcher's lines
    "nats-server": "nats-server",
    "aigw-simulator": "simulator",
    "aigw-router": "router-0",
    "aigw-worker": "worker-0",
    "aigw-metering": "metering",
    "aigw-retrieval": "retrieval",
    "aigw-edge": "edge",
}


def _children(parent: int) -> dict[str, int]:
    """The launcher's child processes by name, read from /proc (not from what the launcher says)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid != parent or stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        program = next((Path(a.decode()).name for a in argv if Path(a.decode()).name in NAMES), None)
        if program is not None:
            found[NAMES[program]] = int(entry.name)
    return found


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _answers(client: OpenAI) -> bool:
    try:
        client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi [sim tokens=2]"}]
        )
    except (openai.APIStatusError, openai.APIConnectionError):
        return False
    return True


def _wait(
    probe: Callable[[], bool], within: float, what: str, launcher: subprocess.Popen[bytes], err: Path
) -> float:
    started = time.monotonic()
    while not probe():
        assert launcher.poll() is None, f"the launcher exited:\n{err.read_text()[-3000:]}"
        assert time.monotonic() - started < within, f"{what} not within {within}s:\n{err.read_text()[-3000:]}"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path, int]]:
    state, port = tmp_path / ".aigw", free_port()
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"} | TEST_ENV | {"AIGW_PORT": str(port)}
    out, err = tmp_path / "launcher.out", tmp_path / "launcher.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "aigw-dev"), "run", "--state", str(state)],
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        yield proc, state, err, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(300)
def test_launcher_restarts_a_killed_worker_keeps_the_others_and_sigterm_leaves_no_process(
    launcher: tuple[subprocess.Popen[bytes], Path, Path, int],
) -> None:
    proc, state, err, port = launcher
    keyfile = state / "demo-key"
    _wait(lambda: (state / "gateway-url").exists(), 180, "the stack started", proc, err)
    client = OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=keyfile.read_text().strip(), max_retries=0, timeout=5
    )
    _wait(lambda: _answers(client), 10, "a first answer", proc, err)
    before = _children(proc.pid)
    assert set(before) == set(NAMES.values()), before
    seen = set(before.values())
    try:
        os.kill(before["worker-0"], signal.SIGKILL)
        took = _wait(lambda: _answers(client), 10, "an answer after the worker was killed", proc, err)
        after = _children(proc.pid)
        seen |= set(after.values())
        assert after["worker-0"] != before["worker-0"]
        assert {k: v for k, v in after.items() if k != "worker-0"} == {
            k: v for k, v in before.items() if k != "worker-0"
        }, "only the killed worker may have a new pid"
        said = err.read_text()
        assert "worker-0 exited (-9); restarting in 0.5 s" in said, said
        assert f"worker-0 restarted (pid {after['worker-0']})" in said
        events = [json.loads(line) for line in (state / "logs" / "launcher.log").read_text().splitlines()]
        exited = next(e for e in events if e["msg"] == "process exited")
        assert exited["child"] == "worker-0" and exited["exit_code"] == -9
        assert took < 10

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert [pid for pid in seen if not _gone(pid)] == [], "children left behind"
    finally:
        for pid in seen:  # whatever the outcome, nothing outlives the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
