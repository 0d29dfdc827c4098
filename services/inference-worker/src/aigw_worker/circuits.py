"""Circuit breakers, one per upstream deployment (a base URL and a credential), and each
deployment's rate-limit pause.

A circuit is *closed* (requests go through) until `threshold` attempts in a row fail on it (5xx,
a connection that fails, a timeout, refused credentials); it is then *open* for `cooldown`
seconds: requests skip it, to the upstream's other deployments or the gateway's next fallback,
without waiting for it. After the cool-down it is *half-open*: one request goes through as a probe
(the others still skip it); its success closes the circuit, its failure opens it for another
cool-down. An upstream is out of rotation when all its deployments are; a request nothing can serve
is answered 503 at once (`fallback.py`), never left to time out.

A deployment that says it has no requests left (`x-ratelimit-remaining-requests: 0`, or a 429) is
paused until its reset (`x-ratelimit-reset-requests`, `Retry-After`); that is not a failure.

Why each worker decides alone rather than sharing one state through NATS: a breaker's decisions
need no agreement to be safe. Skipping an upstream only moves a request to a fallback (or to a 503
the SDKs retry), never bills or answers wrongly; with W workers a dead upstream costs at most
W × `threshold` failed attempts before every worker skips it (each one fails fast to a fallback, a
hanging one costs its time to first token), and in half-open at most W probes per cool-down. What
a shared state would save is those few attempts, at the price of a bus round trip (or a KV watch
that a NATS restart blinds) on the request path. Rate-limit headers come back to the worker that
made the call, so they are per worker anyway. The states are still published (`CircuitBoard`, the
`aigw_circuits` bucket) so the management API shows every worker's view.

`Circuits` is the in-process registry: `snapshot()` is what the management API and metrics read
(`aigw_circuit_state{upstream,deployment}`: 0 closed, 1 half-open, 2 open).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class State(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(slots=True)
class Circuit:
    upstream: str
    deployment: str
    state: State = State.CLOSED
    failures: int = 0  # in a row
    open_until: float = 0.0  # wall clock (seconds since the epoch): shown to operators
    probe_until: float = 0.0  # a half-open probe is out until then (it may never report back)
    paused_until: float = 0.0  # rate limit used up until then

    def view(self, now: float) -> dict[str, Any]:
        state = self.state
        if state is State.OPEN and now >= self.open_until:
            state = State.HALF_OPEN  # the next request is its probe
        return {
            "upstream": self.upstream,
            "deployment": self.deployment,
            "state": state.name.lower(),
            "failures": self.failures,
            "open_until": self.open_until if state is State.OPEN else None,
            "rate_limited_until": self.paused_until if self.paused_until > now else None,
        }


Listener = Callable[[Circuit], None]


class Circuits:
    """Every circuit this worker has used, by (upstream id, deployment name)."""

    def __init__(
        self,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.time,
        on_change: Listener | None = None,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.on_change = on_change
        self._all: dict[tuple[str, str], Circuit] = {}

    def get(self, upstream: str, deployment: str) -> Circuit:
        key = (upstream, deployment)
        circuit = self._all.get(key)
        if circuit is None:
            if len(self._all) > 10_000:  # upstreams deleted long ago: forget the closed ones
                self._all = {k: c for k, c in self._all.items() if c.state is not State.CLOSED}
            circuit = self._all[key] = Circuit(upstream, deployment)
        return circuit

    def admits(self, circuit: Circuit, now: float, paused_too: bool = False) -> bool:
        """Whether a request may use `circuit` now (changes nothing); with `paused_too`, also while
        its rate limit is used up."""
        if circuit.paused_until > now and not paused_too:
            return False
        if circuit.state is State.CLOSED:
            return True
        if circuit.state is State.OPEN and now < circuit.open_until:
            return False
        return circuit.probe_until <= now  # half-open: one probe at a time

    def begin(self, circuit: Circuit) -> None:
        """A request was sent to `circuit` (after `admits`): an open one past its cool-down turns
        half-open with this request as its probe."""
        if circuit.state is State.CLOSED:
            return
        now = self.clock()
        if circuit.state is State.OPEN:
            self._set(circuit, State.HALF_OPEN)
        circuit.probe_until = now + self.cooldown

    def release(self, circuit: Circuit) -> None:
        """The request ended without a verdict on the upstream (cancelled, a 429): another may probe."""
        circuit.probe_until = 0.0

    def succeeded(self, circuit: Circuit) -> None:
        circuit.failures = 0
        if circuit.state is not State.CLOSED:
            circuit.probe_until = 0.0
            self._set(circuit, State.CLOSED)

    def failed(self, circuit: Circuit) -> None:
        circuit.failures += 1
        circuit.probe_until = 0.0
        if circuit.state is State.HALF_OPEN or (
            circuit.state is State.CLOSED and circuit.failures >= self.threshold
        ):
            circuit.open_until = self.clock() + self.cooldown
            self._set(circuit, State.OPEN)

    def pause(self, circuit: Circuit, seconds: float) -> None:
        """The deployment's rate limit is used up for `seconds`."""
        circuit.paused_until = max(circuit.paused_until, self.clock() + seconds)
        if circuit.state is State.HALF_OPEN:
            circuit.probe_until = 0.0

    def _set(self, circuit: Circuit, state: State) -> None:
        circuit.state = state
        if self.on_change is not None:
            self.on_change(circuit)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every circuit's state now, for the management API and metrics."""
        now = self.clock()
        return [c.view(now) for c in self._all.values()]

    def state(self, upstream: str, deployment: str) -> State:
        circuit = self._all.get((upstream, deployment))
        return State[circuit.view(self.clock())["state"].upper()] if circuit else State.CLOSED
