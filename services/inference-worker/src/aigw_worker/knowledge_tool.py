"""The tool loop of `QueryFunction` gateways: the model searches the knowledge collection itself.

The routed body already offers the function (`route.body["tools"]`, added by the retrieval
service). When an answer calls it, the worker does not pass the call to the client: it asks the
retrieval service for each call (`subjects.RETRIEVAL_TOOL`, in parallel), appends the assistant's
turn and one `tool` message per call to the conversation, and calls the model again. The client
sees one answer; `generation_context.runned_functions` lists the calls, `grounding` the passages.

Rules, so the loop always ends and never hides what the client asked for:

* at most `max_rounds` rounds of calls; the call after the last round cannot call the function again
  (`tool_choice: "none"`, or the function withdrawn when the client offers tools of its own);
* an answer that also calls the client's own tools goes to the client as is, minus the knowledge
  calls (the client runs its tools; the next request may search again);
* a call with unusable arguments gets a tool message saying so, and the model may try again;
* a failing search (no retrieval service, a timeout) fails the request with that error.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aigw_contracts import ChatEnvelope, GeneratedUsage, subjects
from aigw_contracts.knowledge import Grounding, KnowledgeTool, ToolSearch, ToolSearchResult

from .bus import Bus

BAD_ARGUMENTS = (
    'The search needs JSON arguments with a non-empty "query" string, e.g. {"query": "refund policy"}.'
)


def split_calls(calls: list[dict[str, Any]], name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(calls of the knowledge function, the client's own calls), each in the order given."""
    ours: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        (ours if isinstance(function, dict) and function.get("name") == name else theirs).append(call)
    return ours, theirs


def _query(arguments: Any) -> str | None:
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return None
    query = parsed.get("query") if isinstance(parsed, dict) else None
    if isinstance(query, list):  # some models send several queries: a ranked union, as search does
        query = " ".join(q for q in query if isinstance(q, str))
    return (query.strip() or None) if isinstance(query, str) else None


class KnowledgeLoop:
    """One request's tool loop: the rounds run so far, what they found and what they cost."""

    def __init__(self, tool: KnowledgeTool, envelope: ChatEnvelope, bus: Bus, prefill: str | None) -> None:
        self.tool = tool
        self.envelope = envelope
        self.bus = bus
        self.prefill = prefill
        self.rounds = 0
        self.functions: list[dict[str, Any]] = []  # generation_context.runned_functions
        self.grounding: list[Grounding] = []
        self.lines: list[GeneratedUsage] = []  # every search's lines (merged when reported)

    @property
    def may_call(self) -> bool:
        """Whether another round of calls may run."""
        return self.rounds < self.tool.max_rounds

    def calls_to_run(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The knowledge calls of an answer to run now: none when rounds are spent or the answer
        also calls the client's tools (then the client gets the answer)."""
        ours, theirs = split_calls(calls, self.tool.name)
        return ours if ours and not theirs and self.may_call else []

    async def run(self, body: dict[str, Any], said: str | None, calls: list[dict[str, Any]]) -> None:
        """Answer `calls` and append the assistant's turn and the results to `body["messages"]`."""
        # Some OpenAI-compatible servers send no call ids; a tool message must name its call.
        calls = [
            c if c.get("id") else {**c, "id": f"call_aigw_{self.rounds}_{i}"} for i, c in enumerate(calls)
        ]
        results = await asyncio.gather(*(self._search(call) for call in calls))
        turn: list[dict[str, Any]] = [
            {
                "role": "assistant",
                "content": said or None,
                "tool_calls": [
                    {"id": c.get("id"), "type": "function", "function": dict(c.get("function") or {})}
                    for c in calls
                ],
            }
        ]
        turn += [
            {"role": "tool", "tool_call_id": c.get("id"), "content": r}
            for c, r in zip(calls, results, strict=True)
        ]
        messages = list(body.get("messages") or [])
        at = len(messages)
        last = messages[-1] if messages else None
        if (
            self.prefill
            and isinstance(last, dict)
            and last.get("role") == "assistant"
            and last.get("content") == self.prefill
        ):
            at -= 1  # the prefill stays last: the final answer still continues it
        messages[at:at] = turn
        body["messages"] = messages
        self.rounds += 1
        if not self.may_call:
            self._withdraw(body)

    def _withdraw(self, body: dict[str, Any]) -> None:
        """The next call must answer: no more knowledge calls."""
        _ours, theirs = split_calls(list(body.get("tools") or []), self.tool.name)
        if theirs:
            body["tools"] = theirs
        else:
            body["tool_choice"] = "none"  # the tool stays defined: the history refers to it
            body.pop("parallel_tool_calls", None)

    async def _search(self, call: dict[str, Any]) -> str:
        function = call.get("function") or {}
        arguments = function.get("arguments")
        record: dict[str, Any] = {"id": call.get("id"), "name": self.tool.name, "arguments": arguments}
        self.functions.append(record)
        query = _query(arguments)
        if query is None:
            record["error"] = "invalid_arguments"
            return BAD_ARGUMENTS
        started = time.monotonic()
        request = ToolSearch(
            request_id=self.envelope.request_id,
            tenant=self.envelope.tenant,
            collection=self.tool.collection,
            query=query,
            top=self.tool.top,
            min_score=self.tool.min_score,
            reranker=self.tool.reranker,
        )
        reply = await self.bus.request(
            subjects.RETRIEVAL_TOOL,
            request.model_dump_json().encode(),
            self.envelope.remaining(),
            "retrieval service",
            "search the knowledge",
        )
        result = ToolSearchResult.model_validate_json(reply.data)
        self.lines += result.lines
        known = {g.id for g in self.grounding}
        self.grounding += [g for g in result.grounding if g.id not in known]
        record["passages"] = [g.id for g in result.grounding]
        record["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
        return result.content
