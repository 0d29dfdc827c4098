"""Server-Sent Events framing of chat completion chunks, as the OpenAI SDKs parse them.

Payloads arrive as the exact JSON the client sees; framing adds `data: ` and a blank line, nothing
else. Stream response headers ask proxies not to buffer (`x-accel-buffering: no`).
"""

from __future__ import annotations

from aigw_contracts.events import split_final

HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DONE = b"data: [DONE]\n\n"


def frame(payload: bytes) -> bytes:
    """One event. Compact JSON has no raw line breaks; anything else is split into `data:` lines,
    which SSE readers join back with newlines, so the event stays intact."""
    if b"\n" in payload or b"\r" in payload:
        lines = payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"
    return b"data: " + payload + b"\n\n"


def final(payload: bytes) -> bytes:
    """A stream's closing chunks (one JSON document per line of the `final` event), then [DONE]."""
    return b"".join(b"data: " + line + b"\n\n" for line in split_final(payload)) + DONE


def error(payload: bytes) -> bytes:
    """An error after the stream started: the SDKs raise on a chunk holding `error`; [DONE] then
    tells plain SSE readers the stream is over."""
    return frame(payload) + DONE
