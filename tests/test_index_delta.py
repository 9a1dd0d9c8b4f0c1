"""apt index updates cross the WAN as deltas: the cache fetches the new uncompressed Packages
against the previous snapshot's and rebuilds Packages.xz/.gz locally, verified by the Release."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from distro.debian_repo import parse_release
from syncer.demo.sample_repo import SampleAptRepo, SampleDeb, build_deb
from tests.plugin.support import AptRoot, NodeProcess

pytestmark = pytest.mark.integration


def test_index_update_by_delta_through_real_apt(sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    assert sample_apt.signing_key is not None
    debs = tmp_path / "debs"
    shutil.copytree(sample_apt.deb_dir, debs)
    origin = NodeProcess(
        ["--role", "origin", "--store", str(tmp_path / "o"), "--apt", f"main={debs}",
         "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
         "--signing-key", sample_apt.signing_key.key_id], tmp_path / "o.log").start()
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         origin.url, "--index-ttl", "1"], tmp_path / "c.log").start()
    try:
        apt = AptRoot(tmp_path / "apt", sample_apt.public_keyring)
        apt.set_source(f"{cache.url}/apt/main")
        apt.run("update")
        # The origin publishes a new package: a new signed Release and Packages.
        build_deb(SampleDeb("edge-hotfix", "1.0", "all", (), (), (), (), 4096, "fix"), debs,
                  seed=11)
        time.sleep(2.5)  # origin rescan interval and the cache's index TTL
        new_release = parse_release(origin.get("/apt/main/dists/stable/InRelease")[1], "new")
        new_xz = new_release.entry("main/binary-amd64/Packages.xz")
        assert new_xz is not None
        apt.run("update")
        apt.run("install", "-y", "--download-only", "edge-hotfix")
        assert any(p.name.startswith("edge-hotfix_") for p in apt.archives())
        m = cache.metrics()
        assert m[("edgedepot_delta_fetches_total", "apt/main")] >= 1
        assert m[("edgedepot_delta_saved_bytes_total", "apt/main")] > 0
        served = origin.served()
        assert not any(new_xz.sha256 in p for p in served), \
            "the new Packages.xz was rebuilt from the delta, not fetched whole"
        assert any(p.startswith("/delta/v1/blobs/") for p in served)
    finally:
        cache.stop()
        origin.stop()
