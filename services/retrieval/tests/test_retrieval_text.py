"""Document formats to text, and the BM25 index underneath keyword search."""

from __future__ import annotations

import base64

import pytest

from aigw_retrieval.documents import DocumentFormatError, parse_document
from aigw_retrieval.lexical import LexicalIndex, tokenize


def _pdf(text: str) -> bytes:
    """A minimal one-page PDF with the text drawn in Helvetica."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_pdf_text_is_extracted_from_base64() -> None:
    doc = parse_document(base64.b64encode(_pdf("Refunds take five days")).decode(), "application/pdf")
    assert "Refunds take five days" in doc.text
    with pytest.raises(DocumentFormatError):
        parse_document(base64.b64encode(b"not a pdf").decode(), "application/pdf")


def test_html_becomes_markdown_shaped_text_without_chrome() -> None:
    doc = parse_document(
        "<title>T</title><style>p{}</style><footer>(c) 2026</footer><h2>Fees</h2><ul><li>One</li><li>Two</li></ul>"
        "<p>Cost &amp; value</p>",
        "text/html",
    )
    assert doc.title == "T"
    assert doc.text == "## Fees\n\n- One\n- Two\n\nCost & value"
    assert parse_document("# Intro\n\nbody", "text/markdown", title="Given").title == "Given"
    assert parse_document("# Intro\n\nbody", "text/markdown").title == "Intro"


def test_bm25_ranks_rare_words_higher_and_forgets_removed_chunks() -> None:
    index = LexicalIndex()
    index.add(1, "the cat sat on the mat")
    index.add(2, "the dog sat on the log")
    index.add(3, "a cat and a dog and a zebra")
    assert next(k for k, _ in index.search("zebra cat", 3)) == 3
    assert {k for k, _ in index.search("sat", 3)} == {1, 2}
    index.remove(3, "a cat and a dog and a zebra")
    assert index.search("zebra", 3) == [] and len(index) == 2
    assert tokenize("Café, THE naïve résumé!") == ["cafe", "naive", "resume"]


def test_bm25_survives_compaction() -> None:
    index = LexicalIndex()
    for key in range(3000):
        index.add(key, f"common words item{key}")
    for key in range(0, 3000, 3):
        index.remove(key, f"common words item{key}")
    for key in range(1, 3000, 3):
        index.remove(key, f"common words item{key}")  # crosses the half-dead threshold: compacts
    assert len(index) == 1000
    assert index.search("item2999", 5) == [(2999, pytest.approx(index.search("item2999", 5)[0][1]))]
    assert len(index.search("common", 5000)) == 1000
