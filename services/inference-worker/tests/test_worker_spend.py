"""What a call holds before its upstream is called (`spend.max_cost`): never less than what it can
be billed, fallbacks, choices and tool rounds included."""

from __future__ import annotations

import json
from decimal import Decimal

from aigw_contracts import GeneratedUsage, Prices, RoutedCall, UpstreamTarget
from aigw_contracts.api import Usage
from aigw_contracts.knowledge import KnowledgeTool
from aigw_worker.pricing import price_lines
from aigw_worker.settings import WorkerSettings
from aigw_worker.spend import max_cost

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
