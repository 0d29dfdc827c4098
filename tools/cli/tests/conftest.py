"""Fixtures for the CLI's tests: a real stack laid out as `make run` leaves a project, and a clean
environment, so no developer's own `.aigw/` or AIGW_* variables decide where the CLI connects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aigw_devstack.stack import Stack
from tests.conftest import start_stack

CLI_ENV = ("AIGW_GATEWAY_URL", "AIGW_BASE_URL", "AIGW_PORT", "AIGW_API_KEY")


@pytest.fixture(autouse=True)
def clean_cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts in an empty directory with none of the CLI's variables set."""
    for name in CLI_ENV:
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project directory: the stack keeps its state (key, URL) in `<project>/.aigw/`."""
    return tmp_path_factory.mktemp("project")


@pytest.fixture(scope="session")
def stack(project: Path) -> Iterator[Stack]:
    s = start_stack(project / ".aigw", with_metering=True)
    yield s
    s.stop()
