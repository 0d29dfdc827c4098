"""The rounds of a `QueryFunction` gateway's tool loop, for streamed and whole answers.

After each upstream answer, the knowledge calls it made (`knowledge_tool.KnowledgeLoop` decides
which may run) are answered by the worker and the model is called again; the client sees one
answer. A streamed answer continues the same client stream across rounds; a whole answer is the
last round's, without the knowledge calls the loop did not run. Each round's usage joins the
request's (`accounting.Ledger.next_round`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .assemble import StreamAssembler
from .knowledge_tool import split_calls
from .state import CallState


async def streamed_rounds(
    state: CallState,
    first: StreamAssembler,
    relay: Callable[[StreamAssembler], Awaitable[StreamAssembler]],
) -> tuple[StreamAssembler, list[str]]:
    """Run the rounds after `first` (a streamed round already relayed): the last round's
    assembler and the text said across rounds (when citations may need it)."""
    assembler = first
    spoken = list(assembler.said)
    loop = state.loop
    while loop is not None:
        calls = loop.calls_to_run(assembler.hidden_calls())
        if not calls or assembler.shown_tools:
            break
        state.ledger.next_round(assembler.usage)
        await loop.run(state.route.body, "".join(assembler.said), calls)
        after = StreamAssembler(assembler.writer, state.route.prefill, loop.tool.name, after=assembler)
        assembler = await relay(after)
        spoken += assembler.said
    return assembler, spoken


async def whole_rounds(state: CallState, data: Any, fetch: Callable[[float], Awaitable[Any]]) -> Any:
    """Run the rounds after `data` (a whole answer, parsed): the answer for the client."""
    loop = state.loop
    while loop is not None:
        message = first_message(data)
        calls = loop.calls_to_run(message.get("tool_calls") or [])
        if not calls:
            drop_calls(data, loop.tool.name)
            break
        state.ledger.next_round(data.get("usage"))
        content = message.get("content")
        await loop.run(state.route.body, content if isinstance(content, str) else None, calls)
        data = await fetch(state.envelope.remaining())
    return data


def first_message(data: Any) -> dict[str, Any]:
    """The first choice's message of a whole answer ({} if it has none: `complete.py` says why)."""
    choices = data.get("choices") if isinstance(data, dict) else None
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message if isinstance(message, dict) else {}


def drop_calls(data: Any, name: str) -> None:
    """Remove the knowledge function's calls the loop did not run from an answer to the client."""
    for choice in data.get("choices") or () if isinstance(data, dict) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict) or not isinstance(message.get("tool_calls"), list):
            continue
        ours, theirs = split_calls(message["tool_calls"], name)
        if not ours:
            continue
        message["tool_calls"] = theirs or None
        if not theirs and choice.get("finish_reason") == "tool_calls":
            choice["finish_reason"] = "stop"
