"""The last N chat requests the simulator received, for tests to inspect via GET /sim/requests.

This is how a gateway test proves what went upstream (body, headers) and what became of it: the
`outcome` goes from "pending" to "completed", "tool_calls" (answered with tool calls, see the `call`
knob), "client_disconnected" (the client left before the response finished, e.g. because the
gateway cancelled the upstream call), a fault name ("429", "500", "hang", "drop") or the status of a
refusal ("400", "401").

Recording costs the hot path almost nothing: a record keeps references to the raw header list and
the already-parsed body; decoding and redaction happen only when someone reads the history.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PENDING = "pending"
COMPLETED = "completed"
TOOL_CALLS = "tool_calls"
CLIENT_DISCONNECTED = "client_disconnected"

_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "x-goog-api-key"}
)


def redact(value: str) -> str:
    """Keep an auth scheme and the first 6 characters of the secret: enough for a test to tell
    which key was sent, not enough to use it."""
    scheme, sep, secret = value.partition(" ")
    if sep and scheme.lower() in ("bearer", "basic"):
        return f"{scheme} {secret[:6]}…"
    return value[:6] + "…"


@dataclass(slots=True)
class RequestRecord:
    id: str
    headers: list[tuple[bytes, bytes]]
    received_at: float
    body: Any = None
    outcome: str = PENDING

    def to_json(self) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            headers[name] = redact(value) if name in _SECRET_HEADERS else value
        return {
            "id": self.id,
            "body": self.body,
            "headers": headers,
            "received_at": self.received_at,
            "outcome": self.outcome,
        }


class RequestHistory:
    """A bounded, oldest-first log. Only touched from the event loop, so no lock."""

    def __init__(self, size: int) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=size)

    def add(self, record: RequestRecord) -> None:
        self._records.append(record)

    def clear(self) -> None:
        self._records.clear()

    def __iter__(self) -> Iterator[RequestRecord]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)
