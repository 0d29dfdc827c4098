"""Search terms from a conversation, and the query-embedding cache."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from aigw_contracts.api import ChatMessage
from aigw_contracts.knowledge import GatewayKnowledge
from aigw_retrieval.embed.cache import CachedEmbedder
from aigw_retrieval.query import UnsupportedStrategy, query_terms

CONVERSATION = [
    ChatMessage(role="system", content="You are support."),
    ChatMessage(role="user", content="My parcel never arrived."),
    ChatMessage(role="assistant", content="Sorry to hear that."),
    ChatMessage(
        role="user", content=[{"type": "text", "text": "Can I get a refund?"}, {"type": "image_url"}]
    ),
]


def test_plain_searches_the_last_user_message_and_concatenate_the_last_n() -> None:
    assert query_terms(CONVERSATION, GatewayKnowledge(collection="c")) == ["Can I get a refund?"]
    both = query_terms(
        CONVERSATION, GatewayKnowledge(collection="c", strategy="Concatenate", last_messages=2)
    )
    assert both == ["My parcel never arrived.\nCan I get a refund?"]
    one = query_terms(CONVERSATION, GatewayKnowledge(collection="c", strategy="Concatenate", last_messages=1))
    assert one == ["Can I get a refund?"]


def test_long_terms_keep_their_end_and_no_user_text_means_no_search() -> None:
    long = [ChatMessage(role="user", content="x" * 5000 + " where is my parcel?")]
    (term,) = query_terms(long, GatewayKnowledge(collection="c"), max_chars=100)
    assert len(term) == 100 and term.endswith("where is my parcel?")
    assert query_terms([ChatMessage(role="system", content="hi")], GatewayKnowledge(collection="c")) == []


def test_strategies_needing_a_model_call_are_refused_not_replaced() -> None:
    with pytest.raises(UnsupportedStrategy):
        query_terms(CONVERSATION, GatewayKnowledge(collection="c", strategy="QueryFunction"))


async def test_a_repeated_query_is_embedded_once_and_bills_the_same_tokens(counting: Any) -> None:
    cached = CachedEmbedder(counting, size=2)
    first = await cached.embed(["where is my parcel?"])
    again = await cached.embed(["where is my parcel?"])
    assert counting.calls == 1 and cached.hits == 1
    assert again.tokens == first.tokens > 0 and np.array_equal(again.vectors, first.vectors)
    await cached.embed(["a"])
    await cached.embed(["b"])  # evicts the parcel question (LRU of 2)
    await cached.embed(["where is my parcel?"])
    assert counting.calls == 4
    await cached.embed(["x", "y"])  # batches pass through uncached
    assert counting.calls == 5 and cached.hits == 1
