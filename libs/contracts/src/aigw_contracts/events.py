"""Stream events on a request's reply subject (worker -> edge).

The payload is the exact JSON the client will see, serialized once by the worker; the event's kind,
sequence number and (for errors) HTTP status travel in NATS headers, so the edge relays bytes
without parsing them:

* `delta`: one `chat.completion.chunk` (possibly several upstream tokens coalesced);
* `final`: for a stream, the closing chunks (the last one carries `usage` and
  `generation_context`), one JSON document per line; for a non-stream request, the whole
  `chat.completion` body;
* `error`: an OpenAI error body; `Aigw-Status` holds the HTTP status;
* `alive`: no payload and no sequence number: the process holding the request (router, retrieval,
  worker) is still working on it (`aigw_runtime.heartbeat`). Never relayed to the client; an edge
  that hears neither events nor heartbeats for its holder timeout ends the request.

Every stream ends with exactly one `final` or `error`. Sequence numbers start at 0 with no gaps,
so a lost event (core NATS is at-most-once) is detected, not silently skipped.
"""

from __future__ import annotations

from enum import StrEnum

from . import headers
from .errors import GatewayError


class EventKind(StrEnum):
    DELTA = "delta"
    FINAL = "final"
    ERROR = "error"
    ALIVE = "alive"


def event_headers(kind: EventKind, seq: int) -> dict[str, str]:
    return {headers.EVENT: kind.value, headers.SEQ: str(seq)}


def error_event(err: GatewayError, seq: int) -> tuple[dict[str, str], bytes]:
    """Headers and payload of an error event for `err`."""
    hdrs = event_headers(EventKind.ERROR, seq)
    hdrs[headers.STATUS] = str(err.status)
    if err.retry_after is not None:
        hdrs[headers.RETRY_AFTER] = f"{err.retry_after:g}"
    if err.should_retry is False:
        hdrs[headers.SHOULD_RETRY] = "false"
    return hdrs, err.to_json()


def split_final(payload: bytes) -> list[bytes]:
    """The chunks of a stream's `final` event, in order."""
    return [line for line in payload.split(b"\n") if line]
