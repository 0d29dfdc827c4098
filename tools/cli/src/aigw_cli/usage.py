"""`aigw usage`: a tenant's spend and tokens, grouped, with totals (GET /v1/usage)."""

from __future__ import annotations

import argparse
from typing import Any

from .client import Api
from .table import render

GROUPS = ("gateway", "sku", "model", "bucket", "request")


def register(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser("usage", help="usage and spend, grouped, with totals")
    p.add_argument("--from", dest="start", help="ISO time or date (default: 30 days ago)")
    p.add_argument("--to", dest="end", help="ISO time or date (default: now)")
    p.add_argument("--group-by", default="gateway,sku", help=f"comma list of {', '.join(GROUPS)}")
    p.add_argument("--bucket", default="day", choices=("hour", "day", "month"))
    p.add_argument("--tenant", help="another tenant's usage (admin keys only)")
    p.add_argument("--request", help="one request's lines: its x-request-id or chatcmpl- id")
    p.set_defaults(run=run, render=render_usage)


def run(api: Api, args: argparse.Namespace) -> Any:
    params = {"group_by": args.group_by, "bucket": args.bucket}
    for name, value in (
        ("from", args.start),
        ("to", args.end),
        ("tenant", args.tenant),
        ("request", args.request),
    ):
        if value:
            params[name] = value
    return api.request("GET", "/usage", params=params)


def render_usage(report: dict[str, Any]) -> str:
    rows = report.get("rows", [])
    group = [c for c in report.get("group_by", GROUPS) if c in GROUPS]
    columns = [*group, "quantity", "amount", "requests"]
    totals = dict(report.get("totals", {}))
    if group:
        totals[group[0]] = "total"
    return render(rows, columns, totals)
