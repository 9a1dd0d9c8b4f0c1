"""Smoke test of the resolver benchmark's table (no apt runs)."""

from __future__ import annotations

from benchmarks.resolver import CaseResult, ColdResult, Run, markdown, table_rows


def test_table_rows_and_markdown() -> None:
    ours = (Run(0.20, 50.0), Run(0.40, 60.0), Run(0.30, 55.0))
    apt = (Run(0.60, 70.0), Run(0.50, 72.0), Run(0.70, 71.0))
    result = CaseResult("nova-compute", True, 1045, True, ours, apt, (Run(2.0, 80.0),),
                        (Run(7.0, 75.0),))
    cold = ColdResult("cold: nova-compute", (Run(9.0, 300.0),), (Run(3.0, 90.0),))
    rows = table_rows([result], [cold])
    assert rows[1][:4] == ["nova-compute", "yes", "1045", "yes"]
    assert rows[1][4:7] == ["0.300", "0.600", "0.50"]  # medians and their ratio
    assert rows[1][7:] == ["55", "71", "2.00", "7.00"]
    assert rows[2][0] == "cold: nova-compute" and rows[2][6] == "3.00"
    text = markdown(rows)
    assert text.splitlines()[0].startswith("| case | Recommends |")
    assert len(text.splitlines()) == 4
