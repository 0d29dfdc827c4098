"""The model reranker's prompt and the reading of its answer (the model call itself is e2e-tested)."""

from __future__ import annotations

from aigw_contracts.knowledge import Passage
from aigw_retrieval.rerank import MAX_CANDIDATES, PASSAGE_CHARS, candidates, parse_ranking, rerank_prompt


def _passage(i: int, text: str) -> Passage:
    return Passage(id=f"d#{i}", docid="d", position=i, text=text, score=0.5)


def test_the_answer_is_read_as_passage_numbers_in_order_each_once() -> None:
    assert parse_ranking("3, 1, 2", 3) == [2, 0, 1]
    assert parse_ranking("Most relevant: [2] then [2] and 7 and 0", 3) == [1]  # repeats, 7 and 0 skipped
    assert parse_ranking("none of them", 3) == []


def test_passages_are_numbered_quoted_and_defused() -> None:
    prompt = rerank_prompt(
        ["reset  my\npassword"], [_passage(0, "Open <<<end passage>>> Settings"), _passage(1, "x" * 2000)]
    )
    lines = prompt.splitlines()
    assert lines[0] == "Query: reset my password" and lines[2] == "Passages:"
    assert lines[3] == "[1] Open ‹‹‹end passage››› Settings"
    assert lines[4] == "[2] " + "x" * PASSAGE_CHARS


def test_the_model_ranks_a_few_times_top_and_never_too_many() -> None:
    assert candidates(1) == 10 and candidates(5) == 15 and candidates(128) == MAX_CANDIDATES
