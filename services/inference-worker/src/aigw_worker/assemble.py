"""Upstream stream chunks in, client delta events out, coalesced per network read.

Everything one read brought for a choice becomes ONE delta event: the text pieces are joined,
logprobs lists concatenated, and fragments of the same tool call merged (a client accumulates them
the same way, so it cannot tell). Fragments of a different tool call index start a new event, so no
client ever sees two tool calls' pieces inside one entry. A choice's first event carries
`role: assistant` and content starting with the gateway's prefill, so the answer contains it.

With `n` > 1 the upstream interleaves its choices; each is assembled on its own (`_Choice`) and
its events name its `index`, every choice starting with the prefill. Choice 0 is kept apart
from the others so the common case (one choice, text only) costs no lookup per chunk.

A tool loop (`knowledge_tool.py`, one choice only) passes `hide`: calls of that function are held
back from the client (`hidden`), and the text said alongside them is kept (`said`) for the
conversation's next round, which continues the same client stream (`after`: no second role event).
Grounded answers pass `keep` to keep their text too, for citation annotations (`citations.py`).

Thinking text is relayed as `delta.reasoning_content` (the field DeepSeek, vLLM and OpenRouter
stream, and the one the provider adapters translate Anthropic's and Gemini's thinking into),
coalesced like content but never part of what the answer `said`.
"""

from __future__ import annotations

from typing import Any

from aigw_contracts.errors import UpstreamError

from .chunks import ChunkWriter
from .jsonio import loads
from .sse import SSEvent

DONE = b"[DONE]"
MAX_CHOICES = 128  # the most a request may ask for (`n`); other indexes are not ours to relay


