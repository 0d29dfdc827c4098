"""Which deployment of an upstream a request goes to: spread by weight over those whose circuit
admits it and whose rate limit is not used up (`circuits.py`).

An upstream configured with one `base_url` and `api_key` is one deployment, named "0". Each
attempt picks again, so a retry on the same upstream goes to another deployment when there is one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass

import httpx

from aigw_contracts import Deployment, UpstreamTarget
from aigw_contracts.config import deployment_names

from .circuits import Circuit, Circuits
from .upstream import retry_after

_SINGLE = [Deployment()]
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
RATE_LIMIT_PAUSE_S = 1.0  # a used-up rate limit without a reset time: paused this long


@dataclass(frozen=True, slots=True)
class Pick:
    """The deployment an attempt goes to."""

    name: str
    base_url: str
    api_key: str | None  # sealed; None: the upstream's own (own endpoints) or the provider key
    circuit: Circuit


def deployments(target: UpstreamTarget) -> list[tuple[str, Deployment]]:
    chosen = target.deployments or _SINGLE
    return list(zip(deployment_names(chosen), chosen, strict=True))


def pick(
    target: UpstreamTarget,
    circuits: Circuits,
    avoid: Collection[str] = (),
    rng: Callable[[], float] = random.random,
    paused_too: bool = False,
) -> Pick | None:
    """A deployment of `target` for the next attempt, by weight among those that admit one (the
    ones named in `avoid` only when no other does); None when none does. With `paused_too`,
    deployments whose rate limit is used up count as well (the last upstream of a chain: its own
    429 then reaches the client, with its Retry-After)."""
    now = circuits.clock()
    if not target.deployments:  # the common case, kept cheap: one deployment, the upstream's own
        single = circuits.get(target.id, "0")
        if not circuits.admits(single, now, paused_too):
            return None
        circuits.begin(single)
        return Pick("0", target.base_url, None, single)
    open_ = [
        (n, d, c)
        for n, d in deployments(target)
        if circuits.admits(c := circuits.get(target.id, n), now, paused_too)
    ]
    fresh = [row for row in open_ if row[0] not in avoid]
    rows = fresh or open_
    if not rows:
        return None
    point = rng() * sum(d.weight for _, d, _ in rows)
    chosen = rows[-1]
    for row in rows:
        point -= row[1].weight
        if point < 0:
            chosen = row
            break
    name, deployment, circuit = chosen
    circuits.begin(circuit)
    return Pick(name, deployment.base_url or target.base_url, deployment.api_key, circuit)


def admitted(target: UpstreamTarget, circuits: Circuits, avoid: Collection[str]) -> bool:
    """Whether a deployment of `target` other than those in `avoid` takes a request now."""
    now = circuits.clock()
    return any(
        circuits.admits(circuits.get(target.id, name), now)
        for name, _ in deployments(target)
        if name not in avoid
    )


def reopens_in(targets: Collection[UpstreamTarget], circuits: Circuits) -> float:
    """Seconds until one of `targets`' deployments may take a request again (at least 1)."""
    now = circuits.clock()
    soonest = float("inf")
    for target in targets:
        for name, _ in deployments(target):
            circuit = circuits.get(target.id, name)
            soonest = min(soonest, max(circuit.open_until, circuit.paused_until, circuit.probe_until) - now)
    return max(1.0, soonest if soonest != float("inf") else 1.0)


def _duration(text: str) -> float | None:
    """OpenAI's reset durations (`1s`, `6m0s`, `20ms`) or plain seconds."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts:
        return None
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


def exhausted_for(headers: httpx.Headers) -> float | None:
    """Seconds a deployment's rate limit is used up, from an answer's headers; None if it is not."""
    remaining = headers.get("x-ratelimit-remaining-requests")
    if remaining is None or remaining.strip() not in ("0", "0.0"):
        return None
    reset = headers.get("x-ratelimit-reset-requests")
    seconds = _duration(reset) if reset else None
    if seconds is None:
        seconds = retry_after(headers)
    return seconds if seconds is not None else RATE_LIMIT_PAUSE_S
