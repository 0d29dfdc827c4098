"""Traces only when the standard `OTEL_*` variables ask for them; metrics on every service's health port."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import pytest
from opentelemetry import trace

from aigw_devstack import NatsServer
from aigw_runtime import telemetry
from aigw_runtime.service import Service


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),  # no exporter named
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask(env: dict[str, str], expected: bool) -> None:
    assert telemetry.configured(env) is expected


def test_unconfigured_no_sdk_is_installed_and_spans_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    assert telemetry.setup("probe") is False
    assert telemetry.tracing.on is False
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # the API's default
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    with telemetry.request_span("hop", carrier) as span:
        assert span is None
    assert carrier == {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}  # untouched
    assert telemetry.span("x") is telemetry.span("y")  # one shared no-op context, nothing made per call


def _sample(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not exported"
    return float(match.group(1))


async def test_the_health_port_serves_metrics_that_follow_the_nats_connection(fresh_nats: NatsServer) -> None:
    service = Service("probe", "m1", fresh_nats.url, health_port=0)
    await service.start()

    async def metrics() -> str:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{service.health_port}/metrics", timeout=2)
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return response.text

    async def until(name: str, value: float, within: float = 15.0) -> None:
        deadline = time.monotonic() + within
        while _sample(await metrics(), name) != value:
            assert time.monotonic() < deadline, f"{name} never became {value}"
            await asyncio.sleep(0.05)

    try:
        text = await metrics()
        assert _sample(text, "aigw_nats_connected") == 1
        reconnects = _sample(text, "aigw_nats_reconnects_total")
        fresh_nats.stop()
        await until("aigw_nats_connected", 0)
        fresh_nats.start()
        await until("aigw_nats_connected", 1)
        await until("aigw_nats_reconnects_total", reconnects + 1)
    finally:
        await service.stop(grace=1)
