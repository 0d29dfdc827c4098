import itertools

import pytest

from aigw_retrieval.chunking import chunk_text

DOC = """# Billing

Invoices are sent monthly.

Refunds take five days.

## Disputes

Open a ticket within 30 days.

# Shipping

We ship worldwide.
"""


def test_chunks_never_cross_a_heading_and_keep_the_heading_path() -> None:
    chunks = chunk_text(DOC, max_chars=200, overlap=20)
    assert [c.headings for c in chunks] == [("Billing",), ("Billing", "Disputes"), ("Shipping",)]
    assert chunks[0].text == "Invoices are sent monthly.\n\nRefunds take five days."
    assert [c.position for c in chunks] == [0, 1, 2]


def test_long_paragraphs_split_with_overlap_and_lose_no_text() -> None:
    words = " ".join(f"word{i}." for i in range(400))
    chunks = chunk_text(words, max_chars=300, overlap=50)
    assert len(chunks) > 5
    assert all(len(c.text) <= 300 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        assert a.text[-20:].split()[-1] in b.text  # the tail of one chunk opens the next
    assert "word0." in chunks[0].text and "word399." in chunks[-1].text


def test_overlap_must_be_smaller_than_chunk() -> None:
    with pytest.raises(ValueError):
        chunk_text("x", max_chars=10, overlap=10)
