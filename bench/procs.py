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


def run_seconds(pid: int) -> float:
    """CPU seconds a process's live threads have run (`/proc/<pid>/task/*/schedstat`, in ns):
    precise where `/proc/<pid>/stat` counts 10 ms ticks, which at a few hundred requests per run
    is tens of µs per request of error. Falls back to `cpu_seconds` where schedstat is missing."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that ended between the listing and the read
    except FileNotFoundError:
        return sum(cpu_seconds(pid))
    return total / 1e9


class CpuMeter:
    """CPU seconds each process used between `start()` and `stop()` (user + system, `run_seconds`;
    a thread that ends in between takes its time with it, which the services' threads do not)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self._before = {name: run_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        after = {name: run_seconds(pid) for name, pid in self.pids.items()}
        self.used = {name: max(0.0, after[name] - self._before[name]) for name in self.pids}
        return self.used
