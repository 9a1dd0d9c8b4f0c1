"""`--workers N`: several worker processes over one store behave as one node.

One upstream request per artifact whichever worker gets each request; a snapshot switch seen
by every worker at once; a worker killed mid-download leaves the clients of the others
unaffected, nothing partial is served and the store stays clean; the node's metrics add up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from distro.debian_repo import BuiltRepository, build_repository, parse_release
from syncer.demo.sample_repo import SampleAptRepo, SampleDeb, build_deb
from tests.plugin.support import CACHE_NODE, AptRoot, FakeUpstream, Fault, NodeProcess
from tests.test_concurrency import _run as fifty_clients
from tests.test_faults import PACKAGES, fetch_fully, largest, prime

pytestmark = pytest.mark.integration

WORKERS = 4


def workers_of(node: NodeProcess) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(node.pid)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.fixture
def workers_cache(origin: NodeProcess, tmp_path: Path) -> Iterator[NodeProcess]:
    node = NodeProcess(["--role", "cache", "--store", str(tmp_path / "cache"),
                        "--upstream", origin.url], tmp_path / "cache.log", workers=WORKERS)
    with node:
        yield node


def test_one_upstream_request_per_artifact_across_workers(
        origin: NodeProcess, workers_cache: NodeProcess, sample_apt: SampleAptRepo,
        tmp_path: Path) -> None:
    assert len(workers_of(workers_cache)) == WORKERS
    before = asyncio.run(fifty_clients(workers_cache, origin))
    # Ten real apt-get sites at once through the same node.
    sites = []
    for i in range(10):
        root = AptRoot(tmp_path / f"site{i}", sample_apt.public_keyring)
        root.set_source(f"{workers_cache.url}/apt/main")
        sites.append(root)
    for proc in [root.popen("update") for root in sites]:
        assert proc.wait(timeout=300) == 0, proc.stdout.read() if proc.stdout else ""
    installs = [root.popen("install", "-y", "--download-only", sample_apt.top_package)
                for root in sites]
    for proc in installs:
        assert proc.wait(timeout=300) == 0, proc.stdout.read() if proc.stdout else ""
    served = {p: n - before.get(p, 0) for p, n in origin.served().items()}
    artifacts = {p: n for p, n in served.items()
                 if "/pool/" in p or "/by-hash/" in p or p.endswith("Release")}
    assert artifacts and all(n == 1 for n in artifacts.values()), \
        {p: n for p, n in artifacts.items() if n != 1}
    # /metrics answers for the node: every worker's requests, whichever worker answers.
    def all_counted() -> bool:
        m = workers_cache.metrics()
        return m.get(("edgedepot_requests_total", "apt/main"), 0) >= 50 * 35
    wait_for(all_counted)
    # The kernel spread the clients over the workers: several of them answered requests.
    busy = [f for f in (tmp_path / "cache" / "metrics").glob("worker-*.counters.json")
            if json.loads(f.read_text())["counters"]["edgedepot_requests_total"]]
    assert len(busy) >= 2, busy


def test_a_snapshot_switch_is_seen_by_every_worker_at_once(
        sample_tree: BuiltRepository, sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    """Clients read InRelease, then the Packages index by path, from random workers, while
    the upstream publishes a new version: no client ever gets a Packages that does not match
    the InRelease it just read."""
    root = tmp_path / "tree"
    shutil.copytree(sample_tree.root, root)
    tree = BuiltRepository(root, sample_tree.suite, sample_tree.packages, sample_tree.release)
    upstream = FakeUpstream(tree.root).start()
    node = NodeProcess(["--role", "cache", "--store", str(tmp_path / "cache"), "--upstream",
                        upstream.url, "--index-ttl", "1"], tmp_path / "cache.log",
                       workers=WORKERS).start()
    mismatches: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            status, inrelease, _ = node.get("/apt/main/dists/stable/InRelease")
            if status != 200:
                mismatches.append(f"InRelease {status}")
                continue
            entry = parse_release(inrelease, "InRelease").entry("main/binary-amd64/Packages")
            assert entry is not None
            seen.add(entry.sha256)
            status, body, _ = node.get(f"/apt/main/{PACKAGES}")
            if status != 200 or hashlib.sha256(body).hexdigest() != entry.sha256:
                mismatches.append(f"Packages {status} does not match the InRelease just read")

    try:
        prime(node)
        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        debs = tmp_path / "debs"
        shutil.copytree(sample_apt.deb_dir, debs)
        build_deb(SampleDeb("edge-newcomer", "1.0", "all", (), (), (), (), 2048, "new"), debs,
                  seed=3)
        build_repository(debs, tree.root, signing_key=sample_apt.signing_key)
        wait_for(lambda: len(seen) >= 2 or bool(mismatches))
        time.sleep(1.5)  # keep reading after the switch
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not mismatches, mismatches[:5]
        assert len(seen) == 2
        # Every worker serves the new snapshot now: ask more times than there are workers.
        latest = [parse_release(node.get("/apt/main/dists/stable/InRelease")[1], "x")
                  .entry("main/binary-amd64/Packages") for _ in range(4 * WORKERS)]
        assert len({e.sha256 for e in latest if e is not None}) == 1
        # The upstream was asked for the new Release once per revalidation, not per worker.
        assert upstream.count("/dists/stable/InRelease") < 4 * WORKERS
    finally:
        stop.set()
        node.stop()
        upstream.stop()


def _holder_of(node: NodeProcess, lock_dir: Path) -> int | None:
    """The worker that holds a download's lock file open (the one downloading)."""
    for pid in workers_of(node):
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            targets = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if any(t.startswith(str(lock_dir)) and t.endswith(".lock") for t in targets):
            return pid
    return None


