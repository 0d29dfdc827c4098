"""The CPU time of the stack's processes, from the kernel's counters (Linux `/proc`)."""

from __future__ import annotations

import os

from aigw_devstack.stack import Stack

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a process has used (`/proc/<pid>/stat`, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def stack_pids(stack: Stack) -> dict[str, int]:
    """Every process of a started stack by name (`edge`, `router-0`, `worker-0`, `metering`,
    `retrieval`, `simulator`, `nats-server`)."""
    pids = {name: proc.pid for name, proc in stack.procs.items()}
    assert stack.nats is not None and stack.nats.process is not None
    pids["nats-server"] = stack.nats.process.pid
    return pids


class CpuMeter:
    """CPU seconds each process used between `start()` and `stop()` (user + system)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, tuple[float, float]] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        after = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.used = {
            name: (after[name][0] - self._before[name][0]) + (after[name][1] - self._before[name][1])
            for name in self.pids
        }
        return self.used
