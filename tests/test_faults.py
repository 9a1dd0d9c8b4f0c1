"""Bad input and faults: traversal, corrupt/truncated upstream bytes, 5xx, timeouts, kill -9,
quota, malformed indexes, upstream down, snapshot atomicity, client disconnects."""

from __future__ import annotations

import hashlib
import http.client
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from distro.debian_repo import BuiltRepository, PoolEntry, build_repository, parse_release
from syncer.demo.sample_repo import SampleAptRepo, SampleDeb, build_deb
from tests.plugin.support import CACHE_NODE, FakeUpstream, Fault, NodeProcess

pytestmark = pytest.mark.integration

PACKAGES = "dists/stable/main/binary-amd64/Packages"


@pytest.fixture
def tree(sample_tree: BuiltRepository, tmp_path: Path) -> BuiltRepository:
    """A private copy of the signed sample tree that a test may change."""
    root = tmp_path / "tree"
    shutil.copytree(sample_tree.root, root)
    return BuiltRepository(root, sample_tree.suite, sample_tree.packages, sample_tree.release)


@pytest.fixture
def upstream(tree: BuiltRepository) -> Iterator[FakeUpstream]:
    fake = FakeUpstream(tree.root).start()
    yield fake
    fake.stop()


def start_cache(upstream: FakeUpstream, store: Path, *extra: str) -> NodeProcess:
    return NodeProcess(["--role", "cache", "--store", str(store), "--upstream", upstream.url,
                        "--upstream-retries", "2", "--upstream-backoff", "0.05", *extra],
                       store.parent / f"{store.name}.log").start()


@pytest.fixture
def cache(upstream: FakeUpstream, tmp_path: Path) -> Iterator[NodeProcess]:
    node = start_cache(upstream, tmp_path / "cache", "--index-ttl", "1")
    yield node
    node.stop()


def prime(cache: NodeProcess) -> None:
    """What apt does first: the Release files, then the Packages index."""
    assert cache.get("/apt/main/dists/stable/InRelease")[0] == 200
    assert cache.get(f"/apt/main/{PACKAGES}.xz")[0] == 200


def raw_get(url: str, raw_path: str) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=30)
    conn.putrequest("GET", raw_path, skip_accept_encoding=True)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, resp.read()


def fetch_fully(node: NodeProcess, path: str) -> tuple[int, bytes] | None:
    """GET returning (status, body), or None when the response was aborted mid-body."""
    parts = urlsplit(node.url)
    conn = http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=60)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (http.client.IncompleteRead, ConnectionError):
        return None
    finally:
        conn.close()


def largest(tree: BuiltRepository) -> PoolEntry:
    return max(tree.packages, key=lambda p: p.size)


TRAVERSALS = [
    "/apt/main/../../../../etc/passwd",
    "/apt/main/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/apt/main/pool/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/apt/main/pool/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/apt/main/pool/%252e%252e/%252e%252e/etc/passwd",
    "/apt/main/pool/..%5c..%5c..%5cetc%5cpasswd",
    "/apt/main/pool/main/%00/passwd",
    "/apt/main/dists/stable/../../../../../../etc/passwd",
    "/apt/main//etc/passwd",
    "/pypi/local/files/..%2f..%2f..%2fetc/passwd",
    "/pypi/local/files/edge-agent/..%2f..%2f..%2fetc%2fpasswd",
    "/pypi/local/simple/..%2f..%2fetc/",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_traversal_is_refused(origin: NodeProcess, path: str) -> None:
    status, body = raw_get(origin.url, path)
    assert 400 <= status < 500, (path, status)
    assert b"root:" not in body


def test_path_traversal_through_cache_reads_nothing(
        origin: NodeProcess, tmp_path: Path) -> None:
    node = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                        origin.url], tmp_path / "c.log").start()
    try:
        for path in TRAVERSALS:
            status, body = raw_get(node.url, path)
            assert 400 <= status < 500, (path, status)
            assert b"root:" not in body
        assert not any("passwd" in p for p in origin.served())
    finally:
        node.stop()


@pytest.mark.parametrize("fault", [Fault(corrupt=True), Fault(truncate_at=1000)],
                         ids=["corrupt", "truncated"])
