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

from typing import Any

from aigw_contracts import GeneratedUsage, Prices, Usage, skus
from aigw_contracts.api import PromptTokensDetails

CHARS_PER_TOKEN = 4
ESTIMATED = " (estimated)"


# (in, out, in.cached) SKUs and the description, per purpose of the call (RoutedCall.purpose).
_SKUS = {
    "chat": (skus.CHAT_IN, skus.CHAT_OUT, skus.CHAT_IN_CACHED, skus.chat_description),
    "query_rewrite": (skus.REWRITE_IN, skus.REWRITE_OUT, skus.REWRITE_IN_CACHED, skus.rewrite_description),
    "rerank": (skus.RERANK_IN, skus.RERANK_OUT, skus.RERANK_IN_CACHED, skus.rerank_description),
    "routing": (
        skus.ROUTING_IN,
        skus.ROUTING_OUT,
        skus.ROUTING_IN_CACHED,
        lambda _: skus.ROUTING_DESCRIPTION,
    ),
}

# Which usage-event source meters a call of each purpose.
SOURCES = {"chat": "inference", "query_rewrite": "rewrite", "rerank": "rerank", "routing": "routing"}


def price_lines(
    usage: Usage, prices: Prices, upstream_id: str, estimated: bool = False, purpose: str = "chat"
) -> list[GeneratedUsage]:
    sku_in, sku_out, sku_cached, describe = _SKUS[purpose]
    description = describe(upstream_id) + (ESTIMATED if estimated else "")
    cached = max(0, min(usage.cached_tokens, usage.prompt_tokens))
    lines = [
        GeneratedUsage.priced(sku_in, prices.input, usage.prompt_tokens - cached, description),
        GeneratedUsage.priced(sku_out, prices.output, usage.completion_tokens, description),
    ]
    if cached > 0:
        lines.append(GeneratedUsage.priced(sku_cached, prices.cached_input, cached, description))
    return lines


def add_usage(a: Usage | None, b: Usage) -> Usage:
    """The usage of two upstream calls of one request (a tool loop's rounds), as one."""
    if a is None:
        return b
    prompt = a.prompt_tokens + b.prompt_tokens
    completion = a.completion_tokens + b.completion_tokens
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=a.total_tokens + b.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=a.cached_tokens + b.cached_tokens),
    )


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


def normalized_usage(raw: Any) -> Usage | None:
    """An upstream's usage object as our `Usage` (its extra details kept), or None if unusable."""
    if not isinstance(raw, dict):
        return None
    try:
        prompt = int(raw.get("prompt_tokens") or 0)
        completion = int(raw.get("completion_tokens") or 0)
    except (TypeError, ValueError):
        return None
    data = dict(raw)
    data["prompt_tokens"], data["completion_tokens"] = prompt, completion
    if not isinstance(data.get("total_tokens"), int):
        data["total_tokens"] = prompt + completion
    details = data.get("prompt_tokens_details")
    details = dict(details) if isinstance(details, dict) else {}
    if not isinstance(details.get("cached_tokens"), int):
        details["cached_tokens"] = 0
    data["prompt_tokens_details"] = details
    try:
        return Usage.model_validate(data)
    except ValueError:
        return None
