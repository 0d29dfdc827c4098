"""Readable tables for a terminal: columns sized to their content, numbers right-aligned."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f")
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def render(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], footer: dict[str, Any] | None = None
) -> str:
    body = [[_cell(row.get(c)) for c in columns] for row in rows]
    tail = [[_cell(footer.get(c, "")) for c in columns]] if footer else []
    widths = [max(len(c), *(len(r[i]) for r in body + tail)) for i, c in enumerate(columns)]
    right = [any(_numeric(row.get(c)) for row in rows) for c in columns]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()

    out = [line(columns), line(["-" * w for w in widths]), *(line(r) for r in body)]
    if tail:
        out += [line(["-" * w for w in widths]), line(tail[0])]
    return "\n".join(out)
