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
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
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
from benchmarks.warm import WrkError, WrkMeasurement, WrkRun, run_wrk, wrk_available

REPO_DIR = Path(__file__).resolve().parent.parent
ALL_PEERS = ("edgedepot", "nginx-cache", "apt-cacher-ng", "nginx-direct")
REFERENCE_PEER = "nginx-cache"  # cold wall-time ratios are relative to it
LIMIT_PEER = "nginx-direct"


@dataclass(frozen=True)
class Measured:
    """One measurement as it is logged the moment it is made: peer, phase, result."""

    peer: str
    phase: str  # "cold c=10 rep 2", "warm large c=64"
    result: ColdRep | WarmPoint


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
        # Every rep and warm point is in the JSONL file as soon as it is measured (the console
        # line is printed below), so an aborted run keeps what it measured.
        self.log: report.RowLog[Measured] = report.RowLog("cache_node", cfg.results_dir,
                                                          show=False)

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
        self.log.fail(f"{peer.name} {phase}", message)
        self.console.print(f"[red]{peer.name} {phase}: {message}[/]")
        if diag:
            self.console.print(diag, markup=False, highlight=False)

    def run(self, names: list[str]) -> None:
        """Cold runs, then warm runs, interleaving the peers so that the (noisy) machine's
        background load falls on all of them alike rather than on whichever ran last."""
        peers = [self.make_peer(n) for n in names]
        dead: set[str] = set()
        hung: set[tuple[str, int]] = set()
        reps: dict[tuple[str, int], list[ColdRep]] = {}
        warm_set: list[tuple[Peer, Origin]] = []
        try:
            last = self.cfg.concurrencies[-1] if self.cfg.concurrencies else None
            for conc in self.cfg.concurrencies:
                for rep in range(self.cfg.cold_repeats):
                    keep = self.cfg.warm and conc == last and rep == self.cfg.cold_repeats - 1
                    for peer in _rotate(peers, rep):
                        if peer.name in dead or (peer.name, conc) in hung:
                            continue
                        origin = self.new_origin(peer)
                        result = self.cold_once(peer, origin, conc, rep, keep)
                        if result is None:
                            dead.add(peer.name)
                            continue
                        reps.setdefault((peer.name, conc), []).append(result)
                        if keep:
                            warm_set.append((peer, origin))
                        if any("run timeout" in m for m in result.run.failure_samples):
                            hung.add((peer.name, conc))  # the next repeat would hang too
            for conc in self.cfg.concurrencies:
                for peer in peers:
                    if (peer.name, conc) in reps:
                        self.cold.append(report.summarize_cold(
                            peer.name, conc, len(self.ds.files), self.ds.unique_bytes,
                            reps[(peer.name, conc)]))
            if self.cfg.warm and not self.cfg.concurrencies:
                warm_set = [x for x in (self.prepare_warm(p) for p in peers) if x is not None]
            if warm_set:
                self.measure_warm(warm_set)
        finally:
            for peer, origin in warm_set:
                peer.stop()
                origin.stop()

    def new_origin(self, peer: Peer) -> Origin:
        return Origin(self.workroot / f"origin-{peer.name}", self.ds.root, self.rate)

    def start_pair(self, peer: Peer, origin: Origin) -> bool:
        try:
            if peer.needs_origin:
                origin.start()
            peer.start(origin.url if peer.needs_origin else "")
        except PeerError as exc:
            self.problem(peer, "start", str(exc))
            peer.stop()
            origin.stop()
            return False
        return True

    def cold_once(
        self, peer: Peer, origin: Origin, conc: int, rep: int, keep: bool
    ) -> ColdRep | None:
        """One cold run from an empty peer; the peer is left running when ``keep``."""
        if not self.start_pair(peer, origin):
            return None
        finished = False
        try:
            run = run_cold(peer.base_url, self.ds.files, conc, procs=self.cfg.client_procs,
                           timeout_s=self.cold_timeout(conc))
            upstream = origin.stats() if peer.needs_origin else None
            line = (f"cold {peer.name:14} c={conc:<3} rep {rep + 1}: {run.wall_s:7.2f}s "
                    f"failures={run.failures} cpu busy {run.machine_busy * 100:3.0f}%")
            if upstream is not None:
                line += (f" upstream={upstream.requests} req "
                         f"{upstream.body_bytes / self.ds.unique_bytes:.3f}x unique bytes")
            self.console.print(line, highlight=False)
            if run.failures:
                kinds = ", ".join(f"{n} {k}" for k, n in run.failure_kinds)
                self.problem(peer, f"cold c={conc} rep {rep + 1}",
                             f"{run.failures} failed requests ({kinds}); e.g. "
                             + " | ".join(run.failure_samples[:2]))
            finished = True
            rep_result = ColdRep(run, upstream)
            self.log.add(Measured(peer.name, f"cold c={conc} rep {rep + 1}", rep_result))
            return rep_result
        finally:
            if not (keep and finished):
                peer.stop()
                origin.stop()

    def prepare_warm(self, peer: Peer) -> tuple[Peer, Origin] | None:
        origin = self.new_origin(peer)
        if not self.start_pair(peer, origin):
            return None
        run_cold(peer.base_url, self.ds.files, 1, procs=1, timeout_s=self.cold_timeout(1))
        return peer, origin

    def measure_warm(self, warm_set: list[tuple[Peer, Origin]]) -> None:
        offsets = {peer.name: origin.log_offset() for peer, origin in warm_set}
        small = tuple(f.path for f in self.ds.small_index_files())
        large = tuple(f.path for f in self.ds.largest_pool_files(self.cfg.large_files))
        points: dict[str, list[WarmPoint]] = {peer.name: [] for peer, _ in warm_set}
        for kind, paths in (("small", small), ("large", large)):
            for conns in self.cfg.warm_connections:
                runs: dict[str, list[WrkRun]] = {peer.name: [] for peer, _ in warm_set}
                for rep in range(self.cfg.warm_repeats):
                    for peer in _rotate([p for p, _ in warm_set], rep):
                        try:
                            runs[peer.name].append(
                                run_wrk(peer.base_url, paths, conns, self.cfg.warm_seconds))
                        except (WrkError, subprocess.TimeoutExpired) as exc:
                            self.problem(peer, f"warm {kind} c={conns}", str(exc))
                for peer, _ in warm_set:
                    if not runs[peer.name]:
                        continue
                    m = WrkMeasurement(conns, paths, tuple(runs[peer.name]))
                    point = WarmPoint(kind, conns, m.rps, m.mb_per_s, m.errors, m.p99_ms, m)
                    points[peer.name].append(point)
                    self.log.add(Measured(peer.name, f"warm {kind} c={conns}", point))
                    self.console.print(
                        f"warm {peer.name:14} {kind:5} c={conns:<3}: {m.rps:10.0f} ok req/s "
                        f"{m.mb_per_s:8.0f} MB/s errors={m.errors}", highlight=False)
                    if m.errors:
                        self.problem(peer, f"warm {kind} c={conns}",
                                     f"wrk counted {m.errors} errors (socket errors or "
                                     "non-2xx/3xx responses)")
        for peer, origin in warm_set:
            upstream = origin.stats(offsets[peer.name]).requests if peer.needs_origin else None
            self.warm.append(WarmResult(peer.name, tuple(points[peer.name]), upstream))


def _rotate(peers: list[Peer], by: int) -> list[Peer]:
    """The peers in a different order per repeat, so none is always measured first."""
    if not peers:
        return []
    k = by % len(peers)
    return peers[k:] + peers[:k]


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
    console.print(f"measurements go to {runner.log.path} as they are made")
    runner.problems.extend(problems)
    try:
        runner.run(peers)
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
    # SIGTERM unwinds like Ctrl-C, so every server this run started is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
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
