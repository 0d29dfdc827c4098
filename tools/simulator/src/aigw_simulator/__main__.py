"""`aigw-simulator` / `python -m aigw_simulator`: start the simulator from flags and env vars.

Every flag has an `AIGW_SIM_<NAME>` env var (e.g. `--latency-ms` / `AIGW_SIM_LATENCY_MS`); a flag
wins over its env var. The knob flags set the process defaults, which each request can still
override with `x-sim-*` headers or a `[sim ...]` directive (see `directives.py`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

from aigw_simulator.config import FAULTS, Knobs, SimConfig
from aigw_simulator.directives import PARSERS, parse_knob
from aigw_simulator.server import serve

_ENV_PREFIX = "AIGW_SIM_"
_DEFAULTS = SimConfig()

_KNOB_HELP = {
    "latency_ms": "time to first byte, in ms",
    "token_ms": "time between streamed tokens, in ms",
    "tokens": "completion length in words (max_tokens caps it)",
    "cached_tokens": "reported cached prompt tokens (clamped to prompt_tokens)",
    "cache_write": "Anthropic route: prompt tokens reported as written to the cache",
    "cache_write_1h": "Anthropic route: of cache_write, those written to the one-hour cache",
    "fault": f"answer every request with a fault: {', '.join(FAULTS)} or none",
    "echo": "answer with the JSON of the received messages",
    "reply": "answer with exactly this text (no whitespace)",
    "drop_after": "with fault=drop or stall: tokens streamed before the cut (or the silence)",
    "retry_after": "with fault=429: the Retry-After header, in seconds",
    "call": 'answer with a call of this function tool (arguments {"query": <prompt>}) '
    "until the last message is a tool result; the request must offer it in tools",
    "calls": "with call: how many parallel tool calls to emit (>= 1)",
    "fault_model": "the fault applies only to requests for this model",
    "fault_times": "the fault applies only to the first N requests with the same last message (0: all)",
}


def _env(environ: Mapping[str, str], name: str, default: object = None) -> Any:
    value = environ.get(_ENV_PREFIX + name.upper())
    return value if value is not None else default


def parse_config(argv: Sequence[str] | None, environ: Mapping[str, str]) -> SimConfig:
    parser = argparse.ArgumentParser(
        prog="aigw-simulator",
        description="An OpenAI-compatible upstream SIMULATOR for demos, tests and benchmarks (not a model).",
    )
    # String defaults go through `type`, so a bad env var is reported like a bad flag.
    parser.add_argument("--host", default=_env(environ, "host", _DEFAULTS.host))
    parser.add_argument("--port", type=int, default=_env(environ, "port", str(_DEFAULTS.port)))
    parser.add_argument(
        "--require-key", default=_env(environ, "require_key"), help="answer 401 unless this Bearer key"
    )
    parser.add_argument(
        "--history",
        type=int,
        default=_env(environ, "history", str(_DEFAULTS.history_size)),
        help="requests kept for GET /sim/requests (0: off)",
    )
    parser.add_argument("--model", default=_env(environ, "model", _DEFAULTS.model_id))
    parser.add_argument("--log-level", default=_env(environ, "log_level", _DEFAULTS.log_level))
    for name in PARSERS:
        flag = "--" + name.replace("_", "-")
        if name == "echo":
            parser.add_argument(
                flag, action="store_const", const="1", default=_env(environ, name), help=_KNOB_HELP[name]
            )
        else:
            parser.add_argument(flag, default=_env(environ, name), help=_KNOB_HELP[name])
    args = parser.parse_args(argv)

    knobs: dict[str, Any] = {}
    for name in PARSERS:
        raw = getattr(args, name)
        if raw is not None:
            try:
                knobs[name] = parse_knob(name, raw)
            except ValueError as exc:
                parser.error(str(exc))
    try:
        return SimConfig(
            host=args.host,
            port=args.port,
            require_key=args.require_key or None,
            history_size=args.history,
            model_id=args.model,
            log_level=args.log_level,
            defaults=Knobs(**knobs),
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    serve(parse_config(argv, os.environ))


if __name__ == "__main__":
    main()