def test_bad_upstream_bytes_fail_the_request_and_are_not_stored(
        cache: NodeProcess, upstream: FakeUpstream, tree: BuiltRepository, fault: Fault,
        tmp_path: Path) -> None:
    prime(cache)
    entry = largest(tree)
    upstream.faults[entry.filename] = fault
    result = fetch_fully(cache, f"/apt/main/{entry.filename}")
    good = (tree.root / entry.filename).read_bytes()
    assert result is None or result[0] != 200 or result[1] != good
    if result is not None and result[0] == 200:
        assert len(result[1]) < len(good), "a 200 must never complete with wrong bytes"
    assert not (tmp_path / "cache/store/blobs/sha256" / entry.sha256[:2] / entry.sha256).exists()
    first_count = upstream.count(entry.filename)
    # Upstream repaired: the next request refetches and succeeds.
    del upstream.faults[entry.filename]
    status, body, headers = cache.get(f"/apt/main/{entry.filename}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
    assert upstream.count(entry.filename) == first_count + 1
    if fault.corrupt:
        assert cache.metrics()[("edgedepot_verify_failures_total", "apt/main")] >= 1


def test_upstream_503_is_retried(cache: NodeProcess, upstream: FakeUpstream,
                                 tree: BuiltRepository) -> None:
    prime(cache)
    entry = tree.packages[0]
    upstream.faults[entry.filename] = Fault(fail_times=2)
    status, body, _ = cache.get(f"/apt/main/{entry.filename}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
    assert upstream.count(entry.filename) == 3


def test_persistent_503_gives_502_with_message(cache: NodeProcess, upstream: FakeUpstream,
                                               tree: BuiltRepository) -> None:
    prime(cache)
    entry = tree.packages[1]
    upstream.faults[entry.filename] = Fault(status=503)
    status, body, _ = cache.get(f"/apt/main/{entry.filename}")
    assert status == 502
    assert b"503" in body and b"upstream" in body
    assert upstream.count(entry.filename) == 3  # one try + two retries


def test_upstream_timeout_gives_504(upstream: FakeUpstream, tree: BuiltRepository,
                                    tmp_path: Path) -> None:
    node = start_cache(upstream, tmp_path / "c", "--upstream-read-timeout", "0.5",
                       "--upstream-retries", "1")
    try:
        prime(node)
        entry = tree.packages[2]
        upstream.faults[entry.filename] = Fault(delay=3)
        status, body, _ = node.get(f"/apt/main/{entry.filename}")
        assert status == 504, body
    finally:
        node.stop()


def test_kill_9_mid_download_leaves_nothing_servable(
        upstream: FakeUpstream, tree: BuiltRepository, tmp_path: Path) -> None:
    store = tmp_path / "c"
    node = start_cache(upstream, store)
    prime(node)
    entry = largest(tree)
    upstream.faults[entry.filename] = Fault(chunk_delay=0.2)
    threading.Thread(target=fetch_fully, args=(node, f"/apt/main/{entry.filename}"),
                     daemon=True).start()
    partial_dir = store / "store" / "partial"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if any(p.stat().st_size > 0 for p in partial_dir.glob("*.part")):
            break
        time.sleep(0.05)
    else:
        pytest.fail("download never started")
    node.kill9()
    assert not (store / "store/blobs/sha256" / entry.sha256[:2] / entry.sha256).exists()
    fsck = subprocess.run([CACHE_NODE, "fsck", "--store", str(store)], capture_output=True,
                          text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    del upstream.faults[entry.filename]
    node = start_cache(upstream, store)
    try:
        assert not list(partial_dir.glob("*.part")), "partials are removed at start"
        status, body, _ = node.get(f"/apt/main/{entry.filename}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
    finally:
        node.stop()


def test_fsck_reports_and_removes_a_corrupted_blob(
        cache: NodeProcess, tree: BuiltRepository, tmp_path: Path) -> None:
    prime(cache)
    entry = tree.packages[3]
    assert cache.get(f"/apt/main/{entry.filename}")[0] == 200
    cache.stop()
    blob = tmp_path / "cache/store/blobs/sha256" / entry.sha256[:2] / entry.sha256
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    fsck = subprocess.run([CACHE_NODE, "fsck", "--store", str(tmp_path / "cache")],
                          capture_output=True, text=True)
    assert fsck.returncode == 1 and entry.sha256 in fsck.stdout
    assert not blob.exists()
    fsck = subprocess.run([CACHE_NODE, "fsck", "--store", str(tmp_path / "cache")],
                          capture_output=True, text=True)
    assert fsck.returncode == 0


def test_full_quota_evicts_instead_of_failing(
        upstream: FakeUpstream, tree: BuiltRepository, tmp_path: Path) -> None:
    quota = 2 * largest(tree).size
    node = start_cache(upstream, tmp_path / "c", "--quota", str(quota))
    try:
        prime(node)
        for entry in tree.packages:
            status, body, _ = node.get(f"/apt/main/{entry.filename}")
            assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
        assert node.metrics()[("edgedepot_store_bytes", "")] <= quota
    finally:
        node.stop()


def _publish_release(tree: BuiltRepository, packages_text: bytes) -> None:
    """Publish a new, unsigned Release listing `packages_text` as the Packages index."""
    dist = tree.root / "dists/stable"
    rel = "main/binary-amd64/Packages"
    digest = hashlib.sha256(packages_text).hexdigest()
    (dist / rel).write_bytes(packages_text)
    by_hash = dist / "main/binary-amd64/by-hash/SHA256" / digest
    by_hash.write_bytes(packages_text)
    release = (f"Origin: test\nSuite: stable\nCodename: stable\nDate: Sat, 21 Nov 2026 "
               f"00:00:00 UTC\nArchitectures: amd64\nComponents: main\nAcquire-By-Hash: yes\n"
               f"SHA256:\n {digest} {len(packages_text)} {rel}\n").encode()
    (dist / "Release").write_bytes(release)
    (dist / "InRelease").unlink(missing_ok=True)
    (dist / "Release.gpg").unlink(missing_ok=True)


def test_malformed_upstream_indexes_keep_previous_snapshot(
        cache: NodeProcess, upstream: FakeUpstream, tree: BuiltRepository) -> None:
    _, old_inrelease, _ = cache.get("/apt/main/dists/stable/InRelease")
    _, old_packages, _ = cache.get(f"/apt/main/{PACKAGES}")
    # 1. A malformed Release upstream.
    (tree.root / "dists/stable/InRelease").write_bytes(b"\x00\x01garbage\n")
    time.sleep(1.2)
    status, body, headers = cache.get("/apt/main/dists/stable/InRelease")
    assert status == 200 and body == old_inrelease
    assert headers.get("X-Edgedepot-Stale") == "1"
    # 2. A well-formed Release whose Packages index is malformed.
    _publish_release(tree, b"Package: broken\nVersion: 1\nFilename: ../../etc/passwd\n")
    time.sleep(1.2)
    status, body, headers = cache.get("/apt/main/dists/stable/InRelease")
    assert status == 200 and body == old_inrelease, "the previous snapshot stays served"
    status, body, _ = cache.get(f"/apt/main/{PACKAGES}")
    assert status == 200 and body == old_packages
    assert cache.metrics()[("edgedepot_index_errors_total", "apt/main")] >= 2


def test_upstream_down_serves_last_good_snapshot_flagged_stale(
        cache: NodeProcess, upstream: FakeUpstream) -> None:
    prime(cache)
    _, good, _ = cache.get("/apt/main/dists/stable/InRelease")
    upstream.down = True
    time.sleep(1.2)
    status, body, headers = cache.get("/apt/main/dists/stable/InRelease")
    assert status == 200 and body == good
    assert headers.get("X-Edgedepot-Stale") == "1"
    assert cache.metrics()[("edgedepot_stale_serves_total", "apt/main")] >= 1
    status, _, _ = cache.get(f"/apt/main/{PACKAGES}.xz")
    assert status == 200


def test_new_inrelease_is_never_served_with_old_packages(
        cache: NodeProcess, upstream: FakeUpstream, tree: BuiltRepository,
        sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    prime(cache)
    assert cache.get(f"/apt/main/{PACKAGES}")[0] == 200
    old_index = parse_release(cache.get("/apt/main/dists/stable/InRelease")[1], "old")
    old_entry = old_index.entry("main/binary-amd64/Packages.xz")
    assert old_entry is not None
    # Upstream publishes a new version of the repository (one more package, re-signed).
    debs = tmp_path / "debs"
    shutil.copytree(sample_apt.deb_dir, debs)
    build_deb(SampleDeb("edge-newcomer", "1.0", "all", (), (), (), (), 2048, "new"), debs,
              seed=3)
    build_repository(debs, tree.root, signing_key=sample_apt.signing_key)
    time.sleep(1.2)
    requests_before = len(upstream.requests)
    status, inrelease, _ = cache.get("/apt/main/dists/stable/InRelease")
    assert status == 200
    index = parse_release(inrelease, "InRelease")
    # The switch happened only after the used index files were fetched for the new snapshot.
    new_requests = upstream.requests[requests_before:]
    assert any("by-hash" in p for p in new_requests)
    for rel in ("main/binary-amd64/Packages", "main/binary-amd64/Packages.xz"):
        entry = index.entry(rel)
        assert entry is not None
        status, body, _ = cache.get(f"/apt/main/dists/stable/{rel}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
    assert b"edge-newcomer" in cache.get(f"/apt/main/{PACKAGES}")[1]
    # A client that read the previous InRelease just before the switch still gets its index.
    status, body, _ = cache.get(
        f"/apt/main/dists/stable/main/binary-amd64/by-hash/SHA256/{old_entry.sha256}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == old_entry.sha256


def test_client_disconnect_does_not_fail_the_others(
        cache: NodeProcess, upstream: FakeUpstream, tree: BuiltRepository) -> None:
    prime(cache)
    entry = largest(tree)
    upstream.faults[entry.filename] = Fault(chunk_delay=0.05)
    parts = urlsplit(cache.url)
    quitter = http.client.HTTPConnection(str(parts.hostname), parts.port, timeout=30)
    quitter.request("GET", f"/apt/main/{entry.filename}")
    resp = quitter.getresponse()
    resp.read(1000)
    results: list[tuple[int, bytes] | None] = []
    threads = [threading.Thread(target=lambda: results.append(
        fetch_fully(cache, f"/apt/main/{entry.filename}"))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    quitter.close()  # disconnect mid-body
    for t in threads:
        t.join(60)
    assert len(results) == 3
    for result in results:
        assert result is not None and result[0] == 200
        assert hashlib.sha256(result[1]).hexdigest() == entry.sha256
    assert upstream.count(entry.filename) == 1
