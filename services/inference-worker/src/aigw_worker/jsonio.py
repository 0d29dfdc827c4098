"""Parsing the JSON an upstream (or the usage stream) sends, on the hot path.

`pydantic_core.from_json` (Rust, already here through pydantic) parses a stream chunk about 2.5x
faster than `json.loads` (measured: 1.7 µs vs 4.4 µs for a 250-byte chunk on this machine kind),
and a stream parses one per upstream event. It rejects one thing `json.loads` accepts: escapes of
lone UTF-16 surrogates (`"\\ud800"`), which some upstreams emit when a token splits an emoji. So
anything it refuses is parsed again by `json.loads`, and exactly what `json.loads` accepts is
accepted, as before.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic_core import from_json


def loads(data: bytes) -> Any:
    """Parse JSON; raises ValueError when it is not JSON."""
    try:
        return from_json(data)
    except ValueError:
        return json.loads(data)
