"""What the CLI prints for people: readable tables, gateways by slug, quiet ends of pipes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from aigw_cli.__main__ import main
from aigw_devstack.stack import Stack
from tests.conftest import eventually

AIGW = str(Path(sys.executable).parent / "aigw")
ISO_UTC = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")
EPOCH = re.compile(r"\b1\d{9}(\.\d+)?\b")  # Unix seconds of this era


def _aigw(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert stack.demo is not None
    main(["--gateway-url", stack.base_url, "--key", stack.demo.key, *argv])
    return capsys.readouterr().out


def test_key_tables_show_iso_times_and_readable_limits(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = _aigw(stack, capsys, "key", "create", "--name", "tables", "--expires-in", "3600", "--rpm", "5")
    fields = dict(line.strip().split(": ", 1) for line in shown.splitlines())
    assert ISO_UTC.fullmatch(fields["created_at"]) and ISO_UTC.fullmatch(fields["expires_at"])
    assert fields["limits"] == "5/min" and fields["revoked"] == "no"
    listed = _aigw(stack, capsys, "key", "list")
    row = next(line for line in listed.splitlines() if fields["id"] in line)
    assert ISO_UTC.search(row) and "5/min" in row
    for text in (shown, listed):
        assert not EPOCH.search(text) and "{'" not in text and "True" not in text
    _aigw(stack, capsys, "key", "delete", fields["id"])


def _quiet_when_the_reader_is_gone(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run `aigw` writing into a pipe whose reading end is already closed, as after `| head -1`
    has read its line and exited (closed before the start, so every run meets it the same way)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [AIGW, *argv], stdout=write_end, stderr=subprocess.PIPE, text=True, env=env, timeout=60
        )
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [["usage", "--group-by", "sku"], ["--json", "gateway", "list"]])
def test_output_into_a_closed_pipe_ends_quietly(stack: Stack, argv: list[str]) -> None:
    assert stack.demo is not None
    env = {**os.environ, "AIGW_GATEWAY_URL": stack.base_url, "AIGW_API_KEY": stack.demo.key}
    done = _quiet_when_the_reader_is_gone(argv, env)
    assert done.stderr == ""  # no BrokenPipeError traceback
    assert done.returncode == 1  # the output was cut short: not a success, but nothing to report


def _usage_by_gateway(stack: Stack) -> dict[str, Any]:
    assert stack.demo is not None
    resp = httpx.get(
        f"{stack.base_url}/usage",
        params={"group_by": "gateway"},
        headers={"Authorization": f"Bearer {stack.demo.key}"},
        timeout=20,
    )
    return resp.json() if resp.status_code == 200 else {"rows": []}


def test_usage_by_gateway_names_gateways_by_slug(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    assert stack.demo is not None
    client = OpenAI(base_url=stack.base_url, api_key=stack.demo.key, max_retries=0, timeout=20)
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi [sim tokens=2]"}])
    gateway_id, slug = stack.demo.gateway_id, stack.demo.gateway_slug
    eventually(
        lambda: any(r["gateway"] == gateway_id for r in _usage_by_gateway(stack)["rows"]),
        30.0,
        "the demo gateway's usage in the report",
    )

    table = _aigw(stack, capsys, "usage", "--group-by", "gateway,sku")
    assert table.splitlines()[0].split()[:2] == ["gateway", "sku"]
    assert any(line.startswith(f"{slug} ") for line in table.splitlines())
    assert gateway_id not in table
    report = json.loads(_aigw(stack, capsys, "--json", "usage", "--group-by", "gateway"))
    demo_row = next(r for r in report["rows"] if r["gateway"] == gateway_id)  # --json keeps the id
    assert demo_row["gateway_slug"] == slug
