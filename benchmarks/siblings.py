"""A region of three sibling nodes behind HAProxy vs one node: WAN bytes and cold wall time.

    python -m benchmarks.siblings [--quick] [--concurrency 50] [--cold-repeats 3]

Every peer sits in front of the same kind of origin: an edgedepot origin serving the benchmark
repository, behind the WAN relay (``benchmarks.wan``, paced per connection), started fresh
for every cold run. Peers, each with empty stores:

* ``one-node``: one ``cache-node`` (what a region is without a sibling tier);
* ``siblings``: three ``cache-node`` siblings behind HAProxy configured by
  ``syncer.siblings.haproxy_config`` (what ``distro-sync lb-config`` writes: consistent hashing
  of the path, a suite's indexes on one sibling);
* ``siblings-rr``: the same three behind the same HAProxy with ``balance roundrobin``: why the
  hashing matters (every sibling fetches what it is asked for).

N clients (default 50) each fetch the whole repository (indexes, then every pool file, sha256
checked; ``benchmarks.loadgen``). WAN bytes are the body bytes the region's nodes received from
their upstream (``edgedepot_upstream_bytes_total`` summed over the region), divided by the
bytes one client fetched. Rows go to ``benchmarks/results/siblings-<ts>.jsonl`` as measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.dataset import REPO_URL_PREFIX, Dataset, DatasetParams, build_dataset
from benchmarks.loadgen import run_cold
from benchmarks.peers import (
    LOOPBACK,
    EdgedepotPeer,
    ManagedProcess,
    PeerError,
    free_port,
    parse_rate,
    wait_tcp,
)
from benchmarks.report import RowLog
from distro.wire import parse_metrics
from syncer.inventory import parse_inventory
from syncer.siblings import FRONT_STATUS_PATH, haproxy_config

REPO_DIR = Path(__file__).resolve().parent.parent
PEERS = ("one-node", "siblings", "siblings-rr")
LABELS = {"one-node": "one node",
          "siblings": "3 siblings, HAProxy consistent hash (lb-config)",
          "siblings-rr": "3 siblings, HAProxy roundrobin"}
_LISTENING = re.compile(r"listening on (http://[0-9.]+:\d+)")


@dataclass(frozen=True)
class SiblingRow:
    """One cold run of one peer, as measured."""

    peer: str
    clients: int
    rep: int
    wall_s: float | None
    wan_bytes: int | None       # received from the origin by the region's nodes
    unique_bytes: int           # what one client fetched
    wan_ratio: float | None
    wan_requests: int | None
    files: int                  # files one client fetched
    failures: int
    machine_busy: float | None = None
    note: str = ""


class EdgedepotOrigin:
    """`cache-node serve --role origin` serving the repository tree, behind the WAN relay."""

    def __init__(self, workdir: Path, cache_node: Path, repo_root: Path, rate: int) -> None:
        self.workdir = workdir
        self.argv = [str(cache_node), "serve", "--role", "origin", "--listen", f"{LOOPBACK}:0",
                     "--store", str(workdir / "store"), "--apt", f"bench={repo_root}"]
        self.rate = rate
        self.node: ManagedProcess | None = None
        self.relay: ManagedProcess | None = None
        self.url = ""

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.node = ManagedProcess("origin", self.argv, self.workdir,
                                   dict(os.environ, PYTHONUNBUFFERED="1"))
        self.node.start()
        node_url = _wait_listening(self.node, 60)
        relay_port = free_port()
        env = dict(os.environ, PYTHONPATH=str(REPO_DIR))
        self.relay = ManagedProcess(
            "wan-relay", [sys.executable, "-m", "benchmarks.wan", "--listen-port",
                          str(relay_port), "--target-port", node_url.rsplit(":", 1)[1],
                          "--rate", str(self.rate)], self.workdir, env)
        self.relay.start()
        wait_tcp(relay_port, self.relay)
        self.url = f"http://{LOOPBACK}:{relay_port}"

    def stop(self) -> None:
        for proc in (self.relay, self.node):
            if proc is not None:
                proc.stop()
        self.relay = self.node = None


def _wait_listening(proc: ManagedProcess, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = proc.stdout_path.read_text(errors="replace").splitlines() \
            if proc.stdout_path.is_file() else []
        match = _LISTENING.search(lines[0]) if lines else None
        if match:
            return match.group(1)
        if not proc.alive():
            break
        time.sleep(0.05)
    raise PeerError(f"{proc.name} did not start:\n{proc.log_tail()}")


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


class Region:
    """The nodes of one peer (one node, or siblings behind HAProxy) in front of an origin."""

    def __init__(self, name: str, workdir: Path, cache_node: Path) -> None:
        self.name = name
        self.workdir = workdir
        self.count = 1 if name == "one-node" else 3
        self.nodes = [EdgedepotPeer(workdir / f"node{i}", cache_node) for i in range(self.count)]
        self.front: ManagedProcess | None = None
        self.base_url = ""

    def start(self, upstream: str) -> None:
        for node in self.nodes:
            node.start(upstream)
        if self.count == 1:
            self.base_url = self.nodes[0].base_url
            return
        port = free_port()
        tree = {"origin": upstream, "regions": {"bench": {
            "front": f"http://{LOOPBACK}:{port}",
            "siblings": [node.url for node in self.nodes],
            "lb": {"check_interval": 0.5}}}}
        config = haproxy_config(parse_inventory(tree).regions["bench"], "the benchmark")
        if self.name == "siblings-rr":
            config = re.sub(r"balance uri path-only( depth \d+)?", "balance roundrobin", config)
        path = self.workdir / "haproxy.cfg"
        path.write_text(config)
        self.front = ManagedProcess("haproxy", ["haproxy", "-db", "-f", str(path)], self.workdir)
        self.front.start()
        wait_tcp(port, self.front)
        deadline = time.monotonic() + 30
        while True:  # until HAProxy's own health checks have every sibling up
            status, body = _get(f"http://{LOOPBACK}:{port}{FRONT_STATUS_PATH}")
            if status == 200 and all(json.loads(body)["siblings"].values()):
                break
            if time.monotonic() > deadline:
                raise PeerError(f"HAProxy did not see every sibling up: {body[:200]!r}")
            time.sleep(0.1)
        self.base_url = f"http://{LOOPBACK}:{port}{REPO_URL_PREFIX}"

    def wan(self) -> tuple[int, int]:
        """(bytes, requests) the region's nodes received from / sent to their upstream."""
        total_bytes = total_requests = 0
        for node in self.nodes:
            metrics = parse_metrics(node.metrics())
            total_bytes += int(sum(v for (m, _), v in metrics.items()
                                   if m == "edgedepot_upstream_bytes_total"))
            total_requests += int(sum(v for (m, _), v in metrics.items()
                                      if m == "edgedepot_upstream_requests_total"))
        return total_bytes, total_requests

    def stop(self) -> None:
        if self.front is not None:
            self.front.stop()
            self.front = None
        for node in self.nodes:
            node.stop()

    def diagnostics(self) -> str:
        parts = [n.diagnostics() for n in self.nodes]
        if self.front is not None:
            parts.append(self.front.log_tail())
        return "\n".join(p for p in parts if p)


