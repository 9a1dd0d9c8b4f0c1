"""The origin in front of an operator-given upstream URL (a public mirror or index)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from distro.debian_repo import BuiltRepository
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.support import AptRoot, FakeUpstream, NodeProcess, sha256_file

pytestmark = pytest.mark.integration


@pytest.fixture
def mirror(sample_tree: BuiltRepository) -> Iterator[FakeUpstream]:
    """Stands in for a public Debian mirror: plain files, no Repr-Digest headers."""
    fake = FakeUpstream(sample_tree.root, prefix="/debian/").start()
    yield fake
    fake.stop()


def test_origin_mirrors_an_apt_url_and_verifies_pool_files_against_packages(
        mirror: FakeUpstream, sample_apt: SampleAptRepo, sample_tree: BuiltRepository,
        tmp_path: Path) -> None:
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"debian={mirror.url}/debian"], tmp_path / "o.log").start()
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"),
                         "--upstream", origin.url], tmp_path / "c.log").start()
    try:
        apt = AptRoot(tmp_path / "apt", sample_apt.public_keyring)
        apt.set_source(f"{cache.url}/apt/debian")
        apt.run("update")
        apt.run("install", "-y", "--download-only", sample_apt.top_package)
        by_sha = {p.sha256 for p in sample_tree.packages}
        debs = apt.archives()
        assert len(debs) >= 20 and all(sha256_file(d) in by_sha for d in debs)
        pool_requests = [p for p in mirror.requests if "/pool/" in p]
        assert len(pool_requests) == len(set(pool_requests)) == len(debs)
    finally:
        cache.stop()
        origin.stop()


def test_origin_refuses_pool_file_it_cannot_verify(
        mirror: FakeUpstream, sample_tree: BuiltRepository, tmp_path: Path) -> None:
    """Without the suite's Packages index the origin has no digest: it must not serve."""
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"debian={mirror.url}/debian"], tmp_path / "o.log").start()
    try:
        entry = sample_tree.packages[0]
        status, body, _ = origin.get(f"/apt/debian/{entry.filename}")
        assert status == 502 and b"digest" in body
        assert origin.get("/apt/debian/dists/stable/main/binary-amd64/Packages.xz")[0] == 200
        status, body, _ = origin.get(f"/apt/debian/{entry.filename}")
        assert status == 200 and hashlib.sha256(body).hexdigest() == entry.sha256
    finally:
        origin.stop()


def test_origin_mirrors_a_pip_index_url(wheel_dir: Path, tmp_path: Path) -> None:
    upstream = NodeProcess(["--role", "origin", "--store", str(tmp_path / "u"),
                            "--pypi", f"up={wheel_dir}"], tmp_path / "u.log").start()
    try:
        origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"), "--pypi",
                              f"mirror={upstream.url}/pypi/up/simple/"], tmp_path / "o.log").start()
        try:
            status, body, headers = origin.get(
                "/pypi/mirror/simple/edge-common/",
                {"Accept": "application/vnd.pypi.simple.v1+json"})
            assert status == 200
            page = json.loads(body)
            assert len(page["files"]) == 2
            for f in page["files"]:
                assert not f["url"].startswith("http"), "links point at this node"
                status, data, _ = origin.get(f"/pypi/mirror/files/edge-common/{f['filename']}")
                assert status == 200
                assert hashlib.sha256(data).hexdigest() == f["hashes"]["sha256"]
        finally:
            origin.stop()
    finally:
        upstream.stop()


