"""`aigw gateway|upstream|key|tenant …`: the management API as commands, with tables or --json."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import CliError
from .table import render, render_fields

Renderer = Callable[[Any], str]
Row = dict[str, Any]


def _table(columns: list[str], readable: Callable[[Row], Row] = lambda row: row) -> Renderer:
    """A list as a table of `columns`, one object as `name: value` lines; `readable` turns a
    row's raw values into what a person reads (the --json output keeps the API's values)."""

    def show(result: Any) -> str:
        if isinstance(result, dict) and result.get("object") == "list":
            rows = [readable(row) for row in result["data"]]
            return render(rows, columns) if rows else "(none)"
        if isinstance(result, dict) and result.get("deleted"):
            return f"deleted {result['object']} {result['id']}"
        return render_fields(readable(result))

    return show


def limits_summary(limits: dict[str, Any] | None) -> str:
    """A key's `limits` as people say them: `600/min, 20/min per IP`, or `none`."""
    limits = limits or {}
    parts = []
    if limits.get("requests_per_minute"):
        parts.append(f"{limits['requests_per_minute']}/min")
    if limits.get("tokens_per_minute"):
        parts.append(f"{limits['tokens_per_minute']} tokens/min")
    if limits.get("requests_per_minute_per_ip"):
        parts.append(f"{limits['requests_per_minute_per_ip']}/min per IP")
    if limits.get("searches_per_minute"):
        parts.append(f"{limits['searches_per_minute']} searches/min")
    if limits.get("documents_per_day"):
        parts.append(f"{limits['documents_per_day']} documents/day")
    if limits.get("collections") is not None:
        parts.append(f"{limits['collections']} collections")
    return ", ".join(parts) or "none"


def _readable_key(row: Row) -> Row:
    return {**row, "limits": limits_summary(row["limits"])} if "limits" in row else row


def _readable_upstream(row: Row) -> Row:
    deployments = row.get("deployments") or []
    summary = ", ".join(f"{d['name']}×{d['weight']}" for d in deployments) or "-"
    return {**row, "deployments": summary}


def _readable_circuit(row: Row) -> Row:
    until = row.get("open_until")
    workers = row.get("workers") or {}
    return {
        **row,
        "open_until": time.strftime("%H:%M:%S", time.localtime(until)) if until else "-",
        "workers": ", ".join(f"{w}: {s}" for w, s in sorted(workers.items())) or "-",
    }


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} must be JSON: {exc}") from None


def _body(args: argparse.Namespace, fields: dict[str, str]) -> dict[str, Any]:
    """Only the options the user gave; JSON-typed options parsed."""
    body: dict[str, Any] = {}
    for dest, kind in fields.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        body[dest] = _json_arg(value, f"--{dest.replace('_', '-')}") if kind == "json" else value
    return body


