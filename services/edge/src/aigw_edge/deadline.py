"""How long a request may take: the gateway's limit (`AIGW_REQUEST_TIMEOUT`), shortened by what the
client says it will wait, so a client with a 10 s timeout gets the fallback's answer or an
OpenAI-shaped 504 inside its 10 s instead of its own timeout error and a call billed after it left.

The client says it with `x-aigw-timeout: <seconds>` (the whole request, stream or not), or
implicitly: OpenAI's SDKs send their read timeout as `x-stainless-read-timeout`, which bounds the
wait for a whole answer (for a stream it bounds only each gap, so it is not used there). The
deadline travels in the envelope, and every hop fits its timeouts, retries and fallbacks inside it.
"""

from __future__ import annotations

import math
from typing import Final

from aigw_contracts.errors import InvalidRequest

CLIENT_TIMEOUT: Final = b"x-aigw-timeout"
SDK_READ_TIMEOUT: Final = b"x-stainless-read-timeout"
# Answered this much before the client gives up (at most 1 s, at most a tenth of its timeout), so
# the client reads our answer rather than its own timeout.
_MARGIN_SHARE: Final = 0.1
_MARGIN_MAX: Final = 1.0


def _seconds(value: bytes) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def request_timeout(limit: float, stream: bool, explicit: bytes | None, sdk_read: bytes | None) -> float:
    """Seconds the request may take: `limit`, or less when the client waits less."""
    wanted: float | None = None
    if explicit is not None:
        wanted = _seconds(explicit)
        if wanted is None:
            raise InvalidRequest(
                "x-aigw-timeout must be a positive number of seconds", param="x-aigw-timeout"
            )
    if sdk_read is not None and not stream:
        read = _seconds(sdk_read)  # the SDK's own header: never refused, ignored when odd
        if read is not None:
            wanted = read if wanted is None else min(wanted, read)
    if wanted is None or wanted >= limit:
        return limit
    return wanted - min(_MARGIN_MAX, wanted * _MARGIN_SHARE)