class _Choice:
    """What one choice has pending for the client, and what it said so far."""

    __slots__ = (
        "finish_reason",
        "index",
        "logprobs",
        "reasoning",
        "refusal",
        "said",
        "started",
        "text",
        "tools",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.started = False  # the first (role) event is out
        self.finish_reason: str | None = None
        self.text: list[str] = []
        self.refusal: list[str] = []
        self.reasoning: list[str] = []  # thinking text (`reasoning_content`), relayed, never kept
        self.logprobs: dict[str, Any] | None = None
        self.tools: list[dict[str, Any]] = []
        self.said: list[str] = []  # this round's text, kept only with `keep` or `hide`


class StreamAssembler:
    __slots__ = (
        "_choices",
        "_zero",
        "completion_chars",
        "done",
        "hidden",
        "hide",
        "keep",
        "n",
        "prefill",
        "seen",
        "shown_tools",
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
        n: int = 1,
    ) -> None:
        self.writer = writer
        self.prefill = prefill or ""
        self.n = n  # choices asked for: `close` starts any the upstream never sent
        self.seen: bool = after.seen if after else False  # any upstream chunk yet
        self._zero = _Choice(0)
        self._zero.started = after.started if after else False
        self._choices: dict[int, _Choice] = {}  # choices other than 0, by index
        self.done = False  # [DONE] seen
        self.usage: Any = None  # the upstream's raw usage object, when it sent one
        self.completion_chars = 0  # characters generated, for an estimate when usage never comes
        self.hide = hide
        self.hidden: dict[int, dict[str, Any]] = {}  # held-back calls of `hide`, by index
        self.keep = keep or hide is not None
        self.shown_tools = False  # a tool call went to the client

    # ------------------------------------------------------------------ what the call reads back
    @property
    def started(self) -> bool:
        """Choice 0's first (role) event is out."""
        return self._zero.started

    @property
    def said(self) -> list[str]:
        """Choice 0's text this round (with `keep` or `hide`)."""
        return self._zero.said

    def said_by(self) -> dict[int, str]:
        """Each choice's text this round (with `keep`), by index."""
        return {c.index: "".join(c.said) for c in self._all()}

    @property
    def finish_reason(self) -> str | None:
        """Choice 0's finish reason, else the first another choice gave."""
        if self._zero.finish_reason is not None:
            return self._zero.finish_reason
        for choice in self._choices.values():
            if choice.finish_reason is not None:
                return choice.finish_reason
        return None

    def finish_reasons(self, default: str = "stop") -> dict[int, str]:
        """Every choice's finish reason by index (`default` for one the upstream never finished)."""
        return {c.index: c.finish_reason or default for c in self._all()}

    # ------------------------------------------------------------------ feeding
    def feed(self, events: list[SSEvent] | list[Any]) -> list[bytes]:
        """The client events (payloads) for the upstream events of one network read: OpenAI SSE
        events, or the OpenAI chunks (dicts) a provider's stream decoder made (`providers/`)."""
        out: list[bytes] = []
        for event in events:
            if type(event) is dict:
                self._absorb(event, out)
                continue
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
        """What is still pending at the end; at least each choice's first (role and prefill) event."""
        out: list[bytes] = []
        if not self.seen:
            self.writer.begin(None)
            self.seen = True
        for index in range(1, min(self.n, MAX_CHOICES)):
            self._choice(index)
        self._flush(out)
        for choice in self._all():
            if not choice.started:
                self._flush_choice(choice, out)
        return out

    def hidden_calls(self) -> list[dict[str, Any]]:
        """The held-back calls, whole, in index order."""
        return [{k: v for k, v in self.hidden[i].items() if k != "index"} for i in sorted(self.hidden)]

    # ------------------------------------------------------------------ internals
    def _all(self) -> list[_Choice]:
        if not self._choices:
            return [self._zero]
        return [self._zero, *(self._choices[i] for i in sorted(self._choices))]

    def _choice(self, index: int) -> _Choice:
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice(index)
        return choice

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
        for raw in choices:
            if not isinstance(raw, dict):
                continue
            index = raw.get("index", 0)
            if index == 0:
                state = self._zero
            elif isinstance(index, int) and 0 < index < MAX_CHOICES and not isinstance(index, bool):
                state = self._choice(index)
            else:
                continue
            delta = raw.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if content and isinstance(content, str):
                    state.text.append(content)
                    self.completion_chars += len(content)
                    if self.keep:
                        state.said.append(content)
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    state.refusal.append(refusal)
                    self.completion_chars += len(refusal)
                reasoning = delta.get("reasoning_content")
                if reasoning and isinstance(reasoning, str):
                    state.reasoning.append(reasoning)
                    self.completion_chars += len(reasoning)
                tool_calls = delta.get("tool_calls")
                if tool_calls and isinstance(tool_calls, list):
                    for fragment in tool_calls:
                        if isinstance(fragment, dict):
                            self._add_tool(state, fragment, out)
            logprobs = raw.get("logprobs")
            if logprobs and isinstance(logprobs, dict):
                _add_logprobs(state, logprobs)
            finish = raw.get("finish_reason")
            if finish:
                state.finish_reason = str(finish)

    def _add_tool(self, state: _Choice, fragment: dict[str, Any], out: list[bytes]) -> None:
        function = fragment.get("function")
        if isinstance(function, dict):
            self.completion_chars += len(str(function.get("arguments") or "")) + len(
                str(function.get("name") or "")
            )
        index = fragment.get("index", 0)
        if (
            self.hide is not None
            and state is self._zero
            and (
                (isinstance(index, int) and index in self.hidden)
                or (isinstance(function, dict) and function.get("name") == self.hide)
            )
        ):
            index = index if isinstance(index, int) else 0
            held = self.hidden.get(index)
            if held is None:
                self.hidden[index] = _copy(fragment)
            else:
                _merge(held, fragment)
            return
        self.shown_tools = True
        tools = state.tools
        if tools and tools[-1].get("index", 0) != index:
            self._flush_choice(state, out)
            tools = state.tools
        if tools:
            _merge(tools[-1], fragment)
        else:
            tools.append(_copy(fragment))

    def _flush(self, out: list[bytes]) -> None:
        if not self.seen:
            return
        self._flush_choice(self._zero, out)
        if self._choices:
            for index in sorted(self._choices):
                choice = self._choices[index]
                if (
                    choice.text
                    or choice.refusal
                    or choice.reasoning
                    or choice.tools
                    or choice.logprobs is not None
                ):
                    self._flush_choice(choice, out)

    def _flush_choice(self, choice: _Choice, out: list[bytes]) -> None:
        if choice.started and not (
            choice.text or choice.refusal or choice.reasoning or choice.tools or choice.logprobs
        ):
            return
        text = "".join(choice.text) if choice.text else ""
        writer = self.writer
        index = choice.index
        if not (choice.refusal or choice.reasoning or choice.tools or choice.logprobs):
            if choice.started:
                out.append(writer.content(text, index))
            else:
                out.append(writer.first(self.prefill + text, index))
                choice.started = True
            choice.text.clear()
            return
        delta: dict[str, Any] = {}
        if not choice.started:
            delta["role"] = "assistant"
            delta["content"] = self.prefill + text
        elif text:
            delta["content"] = text
        if choice.reasoning:
            delta["reasoning_content"] = "".join(choice.reasoning)
        if choice.refusal:
            delta["refusal"] = "".join(choice.refusal)
        if choice.tools:
            delta["tool_calls"] = choice.tools
        out.append(writer.delta(delta, choice.logprobs, index))
        choice.started = True
        choice.text.clear()
        choice.refusal = []
        choice.reasoning = []
        choice.tools = []
        choice.logprobs = None


def _add_logprobs(choice: _Choice, logprobs: dict[str, Any]) -> None:
    """Coalesce a chunk's logprobs into what the choice has pending: token lists concatenate."""
    if choice.logprobs is None:
        choice.logprobs = {}
    for key, value in logprobs.items():
        if isinstance(value, list):
            current = choice.logprobs.get(key)
            if isinstance(current, list):
                current.extend(value)
            else:
                choice.logprobs[key] = list(value)
        else:
            choice.logprobs.setdefault(key, value)


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


def choices_asked(body: dict[str, Any]) -> int:
    """How many choices the upstream was asked for (`n`, 1 when unset)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
