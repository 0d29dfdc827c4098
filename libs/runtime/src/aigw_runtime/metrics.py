"""Prometheus metrics: what every process exports, and the `/metrics` exposition.

Each service declares its own metrics in its own module (the names are agreed in the README's
"Seeing inside" section and used by the Grafana dashboard); this one holds what every NATS client
shares: whether it is connected, and how often it reconnected. NATS services answer `GET /metrics`
on their health port (`health.py`), the edge on its HTTP port.

Label sets are bounded: gateways, upstreams and outcomes the configuration knows, never request
ids, keys, tenants' free text or a model name as the client typed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # no `_created` series beside every counter and histogram

NATS_CONNECTED = Gauge("aigw_nats_connected", "1 while this process is connected to NATS, else 0")
NATS_RECONNECTS = Counter("aigw_nats_reconnects", "Reconnections to NATS since the process started")

CONTENT_TYPE = CONTENT_TYPE_LATEST

M = TypeVar("M", Counter, Gauge, Histogram)


class Labelled(Generic[M]):
    """A labelled metric's children, looked up by a dict get instead of `metric.labels(...)`
    (which validates and locks: about 1 µs each on the request path). Bounded as the label sets
    are; prometheus-client keeps every child it made anyway."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


def watch_connection(connected: Callable[[], bool]) -> None:
    """`aigw_nats_connected` reads `connected()` at each scrape (nothing to update on the hot path)."""
    NATS_CONNECTED.set_function(lambda: 1.0 if connected() else 0.0)


def exposition() -> bytes:
    """Every metric of this process, in Prometheus' text format."""
    return generate_latest(REGISTRY)
