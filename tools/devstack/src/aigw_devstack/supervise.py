"""Keep a local stack running: a child that exits unexpectedly is reported and started again.

`aigw-dev run` (`make run`) used to stop everything when any one process exited, so nobody could kill
or restart a single service and watch the others recover, which is the point of an event-driven
system. The supervisor restarts the one that died and leaves the rest alone. Restarts back off (0.5 s
doubling to 10 s) so a process that cannot start does not spin; one that stayed up 30 s is
considered healthy again and its next restart is quick. Stopping the whole stack (Ctrl-C, SIGTERM)
is the launcher's business, not this module's: it simply stops calling `check`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .procs import Process

log = logging.getLogger("aigw.devstack.supervisor")


@dataclass
class Backoff:
    """How long to wait before starting a process again, given how long its last run lasted."""

    first: float = 0.5
    cap: float = 10.0
    stable_after: float = 30.0  # a run this long resets the delay to `first`
    _next: float = field(default=0.0, init=False, repr=False)

    def delay(self, uptime: float) -> float:
        if self._next == 0.0 or uptime >= self.stable_after:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


class Supervisor:
    """Call `check()` periodically: it notices children that exited, restarts each after its
    backoff, and says (one line each) what happened; the same facts go to the structured log."""

    def __init__(
        self,
        children: Callable[[], Mapping[str, Process]],
        restart: Callable[[str], object],
        say: Callable[[str], None],
        backoff: Callable[[], Backoff] = Backoff,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._children = children
        self._restart = restart  # start the named child again, without waiting for it to be ready
        self._say = say
        self._new_backoff = backoff
        self._clock = clock
        self._backoffs: dict[str, Backoff] = {}
        self._due: dict[str, float] = {}  # child -> when to start it again
        self._exited_at: dict[str, float] = {}  # restarted children not ready yet -> when they exited

    def check(self) -> None:
        now = self._clock()
        for name, proc in list(self._children().items()):
            if name in self._due:
                if now >= self._due[name]:
                    self._start(name)
                continue
            code = proc.exit_code
            if code is None:
                if name in self._exited_at:
                    self._check_ready(name, proc, now)
                continue
            uptime = now - proc.started_at
            delay = self._backoff(name).delay(uptime)
            self._due[name] = now + delay
            self._exited_at.setdefault(name, now)
            log.warning(
                "process exited",
                extra={
                    "child": name,
                    "pid": proc.pid,
                    "exit_code": code,
                    "uptime_s": round(uptime, 3),
                    "restart_in_s": delay,
                    "log": str(proc.log_path),
                },
            )
            self._say(f"{name} exited ({code}); restarting in {delay:g} s")

    def _backoff(self, name: str) -> Backoff:
        return self._backoffs.setdefault(name, self._new_backoff())

    def _start(self, name: str) -> None:
        del self._due[name]
        try:
            self._restart(name)
        except Exception as err:
            delay = self._backoff(name).delay(0.0)
            self._due[name] = self._clock() + delay
            log.error("restart failed", extra={"child": name, "error": repr(err), "retry_in_s": delay})
            self._say(f"{name} could not be started ({err}); trying again in {delay:g} s")
            return
        proc = self._children()[name]
        log.info("process restarted", extra={"child": name, "pid": proc.pid})
        self._say(f"{name} restarted (pid {proc.pid})")

    def _check_ready(self, name: str, proc: Process, now: float) -> None:
        """Say once when a restarted child is ready again, by the probe the stack started it with."""
        try:
            ready = proc.ready_probe is None or proc.ready_probe()
        except Exception:  # not listening yet, half-written log…
            ready = False
        if ready:
            down = now - self._exited_at.pop(name)
            log.info("process ready", extra={"child": name, "pid": proc.pid, "down_s": round(down, 3)})
            self._say(f"{name} is ready again (pid {proc.pid}, {down:.1f} s after it exited)")
