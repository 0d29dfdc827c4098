"""Ingestion: docid upsert semantics, JSON Lines with progress, resuming after a crash, persistence."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aigw_contracts.knowledge import KnowledgeDocument, KnowledgeSearch
from aigw_retrieval import EmbeddedStore, Ingestor, Progress, Scope, Searcher
from aigw_retrieval.embed import MiniLMEmbedder

SCOPE = Scope("tenant-a", "handbook")

HANDBOOK = """# Handbook

## Refunds

Refunds are paid back to the original card within five business days.

## Security

To reset your password, open Settings, choose Security and click Reset password.
"""


def _lines(n: int) -> list[str]:
    topics = ["invoices", "parcels", "passwords", "holidays", "printers", "parking", "coffee", "badges"]
    return [
        json.dumps(
            {"docid": f"doc-{i}", "text": f"Policy {i} about {topics[i % len(topics)]}: rule number {i}."}
        )
        for i in range(n)
    ]


@pytest.fixture
async def store(tmp_path: Path) -> EmbeddedStore:
    s = EmbeddedStore(tmp_path / "kb")
    await s.create_collection(SCOPE, "sentence-transformers/all-MiniLM-L6-v2", 384)
    return s


async def test_reingesting_an_unchanged_document_does_no_work(store: EmbeddedStore, counting: Any) -> None:
    ingestor = Ingestor(store, counting)
    doc = KnowledgeDocument(docid="hb", text=HANDBOOK, content_type="text/markdown")
    first = await ingestor.ingest(SCOPE, [doc])
    assert (first.created, first.chunks) == (1, 2) and first.embedding_tokens > 0
    calls = counting.calls
    again = await ingestor.ingest(SCOPE, [doc])
    assert (again.unchanged, again.created, again.updated, again.chunks, again.embedding_tokens) == (
        1,
        0,
        0,
        0,
        0,
    )
    assert counting.calls == calls


async def test_new_text_reindexes_and_metadata_only_changes_do_not_embed(
    store: EmbeddedStore, counting: Any
) -> None:
    ingestor = Ingestor(store, counting)
    searcher = Searcher(store, counting)
    await ingestor.ingest(SCOPE, [KnowledgeDocument(docid="hb", text=HANDBOOK, content_type="text/markdown")])
    texts = counting.texts
    meta = KnowledgeDocument.model_validate(
        {
            "docid": "hb",
            "text": HANDBOOK,
            "content_type": "text/markdown",
            "__tags": ["hr"],
            "__meta": {"v": 2},
        }
    )
    report = await ingestor.ingest(SCOPE, [meta])
    assert (report.metadata_only, report.chunks) == (1, 0) and counting.texts == texts
    hit = (await searcher.search(SCOPE, KnowledgeSearch(query="reset my password"))).passages[0]
    assert (hit.id, hit.tags, hit.meta, hit.title) == ("hb#1", ["hr"], {"v": 2}, "Handbook")

    changed = KnowledgeDocument(
        docid="hb", text="# Handbook\n\nRefunds are no longer offered.", content_type="text/markdown"
    )
    report = await ingestor.ingest(SCOPE, [changed])
    assert (report.updated, report.chunks) == (1, 1)
    result = await searcher.search(SCOPE, KnowledgeSearch(query="password reset", minScore=0.0, top=10))
    assert [p.text for p in result.passages] == ["Refunds are no longer offered."]


async def test_jsonl_import_reports_progress_and_bad_lines(store: EmbeddedStore, counting: Any) -> None:
    seen: list[Progress] = []
    lines = _lines(20)
    lines.insert(5, '{"docid": "broken"')
    lines.insert(9, '{"text": "no docid"}')
    report = await Ingestor(store, counting, window=4).ingest_jsonl(
        SCOPE, lines, progress=seen.append, total=len(lines)
    )
    assert (report.total, report.created, report.failed) == (22, 20, 2)
    assert report.errors[0].startswith("line 6:") and report.errors[1].startswith("line 10:")
    assert [p.processed for p in seen] == sorted(p.processed for p in seen) and seen[-1].processed == 22
    assert len(seen) >= 5 and all(p.total == 22 for p in seen)
    assert len(await store.list_documents(SCOPE, limit=100)) == 20


async def test_an_interrupted_import_resumes_where_it_stopped(
    store: EmbeddedStore, make_counting: Callable[..., Any]
) -> None:
    lines = _lines(40)
    crashing = make_counting(fail_after_calls=3)
    with pytest.raises(RuntimeError, match="crashed"):
        await Ingestor(store, crashing, window=5).ingest_jsonl(SCOPE, lines)
    assert len(await store.list_documents(SCOPE, limit=100)) == 15  # three windows landed whole

    rerun = make_counting()
    report = await Ingestor(store, rerun, window=5).ingest_jsonl(SCOPE, lines)
    assert (report.unchanged, report.created) == (15, 25)
    assert rerun.texts == 25  # only what was not done before is embedded
    assert len(await store.list_documents(SCOPE, limit=100)) == 40


async def test_the_store_reopens_from_disk_and_rebuilds_a_lost_vector_index(
    tmp_path: Path, minilm: MiniLMEmbedder
) -> None:
    path = tmp_path / "kb"
    store = EmbeddedStore(path)
    await store.create_collection(SCOPE, minilm.name, minilm.dim)
    await Ingestor(store, minilm).ingest(
        SCOPE, [KnowledgeDocument(docid="hb", text=HANDBOOK, content_type="text/markdown")]
    )
    await store.close()

    reopened = EmbeddedStore(path)
    question = KnowledgeSearch(query="money back to my card")
    assert (await Searcher(reopened, minilm).search(SCOPE, question)).passages[0].id == "hb#0"
    # a document written while the graph on disk is stale, then the graph file lost entirely
    await Ingestor(reopened, minilm).ingest(
        SCOPE, [KnowledgeDocument(docid="new", text="Parking is free on Sundays.")]
    )
    reopened.close_sync()
    for f in (path / "vectors").iterdir():
        f.unlink()
    third = EmbeddedStore(path)
    found = await Searcher(third, minilm).search(SCOPE, KnowledgeSearch(query="where to park on the weekend"))
    assert found.passages[0].id == "new#0"
    assert (await Searcher(third, minilm).search(SCOPE, question)).passages[0].id == "hb#0"
    await third.close()


async def test_html_documents_keep_their_title_and_heading_structure(
    store: EmbeddedStore, minilm: MiniLMEmbedder
) -> None:
    html = (
        "<html><head><title>Travel policy</title><script>var x = 'ignore me';</script></head><body>"
        "<nav>Home | About</nav><h1>Travel</h1><h2>Trains</h2><p>Book second class for trips under four hours.</p>"
        "<h2>Flights</h2><p>Economy only; business class needs approval.</p></body></html>"
    )
    await Ingestor(store, minilm).ingest(
        SCOPE, [KnowledgeDocument(docid="travel", text=html, content_type="text/html")]
    )
    result = await Searcher(store, minilm).search(SCOPE, KnowledgeSearch(query="can I fly business", top=1))
    passage = result.passages[0]
    assert (passage.title, passage.headings) == ("Travel policy", ["Travel", "Flights"])
    assert passage.text == "Economy only; business class needs approval."
