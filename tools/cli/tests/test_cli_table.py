from aigw_cli.resources import _table
from aigw_cli.table import render


def test_table_aligns_numbers_right_and_prints_exact_decimals() -> None:
    out = render(
        [{"sku": "inference.chat_completions.in", "amount": 2.1e-05}, {"sku": "x", "amount": 0.5}],
        ["sku", "amount"],
        footer={"sku": "total", "amount": 0.500021},
    )
    lines = out.splitlines()
    assert lines[0].startswith("sku") and lines[0].endswith("amount")
    assert "0.000021" in lines[2] and "e-" not in out
    assert lines[3].endswith("0.5") and len(lines[2]) == len(lines[3])
    assert lines[-1].startswith("total") and lines[-1].endswith("0.500021")


def test_timestamps_render_as_iso_utc_not_epoch_floats() -> None:
    out = render(
        [{"id": "k1", "created_at": 1763800000.25, "expires_at": None, "requests": 3}],
        ["id", "created_at", "expires_at", "requests"],
    )
    row = out.splitlines()[2]
    assert "2025-11-22T08:26:40Z" in row and "1763800000" not in out
    assert row.split()[2] == "-"


def test_nested_values_render_as_compact_json_not_python_repr() -> None:
    out = render(
        [{"id": "g1", "parameters": {"temperature": 0.2, "stop": ["END"]}, "fallbacks": [], "admin": True}],
        ["id", "parameters", "fallbacks", "admin"],
    )
    row = out.splitlines()[2]
    assert '{"temperature": 0.2, "stop": ["END"]}' in row and "[]" in row
    assert "{'" not in out and "['" not in out and "True" not in out


def test_one_object_views_render_times_and_nested_values_readably() -> None:
    shown = _table(["id"])(
        {
            "object": "api_key",
            "id": "k1",
            "created_at": 1763800000.25,
            "revoked": False,
            "limits": {"requests_per_minute": 5, "requests_per_minute_per_ip": None},
        }
    )
    fields = dict(line.strip().split(": ", 1) for line in shown.splitlines())
    assert fields["created_at"] == "2025-11-22T08:26:40Z"
    assert fields["revoked"] == "no"
    assert "{'" not in shown and "None" not in shown and "1763800000" not in shown
