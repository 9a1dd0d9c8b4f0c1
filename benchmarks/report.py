"""Reporting shared by every benchmark, and the cache-node benchmark's result types.

:class:`RowLog` is how every benchmark module keeps its measurements: each row is appended to
``benchmarks/results/<bench>-<timestamp>.jsonl`` and printed the moment it is measured, and a
peer or phase that fails becomes a row saying why. A run that dies later (a peer crashes, a
tool is missing, Ctrl-C) has still kept and shown every number it measured.

For the cache-node benchmark, every table is built once as plain rows of strings
(:class:`TableData`) and rendered from those rows both to the terminal (rich) and to Markdown,
so the two always show the same numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from rich.console import Console
from rich.table import Table

from benchmarks.loadgen import ColdRun, merge_kinds
from benchmarks.peers import UpstreamStats
from benchmarks.warm import WrkMeasurement

RATIO_TOLERANCE = 0.005  # "1.00" at two decimals
RESULTS_DIR = Path(__file__).resolve().parent / "results"

R = TypeVar("R")


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def _one_line(row: Any) -> str:
    fields = _plain(row)
    if not isinstance(fields, dict):
        return str(fields)
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in fields.items() if not isinstance(v, (dict, list, tuple)))[:400]


class RowLog(Generic[R]):
    """Every row of one benchmark run, written out the moment it is measured.

    ``add`` appends the row as one JSON line (flushed and fsync'd) and prints it; ``guard``
    runs one measurement and turns its exception into a row (``failed_row(reason)``) or, when
    the benchmark has no row shape for it, a ``{"failed": ..., "error": ...}`` line, and the
    run goes on. ``rows`` holds the rows for the final table.
    """

    def __init__(self, bench: str, results_dir: Path | None = None,
                 line: Callable[[R], str] = _one_line,
                 echo: Callable[[str], None] | None = None, show: bool = True) -> None:
        self.rows: list[R] = []
        self.failures: list[tuple[str, str]] = []
        directory = results_dir or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{bench}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
        self._line = line
        self._echo = echo or (lambda text: print(text, file=sys.stderr, flush=True))
        self._show = show  # False: the benchmark prints its own line per row
        self._write({"bench": bench, "started": time.time(), "argv": sys.argv})

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def add(self, row: R) -> R:
        self.rows.append(row)
        self._write({"row": _plain(row)})
        if self._show:
            self._echo(f"  row: {self._line(row)}")
        return row

    def note(self, **fields: Any) -> None:
        """Context worth keeping with the rows (parameters, environment, verdicts)."""
        self._write({"note": fields})

    def fail(self, what: str, reason: str, failed_row: Callable[[str], R] | None = None) -> None:
        self.failures.append((what, reason))
        if self._show:
            self._echo(f"  FAILED {what}: {reason}")
        if failed_row is not None:
            self.add(failed_row(reason))
        else:
            self._write({"failed": what, "error": reason})

    @contextmanager
    def guard(self, what: str, failed_row: Callable[[str], R] | None = None) -> Iterator[None]:
        """Measure ``what``; if it raises, record why (as a row) and carry on with the run."""
        try:
            yield
        except Exception as exc:  # a failing peer must not lose the other measurements
            reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:500]
            self._write({"traceback": traceback.format_exc(limit=8), "what": what})
            self.fail(what, reason, failed_row)


@dataclass(frozen=True)
class ColdRep:
    """One cold run: an empty peer, ``concurrency`` clients, the origin's view of it."""

    run: ColdRun
    upstream: UpstreamStats | None  # None for nginx-direct (no origin)


@dataclass(frozen=True)
class ColdResult:
    peer: str
    concurrency: int
    unique_files: int
    unique_bytes: int
    wall_s: float  # median over repeats
    wall_s_all: tuple[float, ...]
    failures: int  # total over repeats
    upstream_requests: int | None  # worst (max) over repeats
    upstream_bytes: int | None  # worst (max) over repeats
    upstream_ratio: float | None  # upstream_bytes / unique_bytes
    loadgen_util: float  # max CPU/wall of one load-generator process over repeats
    machine_busy: float  # median fraction of all CPUs busy during the runs
    failure_samples: tuple[str, ...]
    failure_kinds: tuple[tuple[str, int], ...]  # over all repeats
    reps: tuple[ColdRep, ...]


def summarize_cold(
    peer: str, concurrency: int, unique_files: int, unique_bytes: int, reps: list[ColdRep]
) -> ColdResult:
    walls = tuple(r.run.wall_s for r in reps)
    ups = [r.upstream for r in reps if r.upstream is not None]
    samples: list[str] = []
    for r in reps:
        samples.extend(r.run.failure_samples)
    up_bytes = max(u.body_bytes for u in ups) if ups else None
    return ColdResult(
        peer=peer,
        concurrency=concurrency,
        unique_files=unique_files,
        unique_bytes=unique_bytes,
        wall_s=statistics.median(walls),
        wall_s_all=walls,
        failures=sum(r.run.failures for r in reps),
        upstream_requests=max(u.requests for u in ups) if ups else None,
        upstream_bytes=up_bytes,
        upstream_ratio=None if up_bytes is None else up_bytes / unique_bytes,
        loadgen_util=max(r.run.loadgen_max_util for r in reps),
        machine_busy=statistics.median(r.run.machine_busy for r in reps),
        failure_samples=tuple(samples[:8]),
        failure_kinds=merge_kinds([r.run.failure_kinds for r in reps]),
        reps=tuple(reps),
    )


@dataclass(frozen=True)
class WarmPoint:
    kind: str  # "small" (InRelease + Packages, req/s) or "large" (5 largest .debs, MB/s)
    connections: int
    rps: float
    mb_per_s: float
    errors: int
    p99_ms: float
    measurement: WrkMeasurement


@dataclass(frozen=True)
class WarmResult:
    peer: str
    points: tuple[WarmPoint, ...]
    upstream_requests: int | None  # origin requests during the warm phase

    def point(self, kind: str, connections: int) -> WarmPoint | None:
        for p in self.points:
            if p.kind == kind and p.connections == connections:
                return p
        return None


@dataclass(frozen=True)
class TargetCheck:
    target: str
    value: str
    passed: bool | None  # None: not measured in this run


@dataclass(frozen=True)
class Problem:
    peer: str
    phase: str
    message: str
    diagnostics: str


@dataclass(frozen=True)
class BenchConfig:
    """What to run; stored with the results."""

    n_debs: int = 200
    total_mb: float = 160.0
    seed: int = 1
    peers: tuple[str, ...] = ("edgedepot", "nginx-cache", "apt-cacher-ng", "nginx-direct")
    concurrencies: tuple[int, ...] = (1, 10, 50)
    cold_repeats: int = 3
    warm: bool = True
    warm_connections: tuple[int, ...] = (1, 64)
    warm_seconds: float = 5.0
    warm_repeats: int = 3
    large_files: int = 5
    client_procs: int = 2
    origin_rate: str = "30m"
    data_dir: Path = Path("benchmarks/.data")
    results_dir: Path = Path("benchmarks/results")
    cache_node_bin: Path = Path(".venv/bin/cache-node")
    keep_workdir: bool = False


@dataclass(frozen=True)
class Environment:
    nginx: str
    apt_cacher_ng: str
    wrk: str
    python: str
    aiohttp: str
    kernel: str
    cpus: int


@dataclass(frozen=True)
class DatasetSummary:
    key: str
    debs: int
    files_per_client: int
    unique_mb: float
    largest_debs_mb: tuple[float, ...]
    origin_rate: str


@dataclass(frozen=True)
class BenchmarkResults:
    timestamp: str
    settings: BenchConfig
    environment: Environment
    dataset: DatasetSummary
    peers: tuple[str, ...]
    cold: tuple[ColdResult, ...]
    warm: tuple[WarmResult, ...]
    targets: tuple[TargetCheck, ...]
    problems: tuple[Problem, ...]

    def cold_result(self, peer: str, concurrency: int) -> ColdResult | None:
        for c in self.cold:
            if c.peer == peer and c.concurrency == concurrency:
                return c
        return None

    def warm_result(self, peer: str) -> WarmResult | None:
        for w in self.warm:
            if w.peer == peer:
                return w
        return None


@dataclass(frozen=True)
class TableData:
    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    note: str = ""
    left: int = 2  # leading text columns (left-aligned); the rest are numbers


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def ratio_text(value: float | None, base: float | None) -> str:
    if value is None or base is None or base == 0:
        return "-"
    return f"{value / base:.2f}x"


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


def failures_text(c: ColdResult) -> str:
    if not c.failures:
        return "0"
    kinds = ", ".join(f"{count} {kind}" for kind, count in c.failure_kinds)
    return f"{c.failures} ({kinds})"


def cold_table(res: BenchmarkResults, reference_peer: str) -> TableData:
    rows: list[tuple[str, ...]] = []
    for conc in sorted({c.concurrency for c in res.cold}):
        ref = res.cold_result(reference_peer, conc)
        for peer in res.peers:
            c = res.cold_result(peer, conc)
            if c is None:
                continue
            rows.append((
                str(conc), peer, fmt(c.wall_s), ratio_text(c.wall_s, ref.wall_s if ref else None),
                "-" if c.upstream_requests is None else f"{c.upstream_requests} / {c.unique_files}",
                fmt(c.upstream_ratio, 3), failures_text(c), f"{c.loadgen_util:.2f}",
                f"{c.machine_busy * 100:.0f}%",
            ))
    return TableData(
        "Cold cache: every client fetches the whole repository from an empty peer",
        ("Clients", "Peer", "Wall s (median)", f"Wall vs {reference_peer}",
         "Upstream req / files", "Upstream bytes / unique", "Failures", "Loadgen CPU",
         "Machine CPU busy"),
        tuple(rows),
        "Wall and machine CPU busy: median over repeats. Upstream columns and Loadgen CPU: "
        "worst repeat. Failures: total over repeats.",
    )


def warm_table(res: BenchmarkResults, small_conns: tuple[int, ...], large_conns: tuple[int, ...],
               limit_peer: str) -> TableData:
    limit = res.warm_result(limit_peer)
    headers: list[str] = ["Peer"]
    headers += [f"Small req/s c={c}" for c in small_conns]
    headers += [f"Large MB/s c={c}" for c in large_conns]
    headers += [f"Large vs {limit_peer} c={c}" for c in large_conns]
    headers += ["wrk errors", "Upstream req (warm)"]
    rows: list[tuple[str, ...]] = []
    for peer in res.peers:
        w = res.warm_result(peer)
        if w is None:
            continue
        row = [peer]
        for c in small_conns:
            p = w.point("small", c)
            row.append(fmt(p.rps if p else None, 0))
        for c in large_conns:
            p = w.point("large", c)
            row.append(fmt(p.mb_per_s if p else None, 0))
        for c in large_conns:
            p = w.point("large", c)
            lp = limit.point("large", c) if limit else None
            row.append(ratio_text(p.mb_per_s if p else None, lp.mb_per_s if lp else None))
        row.append(str(sum(p.errors for p in w.points)))
        row.append("-" if w.upstream_requests is None else str(w.upstream_requests))
        rows.append(tuple(row))
    return TableData(
        "Warm cache: wrk against a warm peer (median of repeats)",
        tuple(headers), tuple(rows),
        "Small: InRelease + Packages in rotation (successful responses/s). "
        "Large: the 5 largest .debs in rotation.",
        left=1,
    )


def targets_table(res: BenchmarkResults) -> TableData:
    return TableData(
        "Targets",
        ("Target", "Measured", "Result"),
        tuple((t.target, t.value, _verdict(t.passed)) for t in res.targets),
    )


def all_tables(res: BenchmarkResults, small_conns: tuple[int, ...], large_conns: tuple[int, ...],
               reference_peer: str, limit_peer: str) -> list[TableData]:
    tables = [cold_table(res, reference_peer)]
    if res.warm:
        tables.append(warm_table(res, small_conns, large_conns, limit_peer))
    tables.append(targets_table(res))
    return tables


def print_rich(console: Console, tables: list[TableData]) -> None:
    for t in tables:
        table = Table(title=t.title, caption=t.note or None, show_lines=False)
        for i, h in enumerate(t.headers):
            table.add_column(h, justify="left" if i < t.left else "right")
        for row in t.rows:
            styled = [
                f"[green]{c}[/]" if c == "PASS" else f"[red]{c}[/]" if c == "FAIL" else c
                for c in row
            ]
            table.add_row(*styled)
        console.print(table)


def markdown(res: BenchmarkResults, tables: list[TableData]) -> str:
    out: list[str] = [f"## edgedepot cache-node benchmark ({res.timestamp})", ""]
    out.append("Dataset: " + "; ".join(f"{k} {v}" for k, v in asdict(res.dataset).items()))
    out.append("")
    out.append("Environment: " + "; ".join(f"{k} {v}" for k, v in asdict(res.environment).items()))
    out.append("")
    for t in tables:
        out.append(f"### {t.title}")
        out.append("")
        out.append("| " + " | ".join(t.headers) + " |")
        aligns = ("---" if i < t.left else "---:" for i in range(len(t.headers)))
        out.append("|" + "|".join(aligns) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
        if t.note:
            out.append("")
            out.append(f"_{t.note}_")
        out.append("")
    if res.problems:
        out.append("### Problems")
        out.append("")
        for p in res.problems:
            message = p.message if len(p.message) <= 300 else p.message[:297] + "..."
            out.append(f"- **{p.peer}** ({p.phase}): {message}")
        out.append("")
    return "\n".join(out)


def write_json(res: BenchmarkResults, results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"cache_node-{res.timestamp}.json"
    path.write_text(json.dumps(asdict(res), indent=2, default=str) + "\n", encoding="utf-8")
    return path


def ratio_is_one(value: float | None) -> bool:
    return value is not None and abs(value - 1.0) < RATIO_TOLERANCE


def _pair(a: float | None, b: float | None, digits: int, unit: str) -> str:
    return f"{fmt(a, digits)} vs {fmt(b, digits)} {unit}"


def evaluate_targets(
    res: BenchmarkResults,
    reference_peer: str,
    limit_peer: str,
    concurrencies: tuple[int, ...],
    warm_connections: tuple[int, ...],
) -> tuple[TargetCheck, ...]:
    """The pass/fail targets for edgedepot; ``None`` where this run did not measure them."""
    ed = [c for c in res.cold if c.peer == "edgedepot"]
    checks = [
        TargetCheck(
            "edgedepot upstream bytes / unique bytes = 1.00 at every concurrency",
            ", ".join(f"c={c.concurrency}: {fmt(c.upstream_ratio, 3)}" for c in ed) or "-",
            all(ratio_is_one(c.upstream_ratio) for c in ed) if ed else None,
        ),
        TargetCheck(
            "edgedepot zero failures at every concurrency",
            ", ".join(f"c={c.concurrency}: {c.failures}" for c in ed) or "-",
            all(c.failures == 0 for c in ed) if ed else None,
        ),
    ]
    top = max(concurrencies, default=0)
    e_top, n_top = res.cold_result("edgedepot", top), res.cold_result(reference_peer, top)
    e_wall, n_wall = (e_top.wall_s if e_top else None), (n_top.wall_s if n_top else None)
    checks.append(TargetCheck(
        f"edgedepot cold wall at {top} clients <= nginx proxy_cache_lock's",
        _pair(e_wall, n_wall, 2, "s"),
        None if e_wall is None or n_wall is None else e_wall <= n_wall,
    ))
    ew, dw = res.warm_result("edgedepot"), res.warm_result(limit_peer)
    nw = res.warm_result(reference_peer)
    for conns in warm_connections:
        ep = ew.point("large", conns) if ew else None
        dp = dw.point("large", conns) if dw else None
        e_mb, d_mb = (ep.mb_per_s if ep else None), (dp.mb_per_s if dp else None)
        checks.append(TargetCheck(
            f"edgedepot warm large-file MB/s at c={conns} >= 0.8x nginx direct",
            f"{_pair(e_mb, d_mb, 0, 'MB/s')} ({ratio_text(e_mb, d_mb)})",
            None if e_mb is None or d_mb is None else e_mb >= 0.8 * d_mb,
        ))
    top_conns = max(warm_connections, default=0)
    es = ew.point("small", top_conns) if ew else None
    ns = nw.point("small", top_conns) if nw else None
    e_rps, n_rps = (es.rps if es else None), (ns.rps if ns else None)
    checks.append(TargetCheck(
        f"edgedepot warm small-file req/s at c={top_conns} >= nginx proxy_cache's",
        f"{_pair(e_rps, n_rps, 0, 'req/s')} ({ratio_text(e_rps, n_rps)})",
        None if e_rps is None or n_rps is None else e_rps >= n_rps,
    ))
    return tuple(checks)
