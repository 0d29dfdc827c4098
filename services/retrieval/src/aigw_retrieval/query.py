"""A conversation into search terms, by the gateway's query strategy.

* `Plain`: the last user message;
* `Concatenate`: the last `last_messages` user messages, oldest first, as one term (a follow-up
  like "and for parcels?" keeps the subject of the turns before it).

The rewrite strategies (`UserRewrite`, `FullRewrite`) ask a resolver model first (`rewrite.py`);
`QueryFunction` never searches up front (the model gets a search tool: `tool.py`). Any other
strategy (a hand-written config) gets a 400 rather than silently another strategy.

Terms are cut to their last `max_chars` characters: the question usually ends a message, and the
embedder reads 256 tokens at most, while a keyword search over a huge pasted text only costs time.
"""

from __future__ import annotations

from collections.abc import Sequence

from aigw_contracts.api import ChatMessage
from aigw_contracts.knowledge import GatewayKnowledge


class UnsupportedStrategy(ValueError):
    """The gateway asks for a query strategy this service does not run."""


def _tail(text: str, max_chars: int) -> str:
    text = text.strip()
    return text[-max_chars:].lstrip() if len(text) > max_chars else text


def user_texts(messages: Sequence[ChatMessage]) -> list[str]:
    """The text of every user message, oldest first (non-text parts such as images are skipped)."""
    return [t for t in (m.text().strip() for m in messages if m.role == "user") if t]


def query_terms(
    messages: Sequence[ChatMessage], knowledge: GatewayKnowledge, max_chars: int = 2000
) -> list[str]:
    """The search terms for a conversation; empty when it has no user text to search for."""
    texts = user_texts(messages)
    if not texts:
        return []
    if knowledge.strategy == "Plain":
        return [_tail(texts[-1], max_chars)]
    if knowledge.strategy == "Concatenate":
        return [_tail("\n".join(texts[-knowledge.last_messages :]), max_chars)]
    raise UnsupportedStrategy(f"query strategy '{knowledge.strategy}' is not available")
