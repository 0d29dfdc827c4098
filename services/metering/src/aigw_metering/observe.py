"""Metering's metrics: how big its inserts are, how long they take, how far behind it is."""

from __future__ import annotations

from prometheus_client import Gauge, Histogram

from aigw_contracts import streams, subjects

BATCH_ROWS = Histogram(
    "aigw_metering_batch_rows",
    "Usage lines per ClickHouse insert",
    buckets=(1, 10, 50, 100, 500, 1_000, 5_000, 10_000, 20_000, 50_000),
)
INSERT_SECONDS = Histogram(
    "aigw_metering_insert_seconds",
    "Time of one ClickHouse insert (successful ones)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Usage events the consumer had not delivered yet, as of the last batch it took (the count JetStream
# puts in every delivered message's ack subject). Stays at its last value while nothing arrives.
PENDING = Gauge(
    "aigw_jetstream_consumer_pending",
    "Usage events waiting in JetStream for metering",
    ["stream", "consumer"],
).labels(streams.USAGE_STREAM, subjects.METERING_DURABLE)
