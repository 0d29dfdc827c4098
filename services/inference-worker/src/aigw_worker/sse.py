"""A Server-Sent Events reader for upstream streams, fed one network read at a time.

`feed` returns the `data` payloads of every event completed by the bytes it was given, so the
caller sees all the tokens one network read brought and can coalesce them into one event (the
client cannot tell). Lines may be split anywhere across reads. Follows the WHATWG rules that matter
for model APIs: `\\n`, `\\r\\n` or `\\r` line ends, `:` comments, several `data:` lines joined by `\\n`,
an event ends at a blank line; `event:` names are kept (some providers send `event: error`).
"""

from __future__ import annotations

from typing import NamedTuple

_LF, _CR = b"\n", b"\r"


class SSEvent(NamedTuple):
    data: bytes
    event: str = "message"


class SSEParser:
    __slots__ = ("_buffer", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = ""
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SSEvent]:
        if self._skip_lf:
            # The previous read ended in "\r": a "\n" starting this one is the rest of that line end,
            # not an empty line (which would end an event too early).
            self._skip_lf = False
            if chunk[:1] == _LF:
                chunk = chunk[1:]
        buffer = self._buffer + chunk if self._buffer else chunk
        if _LF not in buffer and _CR not in buffer:
            self._buffer = buffer
            return []
        lines = buffer.splitlines(keepends=True)
        last = lines[-1][-1:]
        if last == _LF:
            self._buffer = b""
        elif last == _CR:
            self._buffer = b""
            self._skip_lf = True
        else:
            self._buffer = lines.pop()  # an unterminated line waits for the rest
        events: list[SSEvent] = []
        for line in lines:
            self._line(line.rstrip(b"\r\n"), events)
        return events

    def close(self) -> list[SSEvent]:
        """The upstream closed the stream: whatever is pending counts (lenient: some servers omit the
        final blank line)."""
        events: list[SSEvent] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r\n"), events)
            self._buffer = b""
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEvent]) -> None:
        if not line:
            if self._data:
                data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                events.append(SSEvent(data, self._event or "message"))
                self._data = []
            self._event = ""
            return
        if line[:5] == b"data:":
            value = line[5:]
            self._data.append(value[1:] if value[:1] == b" " else value)
            return
        if line[:1] == b":":
            return  # a comment (keep-alive)
        name, _, value = line.partition(b":")
        if name == b"event":
            self._event = (value[1:] if value[:1] == b" " else value).decode("utf-8", "replace")
        # `id` and `retry` mean nothing for a one-shot upstream call; unknown fields are ignored.
