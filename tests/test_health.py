"""`/healthz` and the status page: the key fingerprint sites pin, the node's role, and a cache's
upstream reported degraded (still 200) when it stops answering, from a cached probe."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cache_node.keys import format_fingerprint
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration


def healthz(node: NodeProcess) -> dict[str, Any]:
    status, body, headers = node.get("/healthz")
    assert status == 200, body  # degraded is still 200: a degraded cache serves what it has
    doc: dict[str, Any] = json.loads(body)
    return doc


def poll(node: NodeProcess, until: str, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    doc = healthz(node)
    while doc["status"] != until and time.monotonic() < deadline:
        time.sleep(0.5)
        doc = healthz(node)
    return doc


def test_health_of_origin_and_cache(sample_apt: SampleAptRepo, wheel_dir: Path,
                                    tmp_path: Path) -> None:
    key = sample_apt.signing_key
    assert key is not None
    origin_access = tmp_path / "origin-access.log"
    origin = NodeProcess(
        ["--role", "origin", "--store", str(tmp_path / "o"), "--apt", f"main={sample_apt.deb_dir}",
         "--gnupg-home", str(key.gnupg_home), "--signing-key", key.key_id,
         "--access-log", str(origin_access)], tmp_path / "origin.log").start()
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         origin.url], tmp_path / "cache.log")
    try:
        doc = healthz(origin)
        assert doc["status"] == "ok" and doc["reasons"] == [] and doc["role"] == "origin"
        assert doc["upstream"] is None and doc["key_fingerprint"] == key.key_id
        cache.start()
        doc = healthz(cache)
        assert doc["status"] == "ok" and doc["role"] == "cache"
        assert doc["upstream"]["url"] == origin.url + "/" and doc["upstream"]["reachable"]
        deadline = time.monotonic() + 10  # the cache fetches the key in the background
        while doc["key_fingerprint"] is None and time.monotonic() < deadline:
            time.sleep(0.2)
            doc = healthz(cache)
        assert doc["key_fingerprint"] == key.key_id
        for _ in range(30):
            healthz(cache)
        probes = origin_access.read_text().count(" GET /healthz ")
        assert 1 <= probes <= 2, f"{probes} upstream probes for 30 /healthz calls"
        page = cache.get("/")[1].decode()
        assert format_fingerprint(key.key_id) in page and "role: cache" in page
        assert f"{origin.url}/ &middot; reachable" in page

        origin.stop()  # the WAN breaks
        doc = poll(cache, "degraded")
        assert doc["status"] == "degraded", doc
        assert doc["upstream"]["reachable"] is False and doc["upstream"]["error"]
        assert len(doc["reasons"]) == 1 and doc["reasons"][0].startswith("upstream unreachable")
        assert doc["key_fingerprint"] == key.key_id  # still known, still pinnable
        page = cache.get("/")[1].decode()
        assert "<b>degraded</b>" in page and "UNREACHABLE" in page
        assert format_fingerprint(key.key_id) in page
        # A degraded cache keeps serving what it holds.
        assert cache.get("/keys/repository.gpg")[0] == 200
    finally:
        cache.stop()
        origin.stop()
    log = (tmp_path / "cache.log").read_text()
    assert log.count("upstream unreachable") + log.count(f"upstream {origin.url}/:") == 1, \
        "one warning when the upstream goes away, not one per probe"
