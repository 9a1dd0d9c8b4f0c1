"""Cache-node benchmark: edgedepot vs nginx proxy_cache vs apt-cacher-ng vs nginx from disk.

    python -m benchmarks.cache_node [--debs N] [--total-mb M] [--quick] [--peers a,b,...]

All peers sit in front of the same origin (nginx + a WAN relay paced at 30 MiB/s per
connection). Cold: for each peer and client count, an empty peer is started and every client
fetches the whole repository; the origin's access log says what crossed the "WAN". Warm: wrk
against the warm peer. Prints rich tables, writes ``benchmarks/results/cache_node-<ts>.json``,
and prints the same tables as Markdown at the end. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp
from rich.console import Console

from benchmarks import report
from benchmarks.dataset import Dataset, DatasetParams, build_dataset
from benchmarks.loadgen import run_cold
from benchmarks.peers import (
    AptCacherNgPeer,
    EdgedepotPeer,
    NginxCachePeer,
    NginxDirectPeer,
    Origin,
    Peer,
    PeerError,
    package_version,
    parse_rate,
)
from benchmarks.report import (
    BenchConfig,
    BenchmarkResults,
    ColdRep,
    ColdResult,
    Problem,
    WarmPoint,
    WarmResult,
)
from benchmarks.warm import WrkError, measure, wrk_available

REPO_DIR = Path(__file__).resolve().parent.parent
ALL_PEERS = ("edgedepot", "nginx-cache", "apt-cacher-ng", "nginx-direct")
REFERENCE_PEER = "nginx-cache"  # cold wall-time ratios are relative to it
LIMIT_PEER = "nginx-direct"


class Runner:
    def __init__(self, cfg: BenchConfig, dataset: Dataset, console: Console, workroot: Path):
        self.cfg = cfg
        self.ds = dataset
        self.console = console
        self.workroot = workroot
        self.rate = parse_rate(cfg.origin_rate)
        self.cold: list[ColdResult] = []
        self.warm: list[WarmResult] = []
        self.problems: list[Problem] = []

    def make_peer(self, name: str) -> Peer:
        workdir = self.workroot / name
        if name == "edgedepot":
            return EdgedepotPeer(workdir, self.cfg.cache_node_bin)
        if name == "nginx-cache":
            return NginxCachePeer(workdir)
        if name == "apt-cacher-ng":
            return AptCacherNgPeer(workdir)
        if name == "nginx-direct":
            return NginxDirectPeer(workdir, self.ds.root)
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(ALL_PEERS)}")

    def cold_timeout(self, concurrency: int) -> float:
        estimate = (self.ds.unique_bytes / self.rate + 0.05 * len(self.ds.files)
                    + concurrency * self.ds.unique_bytes / 200e6)
        return max(60.0, 5 * estimate)

    def problem(self, peer: Peer, phase: str, message: str) -> None:
        diag = peer.diagnostics()
        self.problems.append(Problem(peer.name, phase, message, diag))
        self.console.print(f"[red]{peer.name} {phase}: {message}[/]")
        if diag:
            self.console.print(diag, markup=False, highlight=False)

    def run_peer(self, name: str) -> None:
        peer = self.make_peer(name)
        last_conc = self.cfg.concurrencies[-1] if self.cfg.concurrencies else None
        for conc in self.cfg.concurrencies:
            reps: list[ColdRep] = []
            for rep in range(self.cfg.cold_repeats):
                warm_now = self.cfg.warm and conc == last_conc and rep == self.cfg.cold_repeats - 1
                result = self.cold_once(peer, conc, rep, warm_now)
                if result is None:
                    return  # the peer did not start; recorded as a problem
                reps.append(result)
                if any("run timeout" in s for s in result.run.failure_samples):
                    break  # a hung peer would hang the next repeat too
            self.cold.append(report.summarize_cold(
                name, conc, len(self.ds.files), self.ds.unique_bytes, reps))
        if not self.cfg.concurrencies and self.cfg.warm:
            self.warm_only(peer)

    def cold_once(self, peer: Peer, conc: int, rep: int, then_warm: bool) -> ColdRep | None:
        origin = Origin(self.workroot / f"origin-{peer.name}", self.ds.root, self.rate)
        try:
            if peer.needs_origin:
                origin.start()
            try:
                peer.start(origin.url if peer.needs_origin else "")
            except PeerError as exc:
                self.problem(peer, "start", str(exc))
                return None
            run = run_cold(peer.base_url, self.ds.files, conc, procs=self.cfg.client_procs,
                           timeout_s=self.cold_timeout(conc))
            upstream = origin.stats() if peer.needs_origin else None
            line = (f"cold {peer.name:14} c={conc:<3} rep {rep + 1}: {run.wall_s:7.2f}s "
                    f"failures={run.failures}")
            if upstream is not None:
                line += (f" upstream={upstream.requests} req "
                         f"{upstream.body_bytes / self.ds.unique_bytes:.3f}x unique bytes")
            self.console.print(line, highlight=False)
            if run.failures:
                self.problem(peer, f"cold c={conc} rep {rep + 1}",
                             f"{run.failures} failed requests; first: "
                             + " | ".join(run.failure_samples[:4]))
            if then_warm:
                self.warm.append(self.measure_warm(peer, origin if peer.needs_origin else None))
            return ColdRep(run, upstream)
        finally:
            peer.stop()
            origin.stop()

    def warm_only(self, peer: Peer) -> None:
        origin = Origin(self.workroot / f"origin-{peer.name}", self.ds.root, self.rate)
        try:
            if peer.needs_origin:
                origin.start()
            peer.start(origin.url if peer.needs_origin else "")
            run_cold(peer.base_url, self.ds.files, 1, procs=1, timeout_s=self.cold_timeout(1))
            self.warm.append(self.measure_warm(peer, origin if peer.needs_origin else None))
        except PeerError as exc:
            self.problem(peer, "start", str(exc))
        finally:
            peer.stop()
            origin.stop()

    def measure_warm(self, peer: Peer, origin: Origin | None) -> WarmResult:
        offset = origin.log_offset() if origin else 0
        small = tuple(f.path for f in self.ds.small_index_files())
        large = tuple(f.path for f in self.ds.largest_pool_files(self.cfg.large_files))
        points: list[WarmPoint] = []
        for kind, paths in (("small", small), ("large", large)):
            for conns in self.cfg.warm_connections:
                try:
                    m = measure(peer.base_url, paths, conns, self.cfg.warm_seconds,
                                self.cfg.warm_repeats)
                except (WrkError, subprocess.TimeoutExpired) as exc:
                    self.problem(peer, f"warm {kind} c={conns}", str(exc))
                    continue
                points.append(WarmPoint(kind, conns, m.rps, m.mb_per_s, m.errors, m.p99_ms, m))
                self.console.print(
                    f"warm {peer.name:14} {kind:5} c={conns:<3}: {m.rps:10.0f} req/s "
                    f"{m.mb_per_s:8.0f} MB/s errors={m.errors}", highlight=False)
                if m.errors:
                    self.problem(peer, f"warm {kind} c={conns}",
                                 f"wrk counted {m.errors} errors (socket errors or non-2xx/3xx)")
        upstream = origin.stats(offset).requests if origin else None
        return WarmResult(peer.name, tuple(points), upstream)


def environment() -> report.Environment:
    nginx = next((v for v in (package_version(p) for p in ("nginx-light", "nginx-core", "nginx"))
                  if v not in ("unknown", "not installed")), "unknown")
    return report.Environment(
        nginx=nginx,
        apt_cacher_ng=package_version("apt-cacher-ng"),
        wrk=package_version("wrk"),
        python=platform.python_version(),
        aiohttp=aiohttp.__version__,
        kernel=platform.release(),
        cpus=os.cpu_count() or 0,
    )


def available_peers(cfg: BenchConfig, console: Console) -> tuple[list[str], list[Problem]]:
    chosen: list[str] = []
    skipped: list[Problem] = []
    for name in cfg.peers:
        missing = ""
        if name == "edgedepot" and not os.access(cfg.cache_node_bin, os.X_OK):
            missing = f"{cfg.cache_node_bin} not found"
        elif name in ("nginx-cache", "nginx-direct") and not shutil.which("nginx"):
            missing = "nginx not installed"
        elif name == "apt-cacher-ng" and not shutil.which("apt-cacher-ng"):
            missing = "apt-cacher-ng not installed"
        if missing:
            skipped.append(Problem(name, "skipped", missing, ""))
            console.print(f"[yellow]skipping {name}: {missing}[/]")
        else:
            chosen.append(name)
    if not shutil.which("nginx"):
        raise SystemExit("nginx is required (it is the origin)")
    return chosen, skipped


def run_benchmark(cfg: BenchConfig, console: Console | None = None) -> BenchmarkResults:
    console = console or Console()
    if cfg.warm and not wrk_available():
        console.print("[yellow]wrk not installed: skipping warm measurements[/]")
        cfg = replace(cfg, warm=False)
    params = DatasetParams(cfg.n_debs, int(cfg.total_mb * 1e6), cfg.seed)
    ds = build_dataset(params, cfg.data_dir)
    peers, problems = available_peers(cfg, console)
    timestamp = time.strftime("%Y%m%dT%H%M%S")
    workroot = Path(tempfile.mkdtemp(prefix="edgedepot-bench-"))
    runner = Runner(cfg, ds, console, workroot)
    runner.problems.extend(problems)
    try:
        for name in peers:
            runner.run_peer(name)
    finally:
        if cfg.keep_workdir:
            console.print(f"work directory kept: {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    largest = ds.largest_pool_files(cfg.large_files)
    summary = report.DatasetSummary(
        key=params.key, debs=len(ds.pool_files), files_per_client=len(ds.files),
        unique_mb=round(ds.unique_bytes / 1e6, 1),
        largest_debs_mb=tuple(round(f.size / 1e6, 1) for f in largest),
        origin_rate=f"{cfg.origin_rate} ({runner.rate / 1e6:.1f} MB/s) per connection",
    )
    res = BenchmarkResults(timestamp, cfg, environment(), summary, tuple(peers),
                           tuple(runner.cold), tuple(runner.warm), (), tuple(runner.problems))
    targets = report.evaluate_targets(
        res, REFERENCE_PEER, LIMIT_PEER, cfg.concurrencies, cfg.warm_connections)
    return replace(res, targets=targets)


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.cache_node", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--debs", type=int, help="number of .deb packages (default 200; quick 30)")
    p.add_argument("--total-mb", type=float,
                   help="total size of the .debs in MB (default 160; quick 20)")
    p.add_argument("--quick", action="store_true",
                   help="30 debs / 20 MB, 1 cold repeat, 2 s wrk runs")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peers", default=",".join(ALL_PEERS), help="comma-separated subset of peers")
    p.add_argument("--concurrency", default="1,10,50", help="cold client counts")
    p.add_argument("--cold-repeats", type=int, help="cold repeats per client count (default 3)")
    p.add_argument("--warm-seconds", type=float, help="duration of one wrk run (default 5)")
    p.add_argument("--warm-repeats", type=int, default=3)
    p.add_argument("--warm-connections", default="1,64")
    p.add_argument("--no-warm", action="store_true")
    p.add_argument("--client-procs", type=int, default=2, help="load-generator processes")
    p.add_argument("--origin-rate", default="30m", help="per-connection origin rate (nginx syntax)")
    p.add_argument("--cache-node-bin", type=Path, default=REPO_DIR / ".venv/bin/cache-node")
    p.add_argument("--results-dir", type=Path, default=REPO_DIR / "benchmarks/results")
    p.add_argument("--data-dir", type=Path, default=REPO_DIR / "benchmarks/.data")
    p.add_argument("--keep-workdir", action="store_true", help="keep peers' logs and caches")
    a = p.parse_args(argv)
    quick = bool(a.quick)
    return BenchConfig(
        n_debs=a.debs if a.debs is not None else (30 if quick else 200),
        total_mb=a.total_mb if a.total_mb is not None else (20.0 if quick else 160.0),
        seed=a.seed,
        peers=tuple(x.strip() for x in a.peers.split(",") if x.strip()),
        concurrencies=tuple(int(x) for x in a.concurrency.split(",") if x.strip()),
        cold_repeats=a.cold_repeats if a.cold_repeats is not None else (1 if quick else 3),
        warm=not a.no_warm,
        warm_connections=tuple(int(x) for x in a.warm_connections.split(",") if x.strip()),
        warm_seconds=a.warm_seconds if a.warm_seconds is not None else (2.0 if quick else 5.0),
        warm_repeats=a.warm_repeats,
        client_procs=a.client_procs,
        origin_rate=a.origin_rate,
        data_dir=a.data_dir,
        results_dir=a.results_dir,
        cache_node_bin=a.cache_node_bin,
        keep_workdir=a.keep_workdir,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    # Wide tables when the output is a file or pipe; a terminal keeps its own width.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    unknown = [p for p in cfg.peers if p not in ALL_PEERS]
    if unknown:
        known = ", ".join(ALL_PEERS)
        console.print(f"[red]unknown peers: {', '.join(unknown)} (known: {known})[/]")
        return 2
    res = run_benchmark(cfg, console)
    small = cfg.warm_connections
    tables = report.all_tables(res, small, small, REFERENCE_PEER, LIMIT_PEER)
    report.print_rich(console, tables)
    path = report.write_json(res, cfg.results_dir)
    console.print(f"results written to {path}")
    print()
    print(report.markdown(res, tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
