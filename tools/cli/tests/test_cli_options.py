"""Global options anywhere on the line, and help that describes every command."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator

import pytest

from aigw_cli.__main__ import build_parser, main
from aigw_devstack.stack import Stack


def test_global_options_work_before_and_after_the_command(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack.demo is not None
    url, key = stack.base_url, stack.demo.key
    for argv in (
        ["--gateway-url", url, "--key", key, "--json", "gateway", "list"],
        ["gateway", "list", "--json", "--gateway-url", url, "--key", key],
        ["--key", key, "gateway", "--json", "list", "--gateway-url", url],
    ):
        main(argv)
        listed = json.loads(capsys.readouterr().out)
        assert "demo" in {g["name"] for g in listed["data"]}, argv


def _groups(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse._SubParsersAction]]:
    """Each parser that has commands below it: its command path and its commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield path, action
            for name, sub in action.choices.items():
                yield from _groups(sub, (*path, name))


def test_help_lists_every_command_with_a_one_line_description(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    groups = list(_groups(build_parser()))
    assert {path for path, _ in groups} >= {(), ("gateway",), ("upstream",), ("key",), ("doc",)}
    for path, commands in groups:
        described = {choice.dest: choice.help for choice in commands._choices_actions}
        assert set(described) == set(commands.choices), f"aigw {' '.join(path)}: commands without help"
        with pytest.raises(SystemExit):
            main([*path, "--help"])
        shown = capsys.readouterr().out
        for name, text in described.items():
            assert text, f"aigw {' '.join(path)} {name} has an empty help"
            line = re.compile(rf"^\s+{re.escape(name)}\s+{re.escape(text)}$", re.MULTILINE)
            assert line.search(shown), f"`aigw {' '.join(path)} --help` shows no one-line help for {name}"
