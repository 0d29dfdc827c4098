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