def _limit_flags(p: argparse.ArgumentParser, per_ip: bool = True) -> None:
    whose = "key" if per_ip else "tenant"
    p.add_argument(
        "--rpm", type=int, help=f"requests per minute for the whole {whose}, every replica (0: no limit)"
    )
    p.add_argument(
        "--tpm", type=int, help=f"tokens per minute for the whole {whose}, every replica (0: no limit)"
    )
    if per_ip:
        p.add_argument("--rpm-per-ip", type=int, help="requests per minute per client IP (0: no limit)")
    else:
        p.add_argument("--searches-per-min", type=int, help="knowledge searches per minute (0: no limit)")
        p.add_argument("--docs-per-day", type=int, help="documents inserted per UTC day (0: no limit)")
        p.add_argument("--collections", type=int, help="collections the tenant may have (0: no limit)")


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The `limits` object of the rate-limit flags given (0 means no limit), or nothing."""
    given = {
        field: (value or None)
        for field, value in (
            ("requests_per_minute", args.rpm),
            ("tokens_per_minute", args.tpm),
            ("requests_per_minute_per_ip", getattr(args, "rpm_per_ip", None)),
            ("searches_per_minute", getattr(args, "searches_per_min", None)),
            ("documents_per_day", getattr(args, "docs_per_day", None)),
            ("collections", getattr(args, "collections", None)),
        )
        if value is not None
    }
    return {"limits": given} if given else {}


GATEWAY_FIELDS = {
    "name": "str",
    "upstream": "str",
    "instructions": "str",
    "prefill": "str",
    "description": "str",
    "parameters": "json",
    "policy": "json",
    "knowledge": "json",
    "fallbacks": "json",
    "routing": "json",
    "log_payloads": "json",
    "timeouts": "json",
}
TIMEOUTS_HELP = (
    'JSON seconds per upstream attempt, e.g. \'{"ttft": 5, "idle": 20}\' '
    "(connect, ttft, idle, total; null: none)"
)
DEPLOYMENTS_HELP = (
    'JSON list, e.g. \'[{"name": "a", "api_key": "sk-…", "weight": 3}, {"name": "b", "base_url": "https://…/v1"}]\' '
    "(base_url and api_key default to the upstream's)"
)
UPSTREAM_TUNING = {"timeouts": "json", "max_retries": "int", "deployments": "json"}


def _upstream_tuning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeouts", help=TIMEOUTS_HELP)
    p.add_argument("--max-retries", type=int, help="retries before the gateway's next fallback (0-5)")
    p.add_argument("--deployments", help=DEPLOYMENTS_HELP)


def _gateway_options(p: argparse.ArgumentParser, create: bool) -> None:
    p.add_argument("--name", required=create)
    p.add_argument("--upstream", required=create, help="e.g. @openai/gpt-5-mini or an own upstream id")
    p.add_argument("--instructions")
    p.add_argument("--prefill")
    p.add_argument("--description")
    p.add_argument("--parameters", help="JSON, e.g. '{\"temperature\": 0.3}'")
    p.add_argument("--policy", help='JSON, e.g. \'{"temperature": {"mode": "clamped", "max": 1}}\'')
    p.add_argument(
        "--knowledge", help='JSON, e.g. \'{"collection": "faq", "top": 5, "strategy": "Plain"}\' (null: none)'
    )
    p.add_argument("--fallbacks", help="JSON list of upstream ids, e.g. '[\"@openai/gpt-5-nano\"]'")
    p.add_argument(
        "--routing",
        help='JSON, e.g. \'{"classifier": "@openai/gpt-5-nano", "low": "…", "medium": "…", "high": "…"}\' '
        "(null: none)",
    )
    p.add_argument(
        "--log-payloads", help="true: keep request and answer bodies in the request log (secrets redacted)"
    )
    p.add_argument("--timeouts", help=TIMEOUTS_HELP)


def register(commands: Any) -> None:
    gw = commands.add_parser("gateway", help="manage gateways").add_subparsers(dest="action", required=True)
    cols = ["id", "slug", "upstream", "version", "description"]
    p = gw.add_parser("create", help="create a gateway: an upstream and its settings")
    _gateway_options(p, create=True)
    p.add_argument("--tenant", help="operators: create for another tenant")
    p.set_defaults(
        run=lambda api, a: api.request(
            "POST", "/gateways", json=_body(a, {**GATEWAY_FIELDS, "tenant": "str"})
        )
    )
    p = gw.add_parser("list", help="list your gateways")
    p.add_argument("--tenant", help="operators: another tenant's")
    p.set_defaults(run=lambda api, a: api.request("GET", "/gateways", params=_body(a, {"tenant": "str"})))
    p = gw.add_parser("show", help="show one gateway")
    p.add_argument("ref", help="id, slug or name")
    p.set_defaults(run=lambda api, a: api.request("GET", f"/gateways/{a.ref}"))
    p = gw.add_parser("update", help="change a gateway (only the options given)")
    p.add_argument("ref", help="id, slug or name")
    _gateway_options(p, create=False)
    p.set_defaults(
        run=lambda api, a: api.request("PATCH", f"/gateways/{a.ref}", json=_body(a, GATEWAY_FIELDS))
    )
    p = gw.add_parser("delete", help="delete a gateway")
    p.add_argument("ref", help="id, slug or name")
    p.set_defaults(run=lambda api, a: api.request("DELETE", f"/gateways/{a.ref}"))
    p = gw.add_parser("export", help="print a gateway as portable JSON")
    p.add_argument("ref", help="id, slug or name")
    p.set_defaults(
        run=lambda api, a: api.request("GET", f"/gateways/{a.ref}/export"),
        render=lambda r: json.dumps(r, indent=2),
    )
    p = gw.add_parser("import", help="create a gateway from an exported JSON file")
    p.add_argument("file", type=Path)
    p.set_defaults(
        run=lambda api, a: api.request(
            "POST", "/gateways/import", json=_json_arg(a.file.read_text(), str(a.file))
        )
    )
    for sub in gw.choices.values():
        sub.set_defaults(render=sub.get_default("render") or _table(cols))

    up = commands.add_parser("upstream", help="manage upstreams").add_subparsers(dest="action", required=True)
    p = up.add_parser(
        "create",
        help="add your own endpoint (operators: a catalog model)",
        description="Add your own OpenAI-compatible endpoint (or, as operator, a catalog model).",
    )
    p.add_argument("--base-url", help="the upstream's API, e.g. https://…/v1 (unless --from-catalog)")
    p.add_argument("--model", help="the model name the upstream expects (unless --from-catalog)")
    p.add_argument(
        "--from-catalog", help="your own --api-key for this catalog model (e.g. @anthropic/claude-sonnet-4-5)"
    )
    p.add_argument("--api-key", help="the upstream's API key (stored sealed)")
    p.add_argument("--provider")
    p.add_argument(
        "--api", choices=("openai", "anthropic", "gemini", "azure"), help="its wire format (default: openai)"
    )
    p.add_argument("--kind", choices=("own", "catalog"))
    p.add_argument("--id", help="catalog ids: @provider/model")
    p.add_argument("--prices", help='JSON per token, e.g. \'{"input": "2.5e-7", "output": "2e-6"}\'')
    p.add_argument("--description")
    p.add_argument("--tenant")
    _upstream_tuning(p)
    fields = {
        **UPSTREAM_TUNING,
        "base_url": "str",
        "model": "str",
        "api_key": "str",
        "provider": "str",
        "api": "str",
        "from_catalog": "str",
        "kind": "str",
        "id": "str",
        "prices": "json",
        "description": "str",
        "tenant": "str",
    }
    p.set_defaults(run=lambda api, a: api.request("POST", "/upstreams", json=_body(a, fields)))
    up.add_parser("list", help="list the catalog and your own upstreams").set_defaults(
        run=lambda api, a: api.request("GET", "/upstreams")
    )
    p = up.add_parser("show", help="show one upstream")
    p.add_argument("id")
    p.set_defaults(run=lambda api, a: api.request("GET", f"/upstreams/{a.id}"))
    p = up.add_parser("update", help="change an upstream (only the options given)")
    p.add_argument("id")
    p.add_argument("--base-url", help="the upstream's OpenAI-compatible API")
    p.add_argument("--model")
    p.add_argument("--api-key")
    p.add_argument("--prices")
    p.add_argument("--description")
    _upstream_tuning(p)
    upd = {
        "base_url": "str",
        "model": "str",
        "api_key": "str",
        "prices": "json",
        "description": "str",
        **UPSTREAM_TUNING,
    }
    p.set_defaults(run=lambda api, a: api.request("PATCH", f"/upstreams/{a.id}", json=_body(a, upd)))
    p = up.add_parser("delete", help="delete an upstream no gateway uses")
    p.add_argument("id")
    p.set_defaults(run=lambda api, a: api.request("DELETE", f"/upstreams/{a.id}"))
    for sub in up.choices.values():
        sub.set_defaults(
            render=_table(
                ["id", "kind", "model", "base_url", "has_api_key", "tenant", "deployments"],
                _readable_upstream,
            )
        )

    p = commands.add_parser(
        "circuits",
        help="circuit breakers of upstreams (open, half-open)",
        description="Circuit breakers of upstream deployments, as the inference workers see them: "
        "those not closed, or every deployment of one upstream with --upstream.",
    )
    p.add_argument("--upstream", help="one upstream's deployments, closed ones included")
    p.set_defaults(
        run=lambda api, a: api.request("GET", "/circuits", params=_body(a, {"upstream": "str"})),
        render=_table(["upstream", "deployment", "state", "open_until", "workers"], _readable_circuit),
    )

    ks = commands.add_parser("key", help="manage API keys").add_subparsers(dest="action", required=True)
    p = ks.add_parser("create", help="create a key; its secret is printed once")
    p.add_argument("--name")
    p.add_argument("--kind", choices=("private", "public"))
    p.add_argument("--admin", action="store_true", default=None)
    p.add_argument("--expires-in", type=float, help="seconds")
    p.add_argument("--tenant")
    _limit_flags(p)
    kf = {"name": "str", "kind": "str", "admin": "bool", "expires_in": "float", "tenant": "str"}
    p.set_defaults(run=lambda api, a: api.request("POST", "/keys", json={**_body(a, kf), **_limits(a)}))
    p = ks.add_parser("update", help="rename a key or change its rate limits")
    p.add_argument("id")
    p.add_argument("--name")
    _limit_flags(p)
    p.set_defaults(
        run=lambda api, a: api.request(
            "PATCH", f"/keys/{a.id}", json={**_body(a, {"name": "str"}), **_limits(a)}
        )
    )
    p = ks.add_parser("list", help="list API keys (never their secrets)")
    p.add_argument("--tenant", help="operators: another tenant's")
    p.set_defaults(run=lambda api, a: api.request("GET", "/keys", params=_body(a, {"tenant": "str"})))
    p = ks.add_parser("revoke", help="revoke a key (it stops working at once)")
    p.add_argument("id")
    p.set_defaults(run=lambda api, a: api.request("POST", f"/keys/{a.id}/revoke"))
    p = ks.add_parser("delete", help="delete a key")
    p.add_argument("id")
    p.set_defaults(run=lambda api, a: api.request("DELETE", f"/keys/{a.id}"))
    for sub in ks.choices.values():
        sub.set_defaults(
            render=_table(
                ["id", "name", "kind", "admin", "prefix", "expires_at", "revoked", "limits"], _readable_key
            )
        )

    ts = commands.add_parser("tenant", help="manage tenants (operators)").add_subparsers(
        dest="action", required=True
    )
    p = ts.add_parser("create", help="create a tenant")
    p.add_argument("id")
    p.add_argument("--name")
    p.set_defaults(
        run=lambda api, a: api.request("POST", "/tenants", json=_body(a, {"id": "str", "name": "str"}))
    )
    p = ts.add_parser("update", help="change a tenant's name or plan rate limits")
    p.add_argument("id")
    p.add_argument("--name")
    _limit_flags(p, per_ip=False)
    p.set_defaults(
        run=lambda api, a: api.request(
            "PATCH", f"/tenants/{a.id}", json={**_body(a, {"name": "str"}), **_limits(a)}
        )
    )
    ts.add_parser("list", help="list tenants").set_defaults(run=lambda api, a: api.request("GET", "/tenants"))
    p = ts.add_parser("show", help="show one tenant")
    p.add_argument("id")
    p.set_defaults(run=lambda api, a: api.request("GET", f"/tenants/{a.id}"))
    p = ts.add_parser("delete", help="delete a tenant")
    p.add_argument("id")
    p.set_defaults(run=lambda api, a: api.request("DELETE", f"/tenants/{a.id}"))
    for sub in ts.choices.values():
        sub.set_defaults(render=_table(["id", "name", "limits"], _readable_key))