def cold_run(peer: str, ds: Dataset, clients: int, rep: int, args: argparse.Namespace,
             workroot: Path) -> SiblingRow:
    work = workroot / f"{peer}-c{clients}-r{rep}"
    origin = EdgedepotOrigin(work / "origin", args.cache_node_bin, ds.root,
                             parse_rate(args.origin_rate))
    region = Region(peer, work, args.cache_node_bin)
    try:
        origin.start()
        region.start(origin.url)
        run = run_cold(region.base_url, ds.files, clients, procs=args.client_procs,
                       timeout_s=max(120.0, 10 * ds.unique_bytes / parse_rate(args.origin_rate)
                                     + clients * ds.unique_bytes / 100e6))
        wan_bytes, wan_requests = region.wan()
        note = "; ".join(run.failure_samples[:2])
        return SiblingRow(peer, clients, rep, round(run.wall_s, 3), wan_bytes, ds.unique_bytes,
                          round(wan_bytes / ds.unique_bytes, 4), wan_requests, len(ds.files),
                          run.failures, round(run.machine_busy, 3), note[:300])
    except PeerError as exc:
        raise PeerError(f"{exc}\n{region.diagnostics()}") from None
    finally:
        region.stop()
        origin.stop()
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)


def summary_rows(rows: list[SiblingRow]) -> list[list[str]]:
    out = []
    keys = sorted({(r.clients, r.peer) for r in rows}, key=lambda k: (k[0], PEERS.index(k[1])))
    for clients, peer in keys:
        mine = [r for r in rows if r.peer == peer and r.clients == clients and r.wall_s is not None]
        base = [r.wall_s for r in rows if r.peer == "one-node" and r.clients == clients
                and r.wall_s is not None]
        if not mine:
            out.append([LABELS[peer], str(clients), "failed", "-", "-", "-", "-"])
            continue
        wall = statistics.median(r.wall_s for r in mine if r.wall_s is not None)
        base_wall = statistics.median(base) if base else None
        worst = max(mine, key=lambda r: r.wan_ratio or 0.0)
        out.append([
            LABELS[peer], str(clients), f"{wall:.2f} ({len(mine)} runs)",
            f"{wall / base_wall:.2f}x" if base_wall else "-",
            f"{worst.wan_ratio:.3f}" if worst.wan_ratio is not None else "-",
            f"{worst.wan_requests} / {worst.files}",
            str(sum(r.failures for r in mine))])
    return out


