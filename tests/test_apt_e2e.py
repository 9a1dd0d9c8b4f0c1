"""Real apt-get through a cache in front of an origin serving a signed repository."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest

from distro.debian_repo import parse_packages
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.support import AptRoot, NodeProcess, sha256_file

pytestmark = pytest.mark.integration


def _index(node: NodeProcess) -> dict[str, tuple[str, int]]:
    status, body, _ = node.get("/apt/main/dists/stable/main/binary-amd64/Packages")
    assert status == 200
    # apt names a downloaded archive NAME_VERSION_ARCH.deb with the epoch colon as %3a.
    return {f"{e.package}_{e.version.replace(':', '%3a')}_{e.architecture}.deb": (e.sha256, e.size)
            for e in parse_packages(body, "Packages")}


def test_apt_install_through_cache_verifies_signature(
        sample_apt: SampleAptRepo, origin: NodeProcess, cache: NodeProcess, tmp_path: Path) -> None:
    apt = AptRoot(tmp_path / "apt", sample_apt.public_keyring)
    apt.set_source(f"{cache.url}/apt/main")
    apt.run("update")
    apt.run("install", "-y", "--download-only", sample_apt.top_package)
    got = apt.archives()
    assert len(got) >= 20, "the top package pulls in its dependency chain"
    index = _index(origin)
    for deb in got:
        assert sha256_file(deb) == index[deb.name][0]
    # Every pool file crossed the WAN once: the origin served each exactly once.
    served = origin.served()
    pool = {p: n for p, n in served.items() if "/pool/" in p}
    assert len(pool) == len(got) and set(pool.values()) == {1}


def test_apt_rejects_repository_signed_by_another_key(
        sample_apt: SampleAptRepo, cache: NodeProcess, tmp_path: Path) -> None:
    """The signature really passes through: a wrong keyring makes apt refuse the index."""
    from distro.debian_repo import export_public_key
    from syncer.demo.signing import make_throwaway_key
    other = make_throwaway_key(tmp_path / "other-gnupg", "someone else")
    keyring = export_public_key(other, tmp_path / "other.gpg")
    apt = AptRoot(tmp_path / "apt", keyring)
    apt.set_source(f"{cache.url}/apt/main")
    from tests.plugin.fixtures import release_key
    release_key(other)
    proc = apt.run("update", check=False)
    text = proc.stdout + proc.stderr
    assert "NO_PUBKEY" in text or "not signed" in text or "signature" in text.lower()
    assert not list((apt.root / "lists").glob("*Packages*"))


def test_ten_concurrent_apt_get_on_cold_cache(
        sample_apt: SampleAptRepo, origin: NodeProcess, cache: NodeProcess, tmp_path: Path) -> None:
    roots = []
    for i in range(10):
        root = AptRoot(tmp_path / f"site{i}", sample_apt.public_keyring)
        root.set_source(f"{cache.url}/apt/main")
        roots.append(root)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda r: r.run("update"), roots))
        list(pool.map(lambda r: r.run("install", "-y", "--download-only",
                                      sample_apt.top_package), roots))
    index = _index(origin)
    for root in roots:
        debs = root.archives()
        assert len(debs) >= 20
        for deb in debs:
            assert sha256_file(deb) == index[deb.name][0], f"{deb} differs from the index"
    served = origin.served()
    pool_counts = {p: n for p, n in served.items() if "/pool/" in p}
    assert pool_counts and all(n == 1 for n in pool_counts.values()), pool_counts
    assert served.get("/apt/main/dists/stable/InRelease", 0) <= 2
