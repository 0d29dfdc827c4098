"""SKU names: one name per billable thing. Usage lines, ClickHouse rows and dashboards use these."""

from __future__ import annotations

from typing import Final

CHAT_IN: Final = "inference.chat_completions.in"
CHAT_OUT: Final = "inference.chat_completions.out"
CHAT_IN_CACHED: Final = "inference.chat_completions.in.cached"
ROUTING_IN: Final = "inference.resolving.routing_complexity.in"
ROUTING_OUT: Final = "inference.resolving.routing_complexity.out"
ROUTING_IN_CACHED: Final = "inference.resolving.routing_complexity.in.cached"
# A resolver model rewriting the conversation into search queries (UserRewrite / FullRewrite).
REWRITE_IN: Final = "inference.resolving.query_rewrite.in"
REWRITE_IN_CACHED: Final = "inference.resolving.query_rewrite.in.cached"
REWRITE_OUT: Final = "inference.resolving.query_rewrite.out"
# A resolver model ordering search candidates by relevance (the `model` reranker).
RERANK_IN: Final = "inference.resolving.rerank.in"
RERANK_IN_CACHED: Final = "inference.resolving.rerank.in.cached"
RERANK_OUT: Final = "inference.resolving.rerank.out"
# Prompt tokens written into a provider's prompt cache (Anthropic prices them apart: 1.25x input for
# the 5-minute cache, 2x for the 1-hour one), and reasoning tokens where a provider bills them apart
# from output (`Prices.reasoning`; otherwise they are in `.out`). One set per purpose.
CHAT_IN_CACHE_WRITE: Final = "inference.chat_completions.in.cache_write"
CHAT_IN_CACHE_WRITE_1H: Final = "inference.chat_completions.in.cache_write.1h"
CHAT_OUT_REASONING: Final = "inference.chat_completions.out.reasoning"
ROUTING_IN_CACHE_WRITE: Final = "inference.resolving.routing_complexity.in.cache_write"
ROUTING_IN_CACHE_WRITE_1H: Final = "inference.resolving.routing_complexity.in.cache_write.1h"
ROUTING_OUT_REASONING: Final = "inference.resolving.routing_complexity.out.reasoning"
REWRITE_IN_CACHE_WRITE: Final = "inference.resolving.query_rewrite.in.cache_write"
REWRITE_IN_CACHE_WRITE_1H: Final = "inference.resolving.query_rewrite.in.cache_write.1h"
REWRITE_OUT_REASONING: Final = "inference.resolving.query_rewrite.out.reasoning"
RERANK_IN_CACHE_WRITE: Final = "inference.resolving.rerank.in.cache_write"
RERANK_IN_CACHE_WRITE_1H: Final = "inference.resolving.rerank.in.cache_write.1h"
RERANK_OUT_REASONING: Final = "inference.resolving.rerank.out.reasoning"
KNOWLEDGE_SEARCH: Final = "knowledge.search"
KNOWLEDGE_EMBEDDINGS_IN: Final = "knowledge.embeddings.in"
# `POST /v1/embeddings`: per token the embedding model read for a client (not for a knowledge search).
EMBEDDINGS_IN: Final = "inference.embeddings.in"
# A chat answer served from a gateway's response cache (one per hit; price per gateway, default 0).
CACHE_HIT: Final = "inference.cache.hit"
CACHE_HIT_DESCRIPTION: Final = "Answer served from the response cache"

ALL: Final = (
    CHAT_IN,
    CHAT_OUT,
    CHAT_IN_CACHED,
    ROUTING_IN,
    ROUTING_OUT,
    ROUTING_IN_CACHED,
    REWRITE_IN,
    REWRITE_IN_CACHED,
    REWRITE_OUT,
    RERANK_IN,
    RERANK_IN_CACHED,
    RERANK_OUT,
    CHAT_IN_CACHE_WRITE,
    CHAT_IN_CACHE_WRITE_1H,
    CHAT_OUT_REASONING,
    ROUTING_IN_CACHE_WRITE,
    ROUTING_IN_CACHE_WRITE_1H,
    ROUTING_OUT_REASONING,
    REWRITE_IN_CACHE_WRITE,
    REWRITE_IN_CACHE_WRITE_1H,
    REWRITE_OUT_REASONING,
    RERANK_IN_CACHE_WRITE,
    RERANK_IN_CACHE_WRITE_1H,
    RERANK_OUT_REASONING,
    KNOWLEDGE_SEARCH,
    KNOWLEDGE_EMBEDDINGS_IN,
    EMBEDDINGS_IN,
    CACHE_HIT,
)


def chat_description(model: str) -> str:
    return f"Inference for AI model '{model}'"


ROUTING_DESCRIPTION: Final = "Inference for model routing"


def rewrite_description(model: str) -> str:
    return f"Search query rewriting with AI model '{model}'"


def rerank_description(model: str) -> str:
    return f"Search result reranking with AI model '{model}'"


def embeddings_description(model: str) -> str:
    return f"Embeddings with model '{model}'"
