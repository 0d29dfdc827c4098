"""Usage lines of one chat completion, on exact decimals.

Usage follows OpenAI's semantics (`prompt_tokens` includes the cached ones); the lines split them:
`inference.chat_completions.in` for uncached prompt tokens, `.in.cached` (only when there are any)
and `.out`. Each line's amount is unit_price × quantity, computed by `GeneratedUsage.priced` on
Decimals, never floats.

When an upstream reports no usage (some OpenAI-compatible servers ignore `include_usage`, and a
stream that breaks never gets to it), tokens are estimated at about four characters each and the
lines say "(estimated)": billing zero silently would be worse than an honest estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from aigw_contracts import GeneratedUsage, Prices, Usage, skus
from aigw_contracts.api import PromptTokensDetails

CHARS_PER_TOKEN = 4
ESTIMATED = " (estimated)"


class _Skus(NamedTuple):
    inp: str
    out: str
    cached: str
    cache_write: str
    cache_write_1h: str
    reasoning: str
    describe: Callable[[str], str]


# The SKUs and the description, per purpose of the call (RoutedCall.purpose).
_SKUS = {
    "chat": _Skus(
        skus.CHAT_IN,
        skus.CHAT_OUT,
        skus.CHAT_IN_CACHED,
        skus.CHAT_IN_CACHE_WRITE,
        skus.CHAT_IN_CACHE_WRITE_1H,
        skus.CHAT_OUT_REASONING,
        skus.chat_description,
    ),
    "query_rewrite": _Skus(
        skus.REWRITE_IN,
        skus.REWRITE_OUT,
        skus.REWRITE_IN_CACHED,
        skus.REWRITE_IN_CACHE_WRITE,
        skus.REWRITE_IN_CACHE_WRITE_1H,
        skus.REWRITE_OUT_REASONING,
        skus.rewrite_description,
    ),
    "rerank": _Skus(
        skus.RERANK_IN,
        skus.RERANK_OUT,
        skus.RERANK_IN_CACHED,
        skus.RERANK_IN_CACHE_WRITE,
        skus.RERANK_IN_CACHE_WRITE_1H,
        skus.RERANK_OUT_REASONING,
        skus.rerank_description,
    ),
    "routing": _Skus(
        skus.ROUTING_IN,
        skus.ROUTING_OUT,
        skus.ROUTING_IN_CACHED,
        skus.ROUTING_IN_CACHE_WRITE,
        skus.ROUTING_IN_CACHE_WRITE_1H,
        skus.ROUTING_OUT_REASONING,
        lambda _: skus.ROUTING_DESCRIPTION,
    ),
}

# Which usage-event source meters a call of each purpose.
SOURCES = {"chat": "inference", "query_rewrite": "rewrite", "rerank": "rerank", "routing": "routing"}

# Counts in `prompt_tokens_details` / `completion_tokens_details` priced as lines of their own
# (`providers/base.py` says who reports them), summed across a tool loop's rounds.
CACHE_WRITE = "cache_write_tokens"
CACHE_WRITE_1H = "cache_write_1h_tokens"
REASONING = "reasoning_tokens"


def _detail(details: Any, name: str) -> int:
    """A count an upstream reported beyond OpenAI's fields (0 when absent or not a count)."""
    if not isinstance(details, dict):
        details = getattr(details, "model_extra", None) or {}
    value = details.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def price_lines(
    usage: Usage, prices: Prices, upstream_id: str, estimated: bool = False, purpose: str = "chat"
) -> list[GeneratedUsage]:
    """The lines of one usage: uncached input, output, then (only when there are any) cache reads,
    cache writes (5 minutes, 1 hour) and separately billed reasoning. A count the upstream's prices
    have no price of its own for is billed as what it is part of (a cache write with no
    `cache_write` price as input, a 1-hour write with no `cache_write_1h` price as a write,
    reasoning with no `reasoning` price as output), never at 0."""
    names = _SKUS[purpose]
    description = names.describe(upstream_id) + (ESTIMATED if estimated else "")
    prompt = usage.prompt_tokens
    cached = max(0, min(usage.cached_tokens, prompt))
    details = usage.prompt_tokens_details
    write = min(_detail(details, CACHE_WRITE), prompt - cached)
    write_1h = min(_detail(details, CACHE_WRITE_1H), prompt - cached - write)
    if prices.cache_write_1h is None:
        write, write_1h = write + write_1h, 0  # priced as a five-minute write
    if not prices.cache_write:
        write = 0  # billed as input
    reasoning = min(_reasoning(usage), usage.completion_tokens) if prices.reasoning is not None else 0
    lines = [
        GeneratedUsage.priced(names.inp, prices.input, prompt - cached - write - write_1h, description),
        GeneratedUsage.priced(names.out, prices.output, usage.completion_tokens - reasoning, description),
    ]
    if cached > 0:
        lines.append(GeneratedUsage.priced(names.cached, prices.cached_input, cached, description))
    if write > 0:
        lines.append(GeneratedUsage.priced(names.cache_write, prices.cache_write, write, description))
    if write_1h > 0:
        lines.append(
            GeneratedUsage.priced(
                names.cache_write_1h, prices.cache_write_1h or Decimal(0), write_1h, description
            )
        )
    if reasoning > 0 and prices.reasoning is not None:
        lines.append(GeneratedUsage.priced(names.reasoning, prices.reasoning, reasoning, description))
    return lines