def test_a_worker_killed_mid_download_does_not_hurt_the_others(
        sample_tree: BuiltRepository, tmp_path: Path) -> None:
    root = tmp_path / "tree"
    shutil.copytree(sample_tree.root, root)
    tree = BuiltRepository(root, sample_tree.suite, sample_tree.packages, sample_tree.release)
    upstream = FakeUpstream(tree.root).start()
    store = tmp_path / "cache"
    node = NodeProcess(["--role", "cache", "--store", str(store), "--upstream", upstream.url,
                        "--upstream-retries", "5", "--upstream-backoff", "0.05"],
                       tmp_path / "cache.log", workers=2).start()
    entry = largest(tree)
    good = (tree.root / entry.filename).read_bytes()
    results: list[tuple[int, bytes] | None] = []
    try:
        prime(node)
        upstream.faults[entry.filename] = Fault(chunk_delay=0.15)
        clients = [threading.Thread(target=lambda: results.append(
            fetch_fully(node, f"/apt/main/{entry.filename}"))) for _ in range(12)]
        for t in clients:
            t.start()
        lock_dir = store / "store" / "locks"
        wait_for(lambda: _holder_of(node, lock_dir) is not None and any(
            p.stat().st_size > 0 for p in (store / "store" / "partial").glob("*.part")))
        victim = _holder_of(node, lock_dir)
        assert victim is not None
        os.kill(victim, 9)
        time.sleep(0.5)
        del upstream.faults[entry.filename]  # the survivor resumes at full speed
        for t in clients:
            t.join(timeout=120)
        complete = [r for r in results if r is not None and r[0] == 200 and len(r[1]) == len(good)]
        assert complete, f"no client of the surviving worker completed: {results!r:.300}"
        for r in results:  # nothing wrong is ever a complete 200
            if r is not None and r[0] == 200:
                assert r[1] == good or len(r[1]) < len(good)
        # The node replaced its worker, and the stored blob is the right one.
        wait_for(lambda: len(workers_of(node)) == 2 and victim not in workers_of(node))
        status, body, _ = node.get(f"/apt/main/{entry.filename}")
        assert status == 200 and body == good
    finally:
        node.stop()
        upstream.stop()
    fsck = subprocess.run([CACHE_NODE, "fsck", "--store", str(store)], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert not list((store / "store" / "partial").glob("*.part"))


def test_sigterm_stops_every_worker(origin: NodeProcess, tmp_path: Path) -> None:
    node = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                        origin.url], tmp_path / "c.log", workers=3).start()
    children = workers_of(node)
    assert len(children) == 3
    assert node.get("/healthz")[0] == 200
    proc = node.proc
    assert proc is not None
    node.stop()
    assert proc.returncode == 0
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def test_a_bad_setting_in_a_worker_stops_the_node_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("")
    proc = subprocess.run([CACHE_NODE, "serve", "--role", "cache", "--workers", "2",
                           "--listen", "127.0.0.1:0", "--store", str(tmp_path / "taken"),
                           "--upstream", "http://127.0.0.1:9/"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_worker_count_defaults_to_the_cores(tmp_path: Path) -> None:
    from cache_node.config import load_config
    config = load_config(None, {}, {"role": "cache", "store": str(tmp_path),
                                    "upstream": "http://127.0.0.1:9/"})
    assert config.workers == len(os.sched_getaffinity(0))
