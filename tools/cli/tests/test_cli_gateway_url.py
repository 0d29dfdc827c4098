"""Where the CLI sends its requests (and so its keys): only ever the gateway the user named or
`make run` started, found as the key is found."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from aigw_cli.__main__ import main
from aigw_cli.client import resolve_gateway_url
from aigw_devstack.procs import free_port
from aigw_devstack.stack import Stack


@pytest.fixture
def upstream_listener() -> Iterator[socket.socket]:
    """A TCP listener standing for the upstream's URL: the kernel queues any connection to it,
    so after the command, a connection waiting in the queue proves something was sent there."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.parametrize(
    "named_by", ["flag before the command", "flag after", "AIGW_GATEWAY_URL", "AIGW_BASE_URL", ".aigw file"]
)
def test_upstream_base_url_receives_nothing_from_the_cli(
    stack: Stack,
    named_by: str,
    upstream_listener: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert stack.demo is not None
    upstream_url = f"http://127.0.0.1:{upstream_listener.getsockname()[1]}/v1"
    create = ["upstream", "create", "--base-url", upstream_url, "--model", "m", "--api-key", "sk-upstream"]
    argv = ["--key", stack.demo.key, "--json", *create]
    if named_by == "flag before the command":
        argv = ["--gateway-url", stack.base_url, *argv]
    elif named_by == "flag after":
        argv = [*argv, "--gateway-url", stack.base_url]
    elif named_by == ".aigw file":
        Path(".aigw").mkdir()
        Path(".aigw/gateway-url").write_text(stack.base_url + "\n")
    else:
        monkeypatch.setenv(named_by, stack.base_url)

    main(argv)
    created = json.loads(capsys.readouterr().out)
    assert created["base_url"] == upstream_url and created["has_api_key"] is True  # the gateway got it
    assert _connections(upstream_listener) == 0  # and the upstream's host got nothing
    main(["--gateway-url", stack.base_url, "--key", stack.demo.key, "upstream", "delete", created["id"]])


def test_make_run_writes_the_edge_url_beside_the_key(stack: Stack, project: Path) -> None:
    assert (project / ".aigw" / "gateway-url").read_text().strip() == stack.base_url
    assert (project / ".aigw" / "demo-key").is_file()


def test_cli_in_the_project_directory_finds_the_stack_make_run_started(
    stack: Stack, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.edge_port != 8080  # the default would not find it
    monkeypatch.chdir(project)
    main(["--json", "gateway", "list"])  # no URL, no key: both from .aigw/
    assert "demo" in {g["name"] for g in json.loads(capsys.readouterr().out)["data"]}


def test_cli_uses_aigw_port_when_nothing_names_the_url(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.demo is not None
    monkeypatch.setenv("AIGW_PORT", str(stack.edge_port))
    main(["--json", "--key", stack.demo.key, "gateway", "list"])
    assert "demo" in {g["name"] for g in json.loads(capsys.readouterr().out)["data"]}


def test_gateway_url_comes_from_flag_then_env_then_aigw_file_then_port_then_default() -> None:
    file_url = "http://10.0.0.9:7000/v1"
    Path(".aigw").mkdir()
    Path(".aigw/gateway-url").write_text(file_url + "\n")
    env = {"AIGW_GATEWAY_URL": "http://env/v1", "AIGW_BASE_URL": "http://old/v1", "AIGW_PORT": "9001"}

    assert resolve_gateway_url("http://flag/v1", env).url == "http://flag/v1"
    assert resolve_gateway_url(None, env).url == "http://env/v1"
    env.pop("AIGW_GATEWAY_URL")
    assert resolve_gateway_url(None, env).url == "http://old/v1"  # the deprecated name still works
    env.pop("AIGW_BASE_URL")
    found = resolve_gateway_url(None, env)
    assert found.url == file_url and str(Path(".aigw/gateway-url").resolve()) in found.source
    Path(".aigw/gateway-url").unlink()
    assert resolve_gateway_url(None, env).url == "http://127.0.0.1:9001/v1"
    default = resolve_gateway_url(None, {})
    assert default.url == "http://127.0.0.1:8080/v1" and "default" in default.source


@pytest.mark.parametrize("named_by", ["--gateway-url", "AIGW_GATEWAY_URL", ".aigw file", "AIGW_PORT"])
def test_unreachable_gateway_error_says_which_url_and_where_it_came_from(
    named_by: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1"
    argv = ["--key", "aigw_whatever", "gateway", "list"]
    if named_by == "--gateway-url":
        argv = ["--gateway-url", url, *argv]
        origin = "--gateway-url"
    elif named_by == ".aigw file":
        Path(".aigw").mkdir()
        Path(".aigw/gateway-url").write_text(url)
        origin = str(Path(".aigw/gateway-url").resolve())
    else:
        monkeypatch.setenv(named_by, str(port) if named_by == "AIGW_PORT" else url)
        origin = named_by

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and "Traceback" not in err
    assert url in err and origin in err
