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
