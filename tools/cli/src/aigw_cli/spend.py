"""`aigw balance` and `aigw budget …`: a tenant's prepaid balance and spend budgets (`/v1/spend`)."""

from __future__ import annotations

import argparse
from typing import Any

from .table import render, render_fields


def _show(result: Any) -> str:
    """An account: balance and totals as fields, then one row per period, then recent credits."""
    fields = {
        k: result.get(k)
        for k in ("scope", "id", "prepaid", "balance", "reserved", "available", "spent_total", "credited")
    }
    out = [
        render_fields(fields),
        "",
        render(result.get("periods", []), ["period", "period_id", "budget", "spent", "remaining"]),
    ]
    credits = result.get("credits") or []
    if credits:
        out += ["", render(credits, ["at", "amount", "note", "by_key", "id"])]
    return "\n".join(out)


def _budget_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for period in ("day", "month"):
        value = getattr(args, period)
        if value is not None:
            body[period] = None if value in ("none", "") else value
    return body


def register(commands: Any) -> None:
    p = commands.add_parser("balance", help="a tenant's prepaid balance, spend and reservations")
    p.add_argument("--tenant", help="operators: another tenant")
    p.set_defaults(
        run=lambda api, a: api.request(
            "GET", "/spend/balance", params={"tenant": a.tenant} if a.tenant else None
        ),
        render=_show,
    )
    credit = p.add_subparsers(dest="action", metavar="ACTION").add_parser(
        "credit", help="credit a tenant's balance in USD (operators; audited)"
    )
    credit.add_argument("amount", help="USD, e.g. 25 or 0.50")
    credit.add_argument("--tenant", help="the tenant to credit (default: the key's own)")
    credit.add_argument("--note", default="", help="why, kept with the credit")
    credit.set_defaults(
        run=lambda api, a: api.request(
            "POST",
            "/spend/balance/credit",
            params={"tenant": a.tenant} if a.tenant else None,
            json={"amount": a.amount, "note": a.note},
        ),
        render=_show,
    )

    budget = commands.add_parser("budget", help="spend budgets per day and month").add_subparsers(
        dest="action", required=True
    )
    for name, helptext in (
        ("set", "set a tenant, key or gateway budget in USD"),
        ("show", "spend in the period, reserved, what remains"),
    ):
        sub = budget.add_parser(name, help=helptext)
        sub.add_argument("scope", choices=["tenant", "key", "gateway"])
        sub.add_argument("id", help="the tenant id, key id or gateway id")
        if name == "set":
            sub.add_argument("--day", help="USD per UTC day ('none' removes it)")
            sub.add_argument("--month", help="USD per UTC month ('none' removes it)")
            sub.set_defaults(
                run=lambda api, a: api.request(
                    "PUT", f"/spend/budgets/{a.scope}/{a.id}", json=_budget_body(a)
                )
            )
        else:
            sub.set_defaults(run=lambda api, a: api.request("GET", f"/spend/budgets/{a.scope}/{a.id}"))
        sub.set_defaults(render=_show)
