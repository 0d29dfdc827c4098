"""pytest fixtures for tests that need real processes (loaded by the root conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .nats import NatsServer


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One real nats-server (JetStream on) shared by a test session; tests use unique subjects."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture
def fresh_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own, for tests that restart it or need empty JetStream state."""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest.fixture
def authed_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of the test's own with the bus users and permissions (`aigw_runtime.natsauth`):
    connect with `server.url_for(user)`."""
    server = NatsServer(tmp_path / "nats", auth=True).start()
    yield server
    server.stop()


@pytest.fixture
def tracing_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tracing on in this process (as `OTEL_*` variables would turn it on, with a parent-based
    sampler), its spans kept in memory. Request it before the fixtures that start services, which
    decide at start-up whether they trace."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aigw_runtime import telemetry

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry.tracing, "on", True)
    monkeypatch.setattr(telemetry.tracing, "follow_parent", True)
    monkeypatch.setattr(telemetry.tracing, "tracer", provider.get_tracer("aigw-test"))
    yield
    provider.shutdown()
