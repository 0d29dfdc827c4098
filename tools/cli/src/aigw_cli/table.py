"""Readable tables for a terminal: columns sized to their content, numbers right-aligned.

A cell never shows Python's own text for a value (`{'a': 1}`, `True`, `1763800000.25`): the API's
times are Unix seconds in fields named `*_at`, shown as ISO-8601 UTC; nested objects and lists are
shown as one line of JSON.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


def iso_utc(seconds: float) -> str:
    """Unix seconds as ISO-8601 UTC, to the second (`2026-11-23T10:15:42Z`)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def cell(value: Any, column: str = "") -> str:
    """One value as text; `column` tells timestamps (`*_at`) from other numbers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if column.endswith("_at") and isinstance(value, int | float):
        return iso_utc(value)
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    if isinstance(value, dict | list):
        return compact_json(value)
    return str(value)


def _numeric(value: Any, column: str) -> bool:
    return (
        isinstance(value, int | float | Decimal)
        and not isinstance(value, bool)
        and not column.endswith("_at")
    )


def render(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], footer: dict[str, Any] | None = None
) -> str:
    body = [[cell(row.get(c), c) for c in columns] for row in rows]
    tail = [[cell(footer.get(c, ""), c) for c in columns]] if footer else []
    widths = [max(len(c), *(len(r[i]) for r in body + tail)) for i, c in enumerate(columns)]
    right = [any(_numeric(row.get(c), c) for row in rows) for c in columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            text.rjust(w) if r else text.ljust(w) for text, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out = [line(columns), line(["-" * w for w in widths]), *(line(r) for r in body)]
    if tail:
        out += [line(["-" * w for w in widths]), line(tail[0])]
    return "\n".join(out)


def render_fields(record: dict[str, Any], width: int = 14) -> str:
    """One object as `name: value` lines (the `show`, `create` and `update` views)."""
    return "\n".join(f"{k:>{width}}: {cell(v, k)}" for k, v in record.items())
