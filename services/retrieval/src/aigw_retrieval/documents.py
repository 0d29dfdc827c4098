"""Documents to text: plain text, Markdown, HTML and PDF become Markdown-shaped text and a title.

HTML headings become Markdown headings and block elements become paragraphs, so the chunker sees the
same structure whatever the source format; scripts, styles and page chrome (nav, header, footer,
aside, form) are dropped. PDF text comes from pypdf (pure Python), one paragraph per page block.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser

_BLOCKS = frozenset(
    {"p", "div", "section", "article", "main", "li", "ul", "ol", "table", "tr", "blockquote", "pre",
     "br", "hr", "dd", "dt", "dl", "figure", "figcaption", "td", "th"}
)  # fmt: skip
_SKIPPED = frozenset({"script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
                      "svg", "iframe", "button"})  # fmt: skip
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
_SPACES = re.compile(r"[ \t\r\f\v]+")
_MD_H1 = re.compile(r"^#\s+(.*\S)\s*$", re.MULTILINE)


class DocumentFormatError(ValueError):
    """The content could not be read as the declared type (maps to a 400 at the API)."""


@dataclass(frozen=True)
class ParsedDocument:
    title: str | None
    text: str  # Markdown-shaped: `#` headings, blank lines between paragraphs


class _HtmlToText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.title: str | None = None
        self._skip = 0
        self._in_title = False
        self._heading: int | None = None
        self._li = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in _HEADINGS:
            self._heading = _HEADINGS[tag]
            self.out.append("\n\n" + "#" * self._heading + " ")
        elif tag in _BLOCKS:
            self.out.append("\n\n" if tag not in ("br", "td", "th", "li") else "\n")
            if tag == "li":
                self.out.append("- ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in _HEADINGS:
            self._heading = None
            self.out.append("\n\n")
        elif tag in ("td", "th"):
            self.out.append(" | ")
        elif tag in _BLOCKS and tag != "li":
            self.out.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = ((self.title or "") + data).strip() or None
            return
        if self._skip:
            return
        if self._heading is not None:
            data = data.replace("\n", " ")
        self.out.append(data)


def _tidy(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> ParsedDocument:
    parser = _HtmlToText()
    parser.feed(html)
    parser.close()
    text = _tidy("".join(parser.out))
    title = parser.title or _first_h1(text)
    return ParsedDocument(title, text)


def _first_h1(text: str) -> str | None:
    match = _MD_H1.search(text)
    return match.group(1).strip() if match else None


def pdf_to_text(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [_tidy(page.extract_text() or "") for page in reader.pages]
        title = reader.metadata.title if reader.metadata and reader.metadata.title else None
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise DocumentFormatError(f"not a readable PDF: {exc}") from exc
    return ParsedDocument(title, "\n\n".join(p for p in pages if p))


def parse_document(content: str | bytes, content_type: str, title: str | None = None) -> ParsedDocument:
    """Text and title of a document; an explicit `title` wins over one found in the content."""
    if content_type == "application/pdf":
        if isinstance(content, str):
            try:
                content = base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise DocumentFormatError("PDF content must be base64") from exc
        parsed = pdf_to_text(content)
    else:
        text = content.decode("utf-8", errors="replace") if isinstance(content, bytes) else content
        if content_type == "text/html":
            parsed = html_to_text(text)
        elif content_type == "text/markdown":
            parsed = ParsedDocument(_first_h1(text), text.strip())
        elif content_type == "text/plain":
            parsed = ParsedDocument(None, text.strip())
        else:
            raise DocumentFormatError(f"unsupported content type '{content_type}'")
    return ParsedDocument(title or parsed.title, parsed.text)
