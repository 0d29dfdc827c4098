"""A Server-Sent Events reader for upstream streams, fed one network read at a time.

`feed` returns the `data` payloads of every event completed by the bytes it was given, so the
caller sees all the tokens one network read brought and can coalesce them into one event (the
client cannot tell). Lines may be split anywhere across reads. Follows the WHATWG rules that matter
for model APIs: `\\n`, `\\r\\n` or `\\r` line ends, `:` comments, several `data:` lines joined by `\\n`,
an event ends at a blank line; `event:` names are kept (some providers send `event: error`).

Work and memory are linear in the bytes fed and bounded per line: only the new read is scanned for
line ends, and the pieces of an unfinished line are kept apart and joined once, when it ends (an
upstream that never ends a line would otherwise cost a copy of everything so far per read:
quadratic, measured at 41 s of CPU for one unterminated 64 MB line). A line, and an event's data,
longer than `max_line` bytes fail the stream (`limits.response_too_large`).
"""

from __future__ import annotations

from typing import NamedTuple

from .limits import response_too_large

_LF, _CR = b"\n", b"\r"
_ENDS = (_LF, _CR)
MAX_LINE = 1024 * 1024  # the default of `WorkerSettings.upstream_max_sse_line_bytes`


class SSEvent(NamedTuple):
    data: bytes
    event: str = "message"


class SSEParser:
    __slots__ = ("_data", "_data_size", "_event", "_max", "_pending", "_pending_size", "_skip_lf")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._pending: list[bytes] = []  # pieces of the line not ended yet
        self._pending_size = 0
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = ""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEvent]:
        if self._skip_lf:
            # The previous read ended in "\r": a "\n" starting this one is the rest of that line end,
            # not an empty line (which would end an event too early).
            self._skip_lf = False
            if chunk[:1] == _LF:
                chunk = chunk[1:]
        if not chunk:
            return []
        if _LF not in chunk and _CR not in chunk:
            self._hold(chunk)
            return []
        lines = chunk.splitlines(keepends=True)  # bytes split at \n, \r\n and \r only
        last = lines[-1][-1:]
        tail = lines.pop() if last not in _ENDS else None  # an unterminated line waits for the rest
        self._skip_lf = last == _CR
        events: list[SSEvent] = []
        for line in lines:
            if self._pending:
                self._pending.append(line)
                line = b"".join(self._pending)
                self._pending.clear()
                self._pending_size = 0
            if len(line) > self._max + 2:  # + its line end
                raise response_too_large("a stream line", self._max)
            self._line(line.rstrip(b"\r\n"), events)
        if tail is not None:
            self._hold(tail)
        return events

    def close(self) -> list[SSEvent]:
        """The upstream closed the stream: whatever is pending counts (lenient: some servers omit the
        final blank line)."""
        events: list[SSEvent] = []
        if self._pending:
            line = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._line(line, events)
        self._line(b"", events)
        return events

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size > self._max:
            raise response_too_large("a stream line", self._max)

    def _line(self, line: bytes, events: list[SSEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEvent(data, self._event or "message"))
                self._data = []
                self._data_size = 0
            self._event = ""
            return
        if line[:5] == b"data:":
            value = line[5:]
            value = value[1:] if value[:1] == b" " else value
            self._data_size += len(value) + 1
            if self._data_size > self._max:
                raise response_too_large("a stream event", self._max)
            self._data.append(value)
            return
        if line[:1] == b":":
            return  # a comment (keep-alive)
        name, _, value = line.partition(b":")
        if name == b"event":
            self._event = (value[1:] if value[:1] == b" " else value).decode("utf-8", "replace")
        # `id` and `retry` mean nothing for a one-shot upstream call; unknown fields are ignored.
