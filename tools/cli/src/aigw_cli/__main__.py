"""`aigw` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import bootstrap, knowledge, resources, usage
from .client import DEFAULT_BASE_URL, Api, CliError, resolve_key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="aigw", description="aigw command-line client")
    parser.add_argument(
        "--base-url", default=None, help=f"API base URL (env AIGW_BASE_URL, default {DEFAULT_BASE_URL})"
    )
    parser.add_argument("--key", default=None, help="API key (env AIGW_API_KEY, default .aigw/demo-key)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True)
    resources.register(commands)
    bootstrap.register(commands)
    usage.register(commands)
    knowledge.register(commands)
    args = parser.parse_args(argv)
    base_url = args.base_url or os.environ.get("AIGW_BASE_URL", DEFAULT_BASE_URL)
    try:
        if getattr(args, "offline", None) is not None:
            result: Any = args.offline(args)
        else:
            result = args.run(Api(base_url, resolve_key(args.key)), args)
    except CliError as err:
        print(f"aigw: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(args.render(result))


if __name__ == "__main__":
    main()
