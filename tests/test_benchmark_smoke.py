"""The cache-node benchmark harness end to end, in a tiny mode (edgedepot + nginx from disk)."""

from __future__ import annotations

import io
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks import report
from benchmarks.cache_node import REFERENCE_PEER, run_benchmark
from benchmarks.report import BenchConfig
from benchmarks.warm import wrk_available

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CACHE_NODE = Path(sys.executable).parent / "cache-node"


def test_benchmark_smoke(tmp_path: Path) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    if not CACHE_NODE.exists():
        pytest.skip(f"{CACHE_NODE} is not installed")
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is needed to build the sample repository")
    cfg = BenchConfig(
        n_debs=22,  # the sample graph's minimum
        total_mb=1.0,
        peers=("edgedepot", "nginx-direct"),
        concurrencies=(2,),
        cold_repeats=1,
        warm=wrk_available(),
        warm_connections=(2,),
        warm_seconds=1.0,
        warm_repeats=1,
        client_procs=1,
        data_dir=tmp_path / "data",
        results_dir=tmp_path / "results",
        cache_node_bin=CACHE_NODE,
    )
    started = time.monotonic()
    res = run_benchmark(cfg, Console(file=io.StringIO(), width=200))
    elapsed = time.monotonic() - started

    ed = res.cold_result("edgedepot", 2)
    direct = res.cold_result("nginx-direct", 2)
    assert ed is not None, res.problems
    assert direct is not None, res.problems
    assert ed.failures == 0, ed.failure_samples
    assert direct.failures == 0, direct.failure_samples
    assert ed.upstream_bytes is not None and ed.upstream_ratio is not None
    # Every file crossed the "WAN" exactly once (a few hundred bytes of Release.gpg, which the
    # node fetches with its Release snapshot but clients do not ask for, are within tolerance).
    assert report.ratio_is_one(ed.upstream_ratio), ed.upstream_ratio
    assert ed.upstream_bytes >= ed.unique_bytes
    assert direct.upstream_ratio is None  # no origin behind nginx from disk
    assert ed.reps[0].run.requests == 2 * ed.unique_files
    if cfg.warm:
        warm = res.warm_result("edgedepot")
        assert warm is not None and warm.point("small", 2) is not None

    tables = report.all_tables(res, (2,), (2,), REFERENCE_PEER, "nginx-direct")
    md = report.markdown(res, tables)
    assert "| 2 | edgedepot |" in md
    path = report.write_json(res, cfg.results_dir)
    doc = json.loads(path.read_text())
    assert doc["cold"][0]["peer"] == "edgedepot"
    # Each rep was also logged as it was measured, in the same results directory.
    (log,) = cfg.results_dir.glob("cache_node-*.jsonl")
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["row"]["peer"] for r in logged if "row" in r} >= {"edgedepot", "nginx-direct"}
    assert elapsed < 60, f"harness smoke run took {elapsed:.0f}s"


def test_tls_benchmark_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m benchmarks.tls` end to end with tiny files: both peers over HTTPS measured,
    every row logged, the table printed with the target line."""
    if shutil.which("nginx") is None or not wrk_available():
        pytest.skip("nginx and wrk are needed")
    from benchmarks import tls

    code = tls.main(["--large-mb", "1", "--seconds", "1", "--repeats", "1",
                     "--connections", "2", "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    (log,) = tmp_path.glob("tls-*.jsonl")
    rows = [json.loads(line)["row"] for line in log.read_text().splitlines()
            if "row" in json.loads(line)]
    assert {(r["peer"], r["kind"]) for r in rows} == {
        (peer, kind) for peer in ("edgedepot-tls", "nginx-tls") for kind in ("large", "small")}
    assert all(r["errors"] == 0 and r["mb_per_s"] > 0 for r in rows), rows
    assert "| large | 2 | edgedepot-tls |" in out and "vs nginx-tls" in out