def test_metrics_healthz_and_status_page(origin: NodeProcess, cache: NodeProcess) -> None:
    assert cache.get("/apt/main/dists/stable/InRelease")[0] == 200
    assert cache.get("/apt/main/dists/stable/main/binary-amd64/Packages.xz")[0] == 200
    assert cache.get("/apt/main/dists/stable/main/binary-amd64/Packages.xz")[0] == 200
    status, body, headers = cache.get("/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    for name in ("edgedepot_cache_hits_total", "edgedepot_cache_misses_total",
                 "edgedepot_upstream_requests_total", "edgedepot_upstream_bytes_total",
                 "edgedepot_served_bytes_total", "edgedepot_inflight_fetches",
                 "edgedepot_store_bytes", "edgedepot_store_blobs"):
        assert name in text, name
    m = cache.metrics()
    assert m[("edgedepot_cache_hits_total", "apt/main")] >= 1
    assert m[("edgedepot_cache_misses_total", "apt/main")] >= 1
    assert m[("edgedepot_store_blobs", "")] >= 2
    status, body, _ = cache.get("/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body, _ = cache.get("/")
    assert status == 200 and b"edgedepot cache node" in body and b"apt" in body


def test_full_disk_gives_clear_error_and_keeps_what_is_stored(
        origin: NodeProcess, sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    if shutil.which("mount") is None:
        pytest.skip("mount is not available")
    small = tmp_path / "small"
    small.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(small)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        cache = NodeProcess(["--role", "cache", "--store", str(small / "c"),
                             "--upstream", origin.url], tmp_path / "c.log").start()
        try:
            assert cache.get("/apt/main/dists/stable/InRelease")[0] == 200
            status, packages, _ = cache.get("/apt/main/dists/stable/main/binary-amd64/Packages")
            assert status == 200
            from distro.debian_repo import parse_packages
            entries = sorted(parse_packages(packages, "Packages"), key=lambda e: -e.size)
            statuses = []
            for entry in entries:
                status, body, _ = cache.get(f"/apt/main/{entry.filename}")
                statuses.append(status)
                if status == 507:
                    break
                if status == 200:
                    assert hashlib.sha256(body).hexdigest() == entry.sha256
                else:
                    assert status == 507 and b"full" in body
            assert 507 in statuses, "the tmpfs is smaller than the repository"
            assert 200 in statuses
            # What was stored before the disk filled is intact.
            status, again, _ = cache.get("/apt/main/dists/stable/main/binary-amd64/Packages")
            assert status == 200 and again == packages
        finally:
            cache.stop()
        fsck = subprocess.run([str(Path(__import__("sys").executable).parent / "cache-node"),
                               "fsck", "--store", str(small / "c")], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_origin_serves_an_existing_mirror_tree_as_is(
        sample_tree: BuiltRepository, sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"tree={sample_tree.root}"], tmp_path / "o.log").start()
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"),
                         "--upstream", origin.url], tmp_path / "c.log").start()
    try:
        status, body, headers = origin.get("/apt/tree/dists/stable/InRelease")
        assert status == 200
        assert body == (sample_tree.root / "dists/stable/InRelease").read_bytes()
        assert "Repr-Digest" in headers
        apt = AptRoot(tmp_path / "apt", sample_apt.public_keyring)
        apt.set_source(f"{cache.url}/apt/tree")
        apt.run("update")
        apt.run("install", "-y", "--download-only", sample_apt.top_package)
        by_sha = {p.sha256 for p in sample_tree.packages}
        assert all(sha256_file(d) in by_sha for d in apt.archives())
        assert not (tmp_path / "o" / "built" / "tree").exists(), "served as is, not rebuilt"
    finally:
        cache.stop()
        origin.stop()


def test_served_bytes_count_only_what_was_sent(origin: NodeProcess, cache: NodeProcess,
                                                sample_tree: BuiltRepository) -> None:
    entry = max(sample_tree.packages, key=lambda p: p.size)
    path = f"/apt/main/{entry.filename}"
    assert cache.get(path)[0] == 200  # now stored: served from the store below

    def served() -> float:
        return cache.metrics()[("edgedepot_served_bytes_total", "apt/main")]

    before = served()
    import urllib.request
    with urllib.request.urlopen(urllib.request.Request(cache.url + path, method="HEAD")) as r:
        assert r.status == 200
    status, body, _ = cache.get(path, {"Range": "bytes=0-99"})
    assert status == 206 and len(body) == 100
    assert served() - before == 100
