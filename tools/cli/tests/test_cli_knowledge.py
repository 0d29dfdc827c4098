import json
from pathlib import Path

from aigw_cli.knowledge import _renumber, batches, render_report, render_search


def test_batches_respect_line_and_byte_limits_and_keep_file_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"docid": f"d{i}", "text": "x" * 40}) for i in range(7)]
    path.write_text("\n".join([*lines[:2], "", *lines[2:]]) + "\n")  # a blank line 3
    by_lines = list(batches(path, max_lines=3, max_bytes=10**6))
    assert [numbers for numbers, _ in by_lines] == [[1, 2, 4], [5, 6, 7], [8]]
    assert [line for _, batch in by_lines for line in batch] == lines
    by_bytes = list(batches(path, max_lines=100, max_bytes=2 * (len(lines[0]) + 1)))
    assert all(len(batch) == 2 for _, batch in by_bytes[:-1]) and len(by_bytes) == 4
    too_long = list(batches(path, max_lines=100, max_bytes=10))  # a line over the limit travels alone
    assert [len(batch) for _, batch in too_long] == [1] * 7


def test_server_errors_are_renumbered_as_lines_of_the_file() -> None:
    assert _renumber("line 2: Invalid JSON at ()", [10, 12, 13]) == "line 12: Invalid JSON at ()"
    assert _renumber("line 9: out of range", [1]) == "line 9: out of range"
    assert _renumber("something else", [1]) == "something else"


def test_reports_and_search_results_render_for_a_terminal() -> None:
    report = render_report({"total": 3, "created": 2, "failed": 1, "errors": ["line 3: bad"]})
    assert "created: 2" in report and "error: line 3: bad" in report
    table = render_search(
        {
            "passages": [
                {"id": "hb#1", "score": 0.91, "title": "Handbook", "text": "To reset\nyour password " * 20}
            ]
        }
    )
    header, _, row = table.splitlines()
    assert header.split() == ["rank", "score", "id", "title", "text"]
    assert "hb#1" in row and row.endswith("…") and "\n" not in row
    assert render_search({"passages": []}).startswith("(no passage")
