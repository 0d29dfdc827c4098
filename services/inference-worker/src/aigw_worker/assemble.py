"""Upstream stream chunks in, client delta events out, coalesced per network read.

Everything one read brought becomes ONE delta event: the text pieces are joined, logprobs lists
concatenated, and fragments of the same tool call merged (a client accumulates them the same way,
so it cannot tell). Fragments of a different tool call index start a new event, so no client ever
sees two tool calls' pieces inside one entry. The first event carries `role: assistant` and content
starting with the gateway's prefill, so the answer contains it.

A tool loop (`knowledge_tool.py`) passes `hide`: calls of that function are held back from the
client (`hidden`), and the text said alongside them is kept (`said`) for the conversation's next
round, which continues the same client stream (`after`: no second role event). Grounded answers
pass `keep` to keep their text too, for citation annotations (`citations.py`).
"""

from __future__ import annotations

from typing import Any

from aigw_contracts.errors import UpstreamError

from .chunks import ChunkWriter
from .jsonio import loads
from .sse import SSEvent

DONE = b"[DONE]"


class StreamAssembler:
    __slots__ = (
        "_logprobs",
        "_refusal",
        "_text",
        "_tools",
        "completion_chars",
        "done",
        "finish_reason",
        "hidden",
        "hide",
        "keep",
        "prefill",
        "said",
        "seen",
        "shown_tools",
        "started",
        "usage",
        "writer",
    )

    def __init__(
        self,
        writer: ChunkWriter,
        prefill: str | None,
        hide: str | None = None,
        after: StreamAssembler | None = None,
        keep: bool = False,
    ) -> None:
        self.writer = writer
        self.prefill = prefill or ""
        self.seen: bool = after.seen if after else False  # any upstream chunk yet
        self.started: bool = after.started if after else False  # the first (role) event is out
        self.done = False  # [DONE] seen
        self.finish_reason: str | None = None
        self.usage: Any = None  # the upstream's raw usage object, when it sent one
        self.completion_chars = 0  # characters generated, for an estimate when usage never comes
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._logprobs: dict[str, Any] | None = None
        self._tools: list[dict[str, Any]] = []
        self.hide = hide
        self.hidden: dict[int, dict[str, Any]] = {}  # held-back calls of `hide`, by index
        self.keep = keep or hide is not None
        self.said: list[str] = []  # this round's text, kept only with `keep` or `hide`
        self.shown_tools = False  # a tool call went to the client

    def feed(self, events: list[SSEvent]) -> list[bytes]:
        """The client events (payloads) for the upstream events of one network read."""
        out: list[bytes] = []
        for event in events:
            data = event.data
            if data == DONE:
                self.done = True
                continue
            if self.done:
                continue
            try:
                chunk = loads(data)
            except ValueError:
                raise UpstreamError("The upstream model sent a malformed stream chunk") from None
            if not isinstance(chunk, dict):
                raise UpstreamError("The upstream model sent a malformed stream chunk")
            if event.event == "error" or chunk.get("error"):
                raise UpstreamError(f"The upstream model failed mid-answer: {_error_message(chunk)}")
            self._absorb(chunk, out)
        self._flush(out)
        return out

    def close(self) -> list[bytes]:
        """What is still pending at the end; at least the first (role and prefill) event."""
        out: list[bytes] = []
        if not self.seen:
            self.writer.begin(None)
            self.seen = True
        self._flush(out)
        return out

    def hidden_calls(self) -> list[dict[str, Any]]:
        """The held-back calls, whole, in index order."""
        return [{k: v for k, v in self.hidden[i].items() if k != "index"} for i in sorted(self.hidden)]

    # ------------------------------------------------------------------ internals
    def _absorb(self, chunk: dict[str, Any], out: list[bytes]) -> None:
        if not self.seen:
            fingerprint = chunk.get("system_fingerprint")
            self.writer.begin(fingerprint if isinstance(fingerprint, str) else None)
            self.seen = True
        usage = chunk.get("usage")
        if usage:
            self.usage = usage
        choices = chunk.get("choices")
        if not choices or not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # n is 1: only the first choice exists
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if content and isinstance(content, str):
                    self._text.append(content)
                    self.completion_chars += len(content)
                    if self.keep:
                        self.said.append(content)
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    self._refusal.append(refusal)
                    self.completion_chars += len(refusal)
                tool_calls = delta.get("tool_calls")
                if tool_calls and isinstance(tool_calls, list):
                    for fragment in tool_calls:
                        if isinstance(fragment, dict):
                            self._add_tool(fragment, out)
            logprobs = choice.get("logprobs")
            if logprobs and isinstance(logprobs, dict):
                self._add_logprobs(logprobs)
            finish = choice.get("finish_reason")
            if finish:
                self.finish_reason = str(finish)

    def _add_tool(self, fragment: dict[str, Any], out: list[bytes]) -> None:
        function = fragment.get("function")
        if isinstance(function, dict):
            self.completion_chars += len(str(function.get("arguments") or "")) + len(
                str(function.get("name") or "")
            )
        index = fragment.get("index", 0)
        if self.hide is not None and (
            (isinstance(index, int) and index in self.hidden)
            or (isinstance(function, dict) and function.get("name") == self.hide)
        ):
            index = index if isinstance(index, int) else 0
            held = self.hidden.get(index)
            if held is None:
                self.hidden[index] = _copy(fragment)
            else:
                _merge(held, fragment)
            return
        self.shown_tools = True
        if self._tools and self._tools[-1].get("index", 0) != index:
            self._flush(out)
        if self._tools:
            _merge(self._tools[-1], fragment)
        else:
            self._tools.append(_copy(fragment))

    def _add_logprobs(self, logprobs: dict[str, Any]) -> None:
        if self._logprobs is None:
            self._logprobs = {}
        for key, value in logprobs.items():
            if isinstance(value, list):
                self._logprobs.setdefault(key, []).extend(value)
            else:
                self._logprobs.setdefault(key, value)

    def _flush(self, out: list[bytes]) -> None:
        if not self.seen:
            return
        if self.started and not (self._text or self._refusal or self._tools or self._logprobs):
            return
        text = "".join(self._text) if self._text else ""
        writer = self.writer
        if not (self._refusal or self._tools or self._logprobs):
            if self.started:
                out.append(writer.content(text))
            else:
                out.append(writer.first(self.prefill + text))
                self.started = True
            self._text.clear()
            return
        delta: dict[str, Any] = {}
        if not self.started:
            delta["role"] = "assistant"
            delta["content"] = self.prefill + text
        elif text:
            delta["content"] = text
        if self._refusal:
            delta["refusal"] = "".join(self._refusal)
        if self._tools:
            delta["tool_calls"] = self._tools
        out.append(writer.delta(delta, self._logprobs))
        self.started = True
        self._text.clear()
        self._refusal = []
        self._tools = []
        self._logprobs = None


def _copy(fragment: dict[str, Any]) -> dict[str, Any]:
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in fragment.items()}


def _merge(into: dict[str, Any], fragment: dict[str, Any]) -> None:
    """Append a later fragment of the same tool call: strings concatenate (arguments arrive in
    pieces), ids and types are kept from the first fragment."""
    for key, value in fragment.items():
        if key in ("index", "id", "type") and key in into and into[key] is not None:
            continue
        current = into.get(key)
        if isinstance(value, str) and isinstance(current, str):
            into[key] = current + value
        elif isinstance(value, dict) and isinstance(current, dict):
            _merge(current, value)
        elif current is None:
            into[key] = dict(value) if isinstance(value, dict) else value


def _error_message(chunk: dict[str, Any]) -> str:
    error = chunk.get("error")
    if isinstance(error, dict):
        return " ".join(str(error.get("message") or "unknown error").split())[:300]
    return " ".join(str(error or "unknown error").split())[:300]
