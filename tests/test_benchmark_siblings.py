"""The sibling benchmark's harness end to end, tiny: three siblings behind HAProxy move each
byte across the WAN once, and every cold run is a row on disk (the one-node peer is the
cache-node benchmark's edgedepot peer, smoke-tested there)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from benchmarks import siblings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CACHE_NODE = Path(sys.executable).parent / "cache-node"


def test_siblings_benchmark_smoke(tmp_path: Path) -> None:
    for tool in ("haproxy", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs it)")
    code = siblings.main(["--debs", "22", "--total-mb", "1", "--concurrency", "3",
                          "--cold-repeats", "1", "--client-procs", "1",
                          "--peers", "siblings", "--cache-node-bin", str(CACHE_NODE),
                          "--results-dir", str(tmp_path / "results"),
                          "--data-dir", str(tmp_path / "data")])
    assert code == 0
    (log,) = (tmp_path / "results").glob("siblings-*.jsonl")
    rows = [json.loads(line)["row"] for line in log.read_text().splitlines() if '"row"' in line]
    assert [r["peer"] for r in rows] == ["siblings"]
    for row in rows:
        assert row["failures"] == 0, row
        # each file crossed once (plus Release.gpg, which a node fetches with its snapshot)
        assert row["unique_bytes"] <= row["wan_bytes"] < row["unique_bytes"] * 1.01, row
        assert row["wan_requests"] == row["files"] + 1, row
