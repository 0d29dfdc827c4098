"""What a call holds before its upstream is called (`spend.max_cost`): never less than what it can
be billed, fallbacks, choices and tool rounds included."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from decimal import Decimal

import nats
import pytest
from nats.aio.msg import Msg

from aigw_contracts import GeneratedUsage, Prices, RoutedCall, UpstreamTarget, UsageEvent, streams, subjects
from aigw_contracts.api import Usage
from aigw_contracts.errors import InsufficientQuota
from aigw_contracts.knowledge import KnowledgeTool
from aigw_contracts.spend import Account, SpendAlert
from aigw_devstack.nats import NatsServer
from aigw_runtime.spend import AccountRef, SpendAccounts, ensure_spend_stream
from aigw_worker.pricing import price_lines
from aigw_worker.settings import WorkerSettings
from aigw_worker.spend import SpendControl, max_cost

from .conftest import make_envelope

CHEAP = Prices(input=Decimal("1E-7"), output=Decimal("4E-7"))
DEAR = Prices(input=Decimal("0.00000125"), output=Decimal("0.00001"))


def _target(name: str, prices: Prices, window: int | None = 1000) -> UpstreamTarget:
    return UpstreamTarget(
        id=name,
        kind="catalog",
        provider="openai",
        model=name,
        base_url="http://x",
        prices=prices,
        context_window=window,
    )


def _route(body: dict[str, object], **kw: object) -> RoutedCall:
    return RoutedCall(upstream=_target("a", CHEAP), body=body, response_model="a", **kw)  # type: ignore[arg-type]


SETTINGS = WorkerSettings(spend_max_output_tokens=5000)
BODY = {"messages": [{"role": "user", "content": "héllo wörld, how are you"}], "max_tokens": 50}


def test_the_hold_covers_every_prompt_token_and_the_output_asked_for() -> None:
    held = max_cost(_route(BODY), SETTINGS)
    body_bytes = len(json.dumps(BODY, separators=(",", ":"), ensure_ascii=False).encode())
    assert held == body_bytes * CHEAP.input + 50 * CHEAP.output
    # Any usage the upstream may report for it (at most a token a byte, at most max_tokens) fits.
    worst = Usage(prompt_tokens=body_bytes, completion_tokens=50, total_tokens=body_bytes + 50)
    assert sum(line.amount for line in price_lines(worst, CHEAP, "a")) <= held


def test_the_hold_covers_a_prompt_written_to_the_cache_and_output_billed_as_reasoning() -> None:
    """Anthropic-priced: cache writes cost more than input, reasoning may cost more than output."""
    prices = Prices(
        input=Decimal("3E-6"),
        output=Decimal("1.5E-5"),
        cache_write=Decimal("3.75E-6"),
        cache_write_1h=Decimal("6E-6"),
        reasoning=Decimal("2E-5"),
    )
    route = RoutedCall(upstream=_target("a", prices), body=BODY, response_model="a")
    held = max_cost(route, SETTINGS)
    body_bytes = len(json.dumps(BODY, separators=(",", ":"), ensure_ascii=False).encode())
    worst = Usage.model_validate(
        {
            "prompt_tokens": body_bytes,
            "completion_tokens": 50,
            "total_tokens": body_bytes + 50,
            "prompt_tokens_details": {"cache_write_1h_tokens": body_bytes},
            "completion_tokens_details": {"reasoning_tokens": 50},
        }
    )
    billed = sum(line.amount for line in price_lines(worst, prices, "a"))
    assert billed == body_bytes * prices.cache_write_1h + 50 * prices.reasoning  # type: ignore[operator]
    assert billed <= held


def test_without_max_tokens_the_context_window_or_the_setting_bounds_the_output() -> None:
    body = {"messages": BODY["messages"], "n": 3}
    windowed = max_cost(_route(body), SETTINGS)
    unknown = max_cost(
        RoutedCall(upstream=_target("a", CHEAP, window=None), body=body, response_model="a"), SETTINGS
    )
    assert windowed > 3 * 1000 * CHEAP.output  # three choices of up to the window each
    assert unknown > 3 * 5000 * CHEAP.output


def test_fallbacks_are_held_at_the_dearest_and_tool_rounds_each_count() -> None:
    plain = max_cost(_route(BODY), SETTINGS)
    with_fallback = max_cost(_route(BODY, fallbacks=[_target("b", DEAR)]), SETTINGS)
    assert with_fallback > plain * 10  # priced as the dear fallback could answer
    rounds = max_cost(_route(BODY, knowledge_tool=KnowledgeTool(collection="c", max_rounds=2)), SETTINGS)
    assert rounds > 3 * plain  # three model calls, each reading more than the first
    search = GeneratedUsage.priced("knowledge.search", Decimal("0.001"), 1, "search")
    prior = max_cost(_route(BODY, prior_usage=[search]), SETTINGS)
    assert prior == plain + Decimal("0.001")  # retrieval's search, settled with the answer


async def test_settling_across_a_budgets_thresholds_publishes_one_alert_each(fresh_nats: NatsServer) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        await ensure_spend_stream(js)
        accounts = await SpendAccounts.open(js)
        await accounts.watch()
        control = SpendControl(accounts, js, SETTINGS)
        alerts: list[SpendAlert] = []
        three = asyncio.Event()

        async def collect(msg: Msg) -> None:
            alerts.append(SpendAlert.model_validate_json(msg.data))
            if len(alerts) >= 3:
                three.set()

        sub = await nc.subscribe(subjects.spend_alert_subject("acme"), cb=collect)

        def budget(account: Account, now: float) -> None:
            account.budgets["month"] = Decimal("1")

        await accounts.change(AccountRef("tenant", "acme", "acme"), budget)
        envelope = make_envelope("http://127.0.0.1:9", "hi", tenant="acme")
        route = _route(BODY)
        for i, amount in enumerate(("0.6", "0.3", "0.3")):
            event = UsageEvent(
                request_id=f"r{i}",
                source="inference",
                tenant="acme",
                key_id="k",
                upstream="a",
                model="a",
                lines=[GeneratedUsage.priced("inference.chat_completions.out", Decimal(amount), 1, "x")],
                started_at=datetime.now(UTC),
            )
            held = await control.reserve(envelope, route, f"r{i}:chat")
            assert held == [AccountRef("tenant", "acme", "acme")]
            control.settle(envelope, route, f"r{i}:chat", held, [event])
            await asyncio.wait(list(control._tasks))
        await asyncio.wait_for(three.wait(), 2.0)
        assert [(a.period, a.threshold) for a in alerts] == [("month", 50), ("month", 80), ("month", 100)]
        assert alerts[-1].spent == Decimal("1.2") and alerts[-1].scope == "tenant"
        info = await js.stream_info(streams.SPEND_STREAM)
        assert info.state.messages == 3  # kept for other teams' durable consumers
        await sub.unsubscribe()
        await control.close(1.0)
    finally:
        await nc.close()


@pytest.mark.parametrize("leases", [True, False])
async def test_a_refused_answers_searches_are_counted_as_clickhouse_bills_them(
    fresh_nats: NatsServer, leases: bool
) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        js = nc.jetstream()
        await ensure_spend_stream(js)
        accounts = await SpendAccounts.open(js)
        await accounts.watch()
        control = SpendControl(
            accounts, js, WorkerSettings(spend_max_output_tokens=5000, spend_leases=leases)
        )
        tenant = AccountRef("tenant", "acme", "acme")

        def budget(account: Account, now: float) -> None:
            account.budgets["day"] = Decimal("0.002")

        await accounts.change(tenant, budget)
        search = GeneratedUsage.priced("knowledge.search", Decimal("0.001"), 1, "search")
        # The answer may cost more than the budget allows: refused, but its search was billed.
        route = _route(
            {**BODY, "max_tokens": 100_000}, fallbacks=[_target("b", DEAR, window=None)], prior_usage=[search]
        )
        envelope = make_envelope("http://127.0.0.1:9", "hi", tenant="acme")
        with pytest.raises(InsufficientQuota):
            await control.reserve(envelope, route, "r1:chat")
        await asyncio.wait(list(control._tasks), timeout=5)
        account, _ = await accounts.read(tenant)
        assert account.spent_total == Decimal("0.001")  # what ClickHouse has for that request
        await control.close(1.0)
    finally:
        await nc.close()
