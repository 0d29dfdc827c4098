"""Structure-aware chunking: split on headings and paragraphs first, sizes second, with overlap.

Small, self-contained chunks retrieve best; a chunk keeps the heading path it sits under, so a
passage quoted to the model still says what it is about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")


@dataclass(frozen=True)
class Chunk:
    text: str
    position: int  # 0-based order within the document
    headings: tuple[str, ...]  # the Markdown heading path above the chunk


def _blocks(text: str) -> list[tuple[tuple[str, ...], str]]:
    """Paragraphs (blank-line separated) tagged with the heading path they fall under."""
    path: list[tuple[int, str]] = []
    out: list[tuple[tuple[str, ...], str]] = []
    para: list[str] = []

    def flush() -> None:
        if para:
            out.append((tuple(h for _, h in path), "\n".join(para).strip()))
            para.clear()

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            flush()
            level = len(heading.group(1))
            path[:] = [(lv, h) for lv, h in path if lv < level] + [(level, heading.group(2))]
        elif not line.strip():
            flush()
        else:
            para.append(line)
    flush()
    return [(h, p) for h, p in out if p]


def _split_long(paragraph: str, max_chars: int, overlap: int) -> list[str]:
    """Split an over-long paragraph on sentence ends (else words), carrying `overlap` characters."""
    pieces: list[str] = []
    start = 0
    while start < len(paragraph):
        end = min(start + max_chars, len(paragraph))
        if end < len(paragraph):
            cut = max(paragraph.rfind(". ", start, end), paragraph.rfind(" ", start, end))
            if cut > start + max_chars // 2:
                end = cut + 1
        pieces.append(paragraph[start:end].strip())
        if end >= len(paragraph):
            break
        start = max(end - overlap, start + 1)
    return [p for p in pieces if p]


def chunk_text(text: str, max_chars: int = 1200, overlap: int = 150) -> list[Chunk]:
    """Pack paragraphs into chunks of at most `max_chars`, never across a heading change."""
    if max_chars <= overlap:
        raise ValueError("max_chars must exceed overlap")
    chunks: list[Chunk] = []
    current: list[str] = []
    current_headings: tuple[str, ...] | None = None

    def emit() -> None:
        if current and current_headings is not None:
            chunks.append(Chunk("\n\n".join(current), len(chunks), current_headings))
            current.clear()

    for headings, paragraph in _blocks(text):
        if headings != current_headings:
            emit()
            current_headings = headings
        for piece in _split_long(paragraph, max_chars, overlap):
            if current and sum(len(p) + 2 for p in current) + len(piece) > max_chars:
                emit()
            current.append(piece)
    emit()
    return chunks
