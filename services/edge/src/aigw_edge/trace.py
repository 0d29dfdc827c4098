"""W3C trace context carried in the envelope, so downstream spans can join the client's trace.

With tracing on (`aigw_runtime.telemetry`), the edge's own span is the parent the envelope names.
Without it, a valid incoming `traceparent` is forwarded unchanged: the edge records no span of its
own, so inventing a parent id here would point at a span no tracing backend has. Without one, a
new trace starts whose trace id is the request id (one id to search logs and traces by).
"""

from __future__ import annotations

import json
import os
import re

from opentelemetry.trace import Span

from aigw_runtime import telemetry

_TRACEPARENT = re.compile(rb"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16
_MAX_TRACESTATE = 512  # the W3C limit a vendor must propagate


def valid_traceparent(value: bytes) -> bool:
    return (
        _TRACEPARENT.match(value) is not None
        and not value.startswith(b"ff")
        and value[3:35] != _ZERO_TRACE
        and value[36:52] != _ZERO_PARENT
    )


def trace_json(traceparent: bytes | None, tracestate: bytes | None, request_id: str) -> bytes:
    """The envelope's `trace` object, as JSON bytes."""
    if traceparent is not None and valid_traceparent(traceparent.strip()):
        parent = traceparent.strip().decode()
        if tracestate and len(tracestate) <= _MAX_TRACESTATE:
            state = json.dumps(tracestate.decode("latin-1"))
            return f'{{"traceparent":"{parent}","tracestate":{state}}}'.encode()
        return f'{{"traceparent":"{parent}"}}'.encode()
    return f'{{"traceparent":"00-{request_id.replace("-", "")}-{os.urandom(8).hex()}-00"}}'.encode()


def span_trace_json(span: Span) -> bytes:
    """The envelope's `trace` object when tracing is on: the edge's own span is the parent."""
    carrier: dict[str, str] = {}
    telemetry.inject(span, carrier)
    return json.dumps(carrier, separators=(",", ":")).encode()
