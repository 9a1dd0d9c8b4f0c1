"""Smoke test of the resolver benchmark's table (no apt runs)."""

from __future__ import annotations

from benchmarks.resolver import CaseResult, Run, markdown, table_rows


def test_table_rows_and_markdown() -> None:
    runs = (Run(2.0, 100.0), Run(4.0, 120.0), Run(3.0, 110.0))
    result = CaseResult("nova-compute", True, 1045, True, runs, (Run(1.0, 90.0),),
                        (Run(8.0, 80.0),), (Run(4.0, 70.0),), (Run(9.0, 75.0),))
    rows = table_rows([result])
    assert rows[1][:4] == ["nova-compute", "yes", "1045", "yes"]
    assert rows[1][4] == "3.00" and rows[1][5] == "1.00"  # medians
    assert rows[1][6] == "110/90"
    assert rows[1][-2:] == ["0.25", "0.38"]
    text = markdown(rows)
    assert text.splitlines()[0].startswith("| case | Recommends |")
    assert len(text.splitlines()) == 3