def add_usage(a: Usage | None, b: Usage) -> Usage:
    """The usage of two upstream calls of one request (a tool loop's rounds), as one."""
    if a is None:
        return b
    prompt = a.prompt_tokens + b.prompt_tokens
    completion = a.completion_tokens + b.completion_tokens
    details = PromptTokensDetails(cached_tokens=a.cached_tokens + b.cached_tokens)
    for name in (CACHE_WRITE, CACHE_WRITE_1H):
        total = _detail(a.prompt_tokens_details, name) + _detail(b.prompt_tokens_details, name)
        if total:
            setattr(details, name, total)
    usage = Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=a.total_tokens + b.total_tokens,
        prompt_tokens_details=details,
    )
    reasoning = _reasoning(a) + _reasoning(b)
    if reasoning:
        usage.completion_tokens_details = {REASONING: reasoning}  # type: ignore[attr-defined]
    return usage


def _reasoning(usage: Usage) -> int:
    extra = usage.model_extra or {}
    return _detail(extra.get("completion_tokens_details") or {}, REASONING)


def merge_lines(lines: list[GeneratedUsage]) -> list[GeneratedUsage]:
    """Lines of the same SKU, price and description as one line (quantities and amounts added, so
    amount = unit_price × quantity still holds exactly), in the order each first appeared."""
    merged: dict[tuple[str, Any, str], GeneratedUsage] = {}
    for line in lines:
        key = (line.sku, line.unit_price, line.description)
        known = merged.get(key)
        if known is None:
            merged[key] = line.model_copy()
        else:
            known.quantity += line.quantity
            known.amount += line.amount
    return list(merged.values())


def estimate_tokens(chars: int) -> int:
    """About four characters per token, rounded up: any text costs at least one token."""
    return -(-chars // CHARS_PER_TOKEN) if chars > 0 else 0


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of the text an upstream reads: message contents, tool calls and tool definitions."""
    total = 0
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    total += len(part["text"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
    tools = body.get("tools")
    if tools:
        total += len(str(tools))
    return total


def estimated_usage(prompt_text_chars: int, completion_text_chars: int) -> Usage:
    prompt = estimate_tokens(prompt_text_chars)
    completion = estimate_tokens(completion_text_chars)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


# The most tokens one upstream call may report for any of its counts. No model's context window is
# within a thousandth of it (the largest are about 10^7 tokens), so only a broken or hostile
# upstream reaches it; a tool loop's rounds add up to a few times it at most, far inside the usage
# store's columns (Int64) and amounts (Decimal(38, 18)).
MAX_REPORTED_TOKENS = 10**9


def _count(value: Any) -> int | None:
    """A reported token count as a whole number: missing or null is 0; a non-integral number is
    truncated; None when it is not a number at all (then the usage is estimated instead)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _within(value: int, high: int) -> int:
    return min(max(value, 0), high)


def checked_usage(raw: Any) -> tuple[Usage | None, list[str]]:
    """An upstream's usage object as our `Usage` (None if unusable), and what had to be corrected.

    The rule (the README's usage section says it too): `prompt_tokens` and `completion_tokens` are
    held within [0, MAX_REPORTED_TOKENS], `cached_tokens` within [0, prompt_tokens], every other
    count in `*_tokens_details` within [0, its total]; `total_tokens` is always prompt +
    completion. A count that is no number at all makes the whole object unusable (the call is then
    estimated and its lines say so). The corrected usage is what the client is shown AND what is
    billed, so the two always agree."""
    if not isinstance(raw, dict):
        return None, []
    fixed: list[str] = []
    prompt_raw, completion_raw = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    if prompt_raw is None or completion_raw is None:
        return None, []
    prompt = _within(prompt_raw, MAX_REPORTED_TOKENS)
    completion = _within(completion_raw, MAX_REPORTED_TOKENS)
    for name, value in (("prompt_tokens", prompt), ("completion_tokens", completion)):
        if raw.get(name) is not None and raw.get(name) != value:
            fixed.append(f"{name} {raw.get(name)!r} -> {value}")
    data = dict(raw)
    data["prompt_tokens"], data["completion_tokens"] = prompt, completion
    data["total_tokens"] = prompt + completion
    for name, total in (("prompt_tokens_details", prompt), ("completion_tokens_details", completion)):
        details = data.get(name)
        if details is None and name == "completion_tokens_details":
            continue
        details = dict(details) if isinstance(details, dict) else {}
        for key, value in details.items():
            count = _count(value) if value is not None else None
            if count is None:
                continue  # not a count (or null): shown as sent, never billed
            within = _within(count, total)
            if within != value:
                fixed.append(f"{name}.{key} {value!r} -> {within}")
            details[key] = within
        data[name] = details
    prompt_details = data["prompt_tokens_details"]
    if not isinstance(prompt_details.get("cached_tokens"), int):
        if prompt_details.get("cached_tokens") is not None:
            fixed.append(f"prompt_tokens_details.cached_tokens {prompt_details['cached_tokens']!r} -> 0")
        prompt_details["cached_tokens"] = 0
    try:
        return Usage.model_validate(data), fixed
    except ValueError:
        return None, []


def normalized_usage(raw: Any) -> Usage | None:
    """An upstream's usage object as our `Usage` (its extra details kept, its counts held within
    bounds: see `checked_usage`), or None if unusable."""
    return checked_usage(raw)[0]
