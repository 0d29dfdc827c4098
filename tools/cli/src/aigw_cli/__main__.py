"""`aigw` command line.

The global options (`--gateway-url`, `--key`, `--json`) are accepted before and after the command
(`aigw --json gateway list` and `aigw gateway list --json`): every command's parser gets them too,
with no default of its own, so a value given at either place survives. The gateway's URL is
`--gateway-url`, never `--base-url`: that name belongs to an upstream's URL (`aigw upstream create
--base-url …`), and sharing it once sent the admin key to the upstream.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from . import bootstrap, knowledge, requests, resources, spend, usage
from .client import DEFAULT_GATEWAY_URL, Api, CliError, resolve_gateway_url, resolve_key


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The options every command takes; below the top, SUPPRESS keeps a command's parser from
    overwriting a value given before the command with its own default."""
    group = parser.add_argument_group("global options")
    unset = None if top else argparse.SUPPRESS
    group.add_argument(
        "--gateway-url",
        default=unset,
        metavar="URL",
        help="the gateway's API (env AIGW_GATEWAY_URL, else .aigw/gateway-url from `make run`, "
        f"else http://127.0.0.1:$AIGW_PORT/v1, else {DEFAULT_GATEWAY_URL})",
    )
    group.add_argument("--key", default=unset, help="API key (env AIGW_API_KEY, else .aigw/demo-key)")
    group.add_argument(
        "--json", action="store_true", default=False if top else argparse.SUPPRESS, help="print JSON"
    )


def _commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every command's parser below `parser` (groups such as `gateway` and their commands)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None:
                    sub.description = helps.get(name)
                yield sub
                yield from _commands(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aigw", description="aigw command-line client")
    _global_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    resources.register(commands)
    bootstrap.register(commands)
    usage.register(commands)
    spend.register(commands)
    requests.register(commands)
    knowledge.register(commands)
    for sub in _commands(parser):
        _global_options(sub, top=False)
    return parser


def _run(argv: list[str] | None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "offline", None) is not None:
            result: Any = args.offline(args)
        else:
            result = args.run(Api(resolve_gateway_url(args.gateway_url), resolve_key(args.key)), args)
    except CliError as err:
        print(f"aigw: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(args.render(result))


def main(argv: list[str] | None = None) -> None:
    """Run one command. Output piped to a reader that stops early (`aigw usage | head -1`) ends
    the command quietly, as it does for other Unix tools, instead of with a traceback."""
    try:
        try:
            _run(argv)
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that flush cannot fail too.
        with contextlib.suppress(OSError, ValueError):  # stdout without a file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
