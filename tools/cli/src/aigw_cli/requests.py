"""`aigw requests`: the request log, newest first (GET /v1/requests).

Every request the gateway answered is there, refusals and failures included, with its status,
error code, latency, time to first token, tokens and cost. Filters: gateway, status (a code or a
class such as 4xx), time range; operators may list another tenant or all of them.
"""

from __future__ import annotations

import argparse
from typing import Any

from .client import Api
from .table import render

COLUMNS = (
    "started_at",
    "request_id",
    "status",
    "error_code",
    "gateway",
    "model",
    "stream",
    "latency_ms",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "cost",
    "fallback",
)


def register(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser(
        "requests", help="every request: status, latency, tokens, cost"
    )
    p.add_argument("--since", help="ISO time or date (default: a day ago)")
    p.add_argument("--until", help="ISO time or date (default: now)")
    p.add_argument("--gateway", help="a gateway's slug or name")
    p.add_argument("--status", help="an HTTP status (429) or a class (4xx, 5xx)")
    p.add_argument("--tenant", help="another tenant's requests (operator keys only; 'all': every tenant)")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100, max 1000)")
    p.set_defaults(run=run, render=render_requests)


def run(api: Api, args: argparse.Namespace) -> Any:
    params: dict[str, Any] = {"limit": args.limit}
    for name in ("since", "until", "gateway", "status", "tenant"):
        value = getattr(args, name)
        if value:
            params[name] = value
    return api.request("GET", "/requests", params=params)


def render_requests(report: dict[str, Any]) -> str:
    rows = report.get("rows", [])
    text = render(rows, list(COLUMNS))
    if report.get("truncated"):
        text += "\n(more requests match: narrow the range or raise --limit)"
    return text
