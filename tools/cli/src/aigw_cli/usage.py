"""`aigw usage`: a tenant's spend and tokens, grouped, with totals (GET /v1/usage).

Usage rows name a gateway by its id (the usage store keeps ids: a gateway may be renamed, and its
lines must still add up). People know gateways by slug, so the table shows the slug, looked up in
the gateways list; the --json output keeps the id and adds `gateway_slug`. A gateway since deleted,
or a key that may not list gateways, leaves the id.
"""

from __future__ import annotations

import argparse
from typing import Any

from .client import Api, CliError
from .table import render

GROUPS = ("gateway", "sku", "model", "bucket", "request")


def register(commands: Any) -> None:
    p: argparse.ArgumentParser = commands.add_parser("usage", help="usage and spend, grouped, with totals")
    p.add_argument("--from", dest="start", help="ISO time or date (default: 30 days ago)")
    p.add_argument("--to", dest="end", help="ISO time or date (default: now)")
    p.add_argument("--group-by", default="gateway,sku", help=f"comma list of {', '.join(GROUPS)}")
    p.add_argument("--bucket", default="day", choices=("hour", "day", "month"))
    p.add_argument("--tenant", help="another tenant's usage (operator keys only; 'all': every tenant)")
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
    report = api.request("GET", "/usage", params=params)
    if any(row.get("gateway") for row in report.get("rows", [])):
        slugs = gateway_slugs(api, None if args.tenant == "all" else args.tenant)
        for row in report["rows"]:
            if row.get("gateway") in slugs:
                row["gateway_slug"] = slugs[row["gateway"]]
    return report


def gateway_slugs(api: Api, tenant: str | None) -> dict[str, str]:
    """Gateway id → slug for the tenant (every tenant for operators, with `tenant` None)."""
    try:
        listed = api.request("GET", "/gateways", params={"tenant": tenant} if tenant else {})
    except CliError:  # e.g. a non-admin key: usage still shows, with ids
        return {}
    return {g["id"]: g["slug"] for g in listed.get("data", [])}


def render_usage(report: dict[str, Any]) -> str:
    group = [c for c in report.get("group_by", GROUPS) if c in GROUPS]
    rows = [
        {**row, "gateway": row.get("gateway_slug") or row.get("gateway")} for row in report.get("rows", [])
    ]
    columns = [*group, "quantity", "amount", "requests"]
    totals = dict(report.get("totals", {}))
    if group:
        totals[group[0]] = "total"
    return render(rows, columns, totals)
