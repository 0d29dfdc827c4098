"""The knowledge tool of `QueryFunction` gateways: its definition, and the searches a worker asks for.

Instead of searching before the model runs, a `QueryFunction` gateway offers the model a function
(`knowledge_search`, one `query` string). The grounder (`grounding.py`) adds its definition to the
routed body and hands the worker a `KnowledgeTool`; the worker runs the tool loop and sends each call
here as a `ToolSearch` (`subjects.RETRIEVAL_TOOL`). The answer is the tool message's content: the
passages fenced as untrusted data exactly as injection fences them (`inject.render_passages`), so a
document cannot smuggle instructions through the tool result either.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from aigw_contracts import ChatEnvelope, errors
from aigw_contracts.knowledge import (
    KNOWLEDGE_TOOL_NAME,
    Collection,
    GatewayKnowledge,
    Grounding,
    KnowledgeSearch,
    KnowledgeTool,
    ToolSearch,
    ToolSearchResult,
)

from .inject import render_passages
from .manage import Reply
from .search import UnsupportedReranker
from .service import Knowledge
from .stores import CollectionNotFound, Scope

log = logging.getLogger("aigw.retrieval.tool")

NO_PASSAGES = "No passages of the knowledge collection matched this query."


def tool_definition(collection: Collection | None) -> dict[str, Any]:
    """The OpenAI function the model is offered; the collection's description tells it when to call."""
    about = f" '{collection.name}'" if collection is not None else ""
    if collection is not None and collection.description:
        about += f" ({collection.description.strip()[:300]})"
    return {
        "type": "function",
        "function": {
            "name": KNOWLEDGE_TOOL_NAME,
            "description": (
                f"Search the knowledge collection{about} for passages relevant to a query. Call it "
                "whenever the answer may depend on facts from these documents, with a self-contained "
                "query; cite the passages you use by their id in square brackets."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "What to search for, in a few words."}
                },
                "required": ["query"],
                "additionalProperties": False,
            },
        },
    }


def offer_tool(
    envelope: ChatEnvelope, knowledge: GatewayKnowledge, scope: Scope, found: Collection | None
) -> None:
    """Turn a routed envelope into a tool-loop one: the function offered, the worker told how to answer it."""
    route = envelope.route
    assert route is not None
    tools = list(route.body.get("tools") or [])
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == KNOWLEDGE_TOOL_NAME:
            raise errors.InvalidRequest(
                f"This gateway answers the tool '{KNOWLEDGE_TOOL_NAME}' itself (its knowledge); "
                "name your own tool differently.",
                param="tools",
            )
    route.body["tools"] = [*tools, tool_definition(found)]
    route.knowledge_tool = KnowledgeTool(
        collection=scope.collection,
        top=knowledge.top,
        min_score=knowledge.min_score,
        reranker=knowledge.reranker,
        max_rounds=knowledge.max_tool_rounds,
    )


class ToolSearcher:
    """Answers `ToolSearch` requests from workers (not metered here: see `ToolSearchResult`)."""

    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge

    async def answer(self, data: bytes) -> Reply:
        try:
            request = ToolSearch.model_validate_json(data)
        except ValidationError as exc:
            return errors.error_reply(errors.invalid_message(exc, "tool search"))
        try:
            result = await self.search(request)
        except errors.GatewayError as err:
            return errors.error_reply(err)
        except Exception:
            log.exception("tool search failed", extra={"request_id": request.request_id})
            return errors.error_reply(
                errors.InternalError("The knowledge search failed; it has been logged.")
            )
        return result.model_dump_json().encode(), None

    async def search(self, request: ToolSearch) -> ToolSearchResult:
        k = self.knowledge
        if k.foreign(request.tenant, request.collection):  # never trust the bus alone
            raise errors.NotFound(
                "This gateway's knowledge collection does not exist.", code="collection_not_found"
            )
        query = request.query.strip()[-k.settings.max_query_chars :]
        search = KnowledgeSearch(
            query=query, top=request.top, min_score=request.min_score, reranker=request.reranker
        )
        passages, tokens = [], 0
        try:
            found = await k.searcher.search(Scope(request.tenant, request.collection), search)
            passages, tokens = found.passages, found.embedding_tokens
        except CollectionNotFound:  # no document added yet
            pass
        except UnsupportedReranker as exc:
            raise errors.InvalidRequest(f"This gateway's {exc}.", param="knowledge.reranker") from None
        return ToolSearchResult(
            content=render_passages(passages) or NO_PASSAGES,
            grounding=[Grounding.of(p) for p in passages],
            lines=k.lines(1, tokens),
        )
