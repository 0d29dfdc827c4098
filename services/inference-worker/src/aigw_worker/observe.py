"""The worker's metrics and the stage timings it reports to the edge.

Labels are bounded by the configuration: `gateway` is a gateway's slug ("" for a catalog model
called directly), `model` and `upstream` an upstream's id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aigw_contracts.api import Usage
from aigw_contracts.errors import DeadlineExceeded, GatewayError, RateLimited
from aigw_runtime.metrics import Labelled

from .upstream import UpstreamStatusError

TOKENS = Labelled(Counter("aigw_tokens", "Tokens billed, by kind", ["gateway", "model", "kind"]))
COST = Labelled(Counter("aigw_cost_usd", "Amount billed for answers, in USD", ["gateway", "model"]))
ATTEMPTS = Labelled(
    Counter("aigw_upstream_attempts", "Upstream calls made, by how they ended", ["upstream", "outcome"])
)
RETRIES = Counter("aigw_upstream_retries", "Upstream calls retried on the same upstream", ["upstream"])
FALLBACKS = Counter("aigw_fallbacks", "Requests moved on to a gateway's next upstream", ["gateway"])
DURATION = Labelled(
    Histogram(
        "aigw_upstream_duration_seconds",
        "One upstream attempt, start to end (a stream's last byte)",
        ["upstream"],
        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
    )
)

_STATE_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class _CircuitStates(Collector):
    """`aigw_circuit_state{upstream,deployment}`, read from the worker's breakers at each scrape
    (`circuits.py`): nothing to update on the request path. A circuit shows half-open once its
    cool-down has passed, as `Circuits.snapshot()` does."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[dict[str, Any]]] | None = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for row in self.source() if self.source is not None else ():
            family.add_metric([row["upstream"], row["deployment"]], _STATE_VALUES[row["state"]])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "aigw_circuit_state",
            "Circuit of an upstream deployment: 0 closed, 1 half-open, 2 open",
            labels=["upstream", "deployment"],
        )


_CIRCUITS = _CircuitStates()
REGISTRY.register(_CIRCUITS)


def watch_circuits(snapshot: Callable[[], Iterable[dict[str, Any]]]) -> None:
    """Export the circuits `snapshot()` lists (the worker's `Circuits.snapshot`) at each scrape."""
    _CIRCUITS.source = snapshot


def outcome(err: BaseException | None) -> str:
    """How an attempt ended, as the `outcome` label (a fixed set)."""
    if err is None:
        return "ok"
    if isinstance(err, DeadlineExceeded):
        return "timeout"
    if isinstance(err, RateLimited):
        return "status_429"
    if isinstance(err, UpstreamStatusError):
        return "status_5xx" if err.upstream_status >= 500 else "status_4xx"
    if not isinstance(err, GatewayError) or err.status == 499:
        return "cancelled"  # the edge cancelled the request, the worker shut down
    # connection refused or broken, malformed or cut answers, refused credentials, too large
    return "status_4xx" if err.status < 500 else "connect_error"


def count_usage(gateway: str, model: str, usage: Usage, cost: Any) -> None:
    """Tokens by kind and the cost of one priced answer."""
    cached = usage.cached_tokens
    details = (usage.model_extra or {}).get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, dict) else None
    TOKENS(gateway, model, "input").inc(max(usage.prompt_tokens - cached, 0))
    TOKENS(gateway, model, "cached_input").inc(cached)
    TOKENS(gateway, model, "output").inc(usage.completion_tokens)
    if isinstance(reasoning, int) and reasoning > 0:
        TOKENS(gateway, model, "reasoning").inc(reasoning)
    COST(gateway, model).inc(float(cost))


def timing(stages: dict[str, float] | None, ttft_ms: float | None, relay_ms: float | None) -> str:
    """The stages as `Server-Timing` entries (`aigw_edge.observe` says what each measures)."""
    parts = [f"{name};dur={ms:.2f}" for name, ms in (stages or {}).items()]
    if ttft_ms is not None:
        parts.append(f"ttft;dur={ttft_ms:.2f}")
    if relay_ms is not None:
        parts.append(f"relay;dur={relay_ms:.2f}")
    return ", ".join(parts)
