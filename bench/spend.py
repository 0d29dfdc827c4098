"""Spend control's cost and proof: the plain path with budgets on vs off (and with shared rate
limits on), and the overrun figure of a concurrent burst against a small budget.

Layout as `make bench` (`bench.gateway.start_pinned_stack`): nats-server and every service on CPU 0,
the simulator and this load generator on CPU 1. Three tenants call the same catalog model:
* `off`: the demo tenant, no spend account: what every request costs without spend control;
* `budget`: a tenant and key with day budgets (never reached): every request holds its most on two
  accounts before the upstream call and settles after (from the worker's slices of budget, which
  cost a KV compare-and-set write now and then; `AIGW_SPEND_LEASES=false` in the environment: one
  write per request);
* `ratelimit`: a key with requests and tokens per minute (never reached): one shared-limit write
  at the edge per request.
Runs alternate between them (`--runs` each, medians reported), so drift on a noisy machine hits
all alike. Then the burst: `--burst` concurrent requests against a budget affording about 20.

    uv run python -m bench.spend [--duration 4] [--runs 3] [--burst 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from aigw_devstack.stack import SIM_UPSTREAM, Stack
from bench.gateway import HOST, start_pinned_stack
from bench.loadgen import Result, median, run_load

PROMPT = "Benchmark prompt of a typical size. [sim tokens=16]"


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _tenant(stack: Stack, tenant: str, limits: dict[str, int] | None = None) -> tuple[str, str]:
    """A tenant and an admin key of it: (key id, secret)."""
    assert stack.demo is not None
    with httpx.Client(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {stack.demo.operator_key}"}
    ) as op:
        op.post("/tenants", json={"id": tenant}).raise_for_status()
        made = op.post(
            "/keys", json={"tenant": tenant, "admin": True, **({"limits": limits} if limits else {})}
        )
        made.raise_for_status()
        return made.json()["id"], made.json()["secret"]


def _budget(stack: Stack, secret: str, path: str, day: str) -> None:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {secret}"}) as api:
        api.put(f"/spend/budgets/{path}", json={"day": day}).raise_for_status()


def _account(stack: Stack, secret: str, path: str) -> dict[str, Any]:
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {secret}"}) as api:
        answer = api.get(f"/spend/budgets/{path}")
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        return body


async def _burst(stack: Stack, secret: str, count: int) -> tuple[int, int, int, float]:
    body = {
        "model": SIM_UPSTREAM,
        "messages": [{"role": "user", "content": "hi there [sim tokens=50]"}],
        "max_tokens": 50,
    }
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"Authorization": f"Bearer {secret}"}, limits=limits, timeout=60
    ) as c:
        started = time.monotonic()
        answers = await asyncio.gather(*(c.post("/chat/completions", json=body) for _ in range(count)))
        elapsed = time.monotonic() - started
    ok = sum(a.status_code == 200 for a in answers)
    refused = sum(a.status_code == 402 for a in answers)
    return ok, refused, count - ok - refused, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()

    stack = start_pinned_stack(metering=False)
    assert stack.demo is not None and stack.edge_port is not None
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "args": vars(args),
        "env": {"AIGW_SPEND_LEASES": os.environ.get("AIGW_SPEND_LEASES", "true")},
    }
    try:
        budget_key, budget_secret = _tenant(stack, "benchbudget")
        _budget(stack, budget_secret, "tenant/benchbudget", "1000000")
        _budget(stack, budget_secret, f"key/{budget_key}", "1000000")
        _, rate_secret = _tenant(
            stack, "benchrate", {"requests_per_minute": 10_000_000, "tokens_per_minute": 10_000_000_000}
        )
        keys = {"off": stack.demo.key, "budget": budget_secret, "ratelimit": rate_secret}
        body = {"model": SIM_UPSTREAM, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 64}
        for conc in (1, 16):
            results: dict[str, list[Result]] = {name: [] for name in keys}
            for i in range(args.runs):
                for name, key in keys.items():
                    _progress(f"  {name:9} c={conc:<3} run {i + 1}/{args.runs}")
                    path = "/v1/chat/completions"
                    results[name].append(
                        asyncio.run(run_load(HOST, stack.edge_port, path, body, key, conc, args.duration))
                    )
            for name, runs in results.items():
                report[f"{name}/c{conc}"] = {
                    "rps": median([r.rps for r in runs]),
                    "p50_ms": median([r.pct(r.latencies, 0.5) * 1000 for r in runs]),
                    "p99_ms": median([r.pct(r.latencies, 0.99) * 1000 for r in runs]),
                    "errors": float(sum(r.errors for r in runs)),
                }
        settled = _account(stack, budget_secret, "tenant/benchbudget")

        # The overrun figure: a burst against a budget affording about 20 answers.
        per_answer = 8 * Decimal("2.5E-7") + 50 * Decimal("0.000002")  # the simulator's count and prices
        budget = per_answer * 20
        _, burst_secret = _tenant(stack, "benchburst")
        _budget(stack, burst_secret, "tenant/benchburst", str(budget))
        ok, refused, other, elapsed = asyncio.run(_burst(stack, burst_secret, args.burst))
        deadline = time.monotonic() + 10
        while Decimal(_account(stack, burst_secret, "tenant/benchburst")["reserved"]) != 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        spent = Decimal(_account(stack, burst_secret, "tenant/benchburst")["spent_total"])
        report["burst"] = {
            "requests": args.burst,
            "budget_usd": str(budget),
            "spent_usd": str(spent),
            "spent_over_budget": float(spent / budget),
            "answered": ok,
            "refused_402": refused,
            "other": other,
            "seconds": round(elapsed, 3),
        }
    finally:
        stack.stop()

    def ratio(name: str, conc: int, field: str) -> float:
        return float(report[f"{name}/c{conc}"][field] / report[f"off/c{conc}"][field])

    summary = {
        "budget on/off req/s (c=16)": ratio("budget", 16, "rps"),
        "budget added p50 ms (c=1)": report["budget/c1"]["p50_ms"] - report["off/c1"]["p50_ms"],
        "budget p50 on/off (c=1)": ratio("budget", 1, "p50_ms"),
        "ratelimit on/off req/s (c=16)": ratio("ratelimit", 16, "rps"),
        "ratelimit added p50 ms (c=1)": report["ratelimit/c1"]["p50_ms"] - report["off/c1"]["p50_ms"],
        "off p50 ms (c=1)": report["off/c1"]["p50_ms"],
        "off req/s (c=16)": report["off/c16"]["rps"],
        "burst": report["burst"],
        "budget tenant spent in the runs (USD)": settled["spent_total"],
        "errors": sum(v.get("errors", 0) for k, v in report.items() if "/" in k),
    }
    report["summary"] = summary
    out = Path(__file__).parent / "results" / f"spend-{report['when'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    print(f"full report: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
