"""Serving over TLS: a warm edgedepot cache node's HTTPS listener vs nginx over HTTPS.

    .venv/bin/python -m benchmarks.tls            # 4 x 64 MiB large, 64 x 4 KiB small files
    .venv/bin/python -m benchmarks.tls --quick    # 2 x 16 MiB, shorter runs
    .venv/bin/python -m benchmarks.tls --with-plain   # also both over plain HTTP (context)

Setup, all on 127.0.0.1: a directory of pip sdists (`.zip`, stored, random bytes) of two
sizes. An edgedepot origin serves it as a pip index (`--pypi bench=DIR`); an edgedepot cache in
front of it (`--tls-listen`, certificate from a throwaway CA made here with `cryptography`) is
warmed by fetching every file once, so it serves them from its store. nginx (Debian
`nginx-light`, `worker_processes auto`, `sendfile on`, no kernel TLS) serves the same files
from the directory over HTTPS with the same certificate. `wrk` (`benchmarks/warm.py`) rotates
over the files: large-file MB/s and small-file requests/s at 1 and 64 connections, median of
the repeats, every peer measured in the same run, interleaved. Each row goes to
`benchmarks/results/tls-<timestamp>.jsonl` as it is measured; a table (Markdown) is printed at
the end with edgedepot / nginx ratios. Target: large files at c=64 >= 0.5x nginx.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers import LOOPBACK, NginxInstance, package_version
from benchmarks.report import RowLog
from benchmarks.warm import WrkRun, run_wrk, wrk_available
from syncer.demo.node_process import NodeProcess
from tests.plugin.pki import CertificateAuthority

TARGET_LARGE_C64 = 0.5


@dataclass(frozen=True)
class Row:
    peer: str           # "edgedepot-tls", "nginx-tls", ...
    kind: str           # "large" or "small"
    connections: int
    rps: float
    mb_per_s: float
    p99_ms: float
    errors: int
    runs: int
    server_cpu: float = 0.0  # the server's CPU: seconds per GB (large), microseconds per request
    note: str = ""


def _metric(row: Row) -> float:
    """What a row is compared by: MB/s for large files, requests/s for small ones."""
    return row.mb_per_s if row.kind == "large" else row.rps


def failed(peer: str, kind: str, connections: int) -> Callable[[str], Row]:
    return lambda why: Row(peer, kind, connections, 0.0, 0.0, 0.0, 0, 0, note=f"FAILED: {why}")


@dataclass(frozen=True)
class Files:
    directory: Path
    large: tuple[str, ...]   # file names
    small: tuple[str, ...]


def make_files(directory: Path, large_n: int, large_size: int, small_n: int,
               small_size: int) -> Files:
    """pip sdists (zip, stored) of random bytes: what both peers serve."""
    directory.mkdir(parents=True, exist_ok=True)

    def sdist(project: str, size: int) -> str:
        name = f"{project}-1.0.zip"
        with zipfile.ZipFile(directory / name, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(f"{project}-1.0/PKG-INFO",
                        f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.0\n")
            with zf.open(f"{project}-1.0/payload.bin", "w", force_zip64=True) as out:
                left = size
                while left > 0:
                    out.write(os.urandom(min(left, 1 << 20)))
                    left -= 1 << 20
        return name

    large = tuple(sdist(f"big{i}", large_size) for i in range(large_n))
    small = tuple(sdist(f"small{i}", small_size) for i in range(small_n))
    return Files(directory, large, small)


def _project(filename: str) -> str:
    return filename.split("-", 1)[0]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children that are still running (nginx
    workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


@dataclass(frozen=True)
class Peer:
    name: str
    base_url: str
    path: Callable[[str], str]   # URL path of a file name
    pid: int                     # whose CPU time (with its children) is the server's


class Setup:
    """An edgedepot origin and a warm TLS cache, and nginx over TLS on the same files."""

    def __init__(self, work: Path, files: Files, with_plain: bool) -> None:
        self.work = work
        self.files = files
        self.with_plain = with_plain
        ca = CertificateAuthority(work / "pki", "bench")
        self.server = ca.issue_server("server")
        self.origin = NodeProcess(["--role", "origin", "--store", str(work / "origin"),
                                   "--pypi", f"bench={files.directory}", "--no-glance"],
                                  work / "origin.log")
        self.cache: NodeProcess | None = None
        self.nginx: list[tuple[str, NginxInstance]] = []

    def start(self) -> None:
        self.origin.start()
        cache = NodeProcess(["--role", "cache", "--store", str(self.work / "cache"),
                             "--upstream", self.origin.url, "--no-glance",
                             "--tls-cert", str(self.server.cert),
                             "--tls-key", str(self.server.key), "--log-level", "warning"],
                            self.work / "cache.log", tls_listen=f"{LOOPBACK}:0")
        self.cache = cache.start()
        for name in (*self.files.large, *self.files.small):  # warm: every file once
            url = f"{cache.url}/pypi/bench/files/{_project(name)}/{name}"
            with urllib.request.urlopen(url, timeout=600) as resp:
                while resp.read(1 << 20):
                    pass
        body = f"location /files/ {{ alias {self.files.directory}/; }}"
        extra = "open_file_cache max=10000 inactive=60s;"
        variants: list[tuple[str, tuple[Path, Path] | None]] = [
            ("nginx-tls", (self.server.cert, self.server.key))]
        if self.with_plain:
            variants.append(("nginx-plain", None))
        for name, tls in variants:
            nginx = NginxInstance(name, self.work / name, body, extra, tls=tls)
            nginx.start()
            self.nginx.append((name, nginx))

    def peers(self) -> list[Peer]:
        """Every peer measured."""
        assert self.cache is not None

        def node_path(name: str) -> str:
            return f"/pypi/bench/files/{_project(name)}/{name}"

        out = [Peer("edgedepot-tls", self.cache.https_url, node_path, self.cache.pid)]
        if self.with_plain:
            out.append(Peer("edgedepot-plain", self.cache.url, node_path, self.cache.pid))
        for name, nginx in self.nginx:
            scheme = "https" if nginx.tls else "http"
            assert nginx.process is not None
            out.append(Peer(name, f"{scheme}://{LOOPBACK}:{nginx.port}",
                            lambda n: f"/files/{n}", nginx.process.pid))
        return out

    def stop(self) -> None:
        for _, nginx in self.nginx:
            nginx.stop()
        if self.cache is not None:
            self.cache.stop()
        self.origin.stop()


def measure(setup: Setup, log: RowLog[Row], seconds: float, repeats: int,
            connections: tuple[int, ...]) -> None:
    peers = setup.peers()
    for kind, names in (("large", setup.files.large), ("small", setup.files.small)):
        for conns in connections:
            runs: dict[str, list[WrkRun]] = {p.name: [] for p in peers}
            cpu: dict[str, list[float]] = {p.name: [] for p in peers}
            for rep in range(repeats):
                order = peers[rep % len(peers):] + peers[:rep % len(peers)]  # interleave
                for peer in order:
                    with log.guard(f"{peer.name} {kind} c={conns}"):
                        before = cpu_seconds(peer.pid)
                        run = run_wrk(peer.base_url, tuple(peer.path(n) for n in names),
                                      conns, seconds)
                        used = cpu_seconds(peer.pid) - before
                        runs[peer.name].append(run)
                        per = used / (run.bytes_total / 1e9) if kind == "large" else \
                            used * 1e6 / max(1, run.requests)
                        cpu[peer.name].append(per)
            for peer in peers:
                got = runs[peer.name]
                if not got:
                    log.fail(f"{peer.name} {kind} c={conns}", "no run succeeded",
                             failed(peer.name, kind, conns))
                    continue
                log.add(Row(peer.name, kind, conns, statistics.median(r.rps for r in got),
                            statistics.median(r.mb_per_s for r in got),
                            statistics.median(r.p99_ms for r in got),
                            sum(r.errors for r in got), len(got),
                            statistics.median(cpu[peer.name])))


def markdown(rows: list[Row], files: Files, large_size: int, small_size: int) -> str:
    by = {(r.peer, r.kind, r.connections): r for r in rows}
    lines = [f"TLS serving, 127.0.0.1, {os.cpu_count()} cores; {len(files.large)} x "
             f"{large_size >> 20} MiB large, {len(files.small)} x {small_size >> 10} KiB small "
             f"files; nginx {package_version('nginx-light')}", "",
             "| files | conns | peer | req/s | MB/s | p99 ms | errors | server CPU | "
             "vs nginx-tls |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = by.get(("nginx-tls", r.kind, r.connections))
        mine, theirs = (_metric(r), _metric(ref)) if ref is not None else (0.0, 0.0)
        ratio = f"{mine / theirs:.2f}x" if theirs else "-"
        note = f" {r.note}" if r.note else ""
        cpu = f"{r.server_cpu:.2f} s/GB" if r.kind == "large" else f"{r.server_cpu:.0f} µs/req"
        lines.append(f"| {r.kind} | {r.connections} | {r.peer}{note} | {r.rps:,.0f} | "
                     f"{r.mb_per_s:,.0f} | {r.p99_ms:.1f} | {r.errors} | {cpu} | {ratio} |")
    ed, ng = by.get(("edgedepot-tls", "large", 64)), by.get(("nginx-tls", "large", 64))
    if ed and ng and ng.mb_per_s:
        large = ed.mb_per_s / ng.mb_per_s
        verdict = "met" if large >= TARGET_LARGE_C64 else "NOT met"
        lines += ["", f"target: large files at c=64 >= {TARGET_LARGE_C64}x nginx over TLS: "
                      f"{large:.2f}x ({verdict})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 x 16 MiB, 1 repeat of 2 s")
    parser.add_argument("--large-mb", type=int, help="size of a large file (default 64)")
    parser.add_argument("--seconds", type=float, help="one wrk run (default 5)")
    parser.add_argument("--repeats", type=int, help="runs per point, median (default 3)")
    parser.add_argument("--connections", default="1,64")
    parser.add_argument("--with-plain", action="store_true",
                        help="also measure both peers over plain HTTP")
    parser.add_argument("--keep-workdir", action="store_true")
    parser.add_argument("--results-dir", type=Path, help="default benchmarks/results")
    args = parser.parse_args(argv)
    if shutil.which("nginx") is None or not wrk_available():
        print("needs nginx and wrk (make benchtools installs them)")
        return 2
    large_size = (args.large_mb or (16 if args.quick else 64)) << 20
    large_n, small_n, small_size = (2 if args.quick else 4), 64, 4 << 10
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    repeats = args.repeats or (1 if args.quick else 3)
    connections = tuple(int(c) for c in args.connections.split(",") if c.strip())
    log: RowLog[Row] = RowLog("tls", args.results_dir)
    log.note(large_size=large_size, large_n=large_n, small_size=small_size, small_n=small_n,
             seconds=seconds, repeats=repeats, cpus=os.cpu_count(),
             nginx=package_version("nginx-light"))
    print(f"rows go to {log.path} as they are measured", flush=True)
    work = Path(tempfile.mkdtemp(prefix="edgedepot-tls-bench-", dir="/var/tmp"))
    files = Files(work, (), ())
    setup: Setup | None = None
    try:
        with log.guard("setup"):
            files = make_files(work / "files", large_n, large_size, small_n, small_size)
            setup = Setup(work, files, args.with_plain)
            setup.start()
            measure(setup, log, seconds, repeats, connections)
    finally:
        if setup is not None:
            setup.stop()
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
        print(markdown(log.rows, files, large_size, small_size))
        print(f"\nresults: {log.path}")
    return 1 if log.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