COLUMNS = ("peer", "clients", "wall s (median)", "wall vs one node", "WAN bytes / unique",
           "WAN requests / files", "failures")


def _failed_row(peer: str, clients: int, rep: int, ds: Dataset) -> Callable[[str], SiblingRow]:
    """The row a run that failed leaves, saying why."""
    return lambda reason: SiblingRow(peer, clients, rep, None, None, ds.unique_bytes, None,
                                     None, len(ds.files), 0, None, reason)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.siblings",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("--debs", type=int, help="number of .debs (default 200; quick 30)")
    p.add_argument("--total-mb", type=float, help="their total size (default 160; quick 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="30 debs / 20 MB, one repeat")
    p.add_argument("--concurrency", default="50", help="cold client counts (comma-separated)")
    p.add_argument("--cold-repeats", type=int, help="repeats per client count (default 3)")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--origin-rate", default="30m", help="per-connection WAN rate (nginx syntax)")
    p.add_argument("--cache-node-bin", type=Path, default=REPO_DIR / ".venv/bin/cache-node")
    p.add_argument("--results-dir", type=Path, default=REPO_DIR / "benchmarks/results")
    p.add_argument("--data-dir", type=Path, default=REPO_DIR / "benchmarks/.data")
    p.add_argument("--keep-workdir", action="store_true")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    console = Console() if sys.stdout.isatty() else Console(width=200)
    peers = [x for x in args.peers.split(",") if x]
    unknown = [x for x in peers if x not in PEERS]
    if unknown:
        console.print(f"[red]unknown peers {unknown}; known: {', '.join(PEERS)}[/]")
        return 2
    if any(x != "one-node" for x in peers) and not shutil.which("haproxy"):
        console.print("[red]haproxy is not installed (make benchtools installs it)[/]")
        return 2
    debs = args.debs if args.debs is not None else (30 if args.quick else 200)
    total_mb = args.total_mb if args.total_mb is not None else (20.0 if args.quick else 160.0)
    repeats = args.cold_repeats if args.cold_repeats is not None else (1 if args.quick else 3)
    concurrencies = [int(x) for x in args.concurrency.split(",") if x]
    ds = build_dataset(DatasetParams(debs, int(total_mb * 1e6), args.seed), args.data_dir)
    log: RowLog[SiblingRow] = RowLog("siblings", args.results_dir)
    log.note(debs=len(ds.pool_files), unique_mb=round(ds.unique_bytes / 1e6, 1),
             origin_rate=args.origin_rate, repeats=repeats, concurrencies=concurrencies)
    console.print(f"{len(ds.pool_files)} debs, {ds.unique_bytes / 1e6:.1f} MB per client; "
                  f"rows go to {log.path} as they are measured")
    workroot = Path(tempfile.mkdtemp(prefix="edgedepot-bench-siblings-"))
    try:
        for clients in concurrencies:
            for rep in range(repeats):
                order = peers[rep % len(peers):] + peers[:rep % len(peers)]  # rotate
                for peer in order:
                    what = f"{peer} c={clients} rep {rep + 1}"
                    with log.guard(what, _failed_row(peer, clients, rep, ds)):
                        log.add(cold_run(peer, ds, clients, rep, args, workroot))
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    table = Table(title=f"sibling tier vs one node: {len(ds.pool_files)} debs, "
                        f"{ds.unique_bytes / 1e6:.1f} MB per client, WAN {args.origin_rate}/conn")
    for col in COLUMNS:
        table.add_column(col)
    body = summary_rows(log.rows)
    for line in body:
        table.add_row(*line)
    console.print(table)
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for line in body:
        print("| " + " | ".join(line) + " |")
    return 1 if log.failures else 0


if __name__ == "__main__":
    sys.exit(main())
