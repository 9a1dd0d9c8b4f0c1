"""Prefetch plans on a node: ordered pull, pins, status, idempotence, resume after kill -9."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from distro.debian_repo import parse_packages
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration


def pool_plan(origin: NodeProcess, plan_id: str, **extra: Any) -> dict[str, Any]:
    status, body, _ = origin.get("/apt/main/dists/stable/main/binary-amd64/Packages")
    assert status == 200
    entries = parse_packages(body, "Packages")
    return {"plan_id": plan_id, **extra, "artifacts": [
        {"kind": "apt", "repo": "main", "path": e.filename, "sha256": e.sha256, "size": e.size}
        for e in entries]}


def put(node: NodeProcess, path: str, document: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(node.url + path, data=json.dumps(document).encode(),
                                 method="PUT", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_plan(node: NodeProcess, plan_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, _ = node.get(f"/admin/plans/{plan_id}")
        assert status == 200, body
        doc = json.loads(body)
        if doc["state"] != "active":
            return dict(doc)
        time.sleep(0.2)
    raise AssertionError(f"plan {plan_id} still active after {timeout}s")


def test_plan_prefetches_everything_once_then_sites_hit(
        origin: NodeProcess, cache: NodeProcess) -> None:
    plan = pool_plan(origin, "compute-1")
    status, doc = put(cache, "/admin/plans/compute-1", plan)
    assert status == 202 and doc["total"] == len(plan["artifacts"])
    done = wait_plan(cache, "compute-1")
    assert done["state"] == "complete" and done["done"] == done["total"]
    assert done["bytes_done"] == sum(a["size"] for a in plan["artifacts"])
    served = origin.served()
    pool = {p: n for p, n in served.items() if "/pool/" in p}
    assert len(pool) == len(plan["artifacts"]) and set(pool.values()) == {1}
    # A site now installs: every pool file is a hit, nothing more crosses the WAN.
    for artifact in plan["artifacts"]:
        status, _, headers = cache.get(f"/apt/main/{artifact['path']}")
        assert status == 200 and headers["X-Edgedepot-Cache"] == "HIT"
    assert {p: n for p, n in origin.served().items() if "/pool/" in p} == pool
    # Pushing the same plan again is idempotent: nothing is fetched again.
    status, doc = put(cache, "/admin/plans/compute-1", plan)
    assert status == 202
    assert wait_plan(cache, "compute-1")["state"] == "complete"
    assert {p: n for p, n in origin.served().items() if "/pool/" in p} == pool
    status, body, _ = cache.get("/")
    assert b"compute-1" in body


def test_bad_artifacts_fail_with_reasons(origin: NodeProcess, cache: NodeProcess) -> None:
    plan = pool_plan(origin, "broken")
    plan["artifacts"] = plan["artifacts"][:2]
    plan["artifacts"][0]["sha256"] = "0" * 64
    plan["artifacts"].append({"kind": "apt", "repo": "main", "path": "pool/main/n/nope.deb",
                              "sha256": "1" * 64, "size": 10})
    put(cache, "/admin/plans/broken", plan)
    doc = wait_plan(cache, "broken", timeout=90)
    assert doc["state"] == "failed" and doc["failed"] == 2 and doc["done"] == 1
    reasons = " ".join(f["error"] for f in doc["failures"])
    assert "sha256" in reasons and "404" in reasons or "not" in reasons


def test_invalid_plan_documents_are_rejected(cache: NodeProcess) -> None:
    for doc in ({"plan_id": "x", "artifacts": "no"},
                {"plan_id": "x", "artifacts": [{"kind": "apt", "repo": "m", "path": "../e",
                                                "sha256": "a" * 64, "size": 1}]},
                {"plan_id": "x", "artifacts": [{"kind": "rpm", "repo": "m", "path": "p",
                                                "sha256": "a" * 64, "size": 1}]},
                {"plan_id": "y", "artifacts": []}):
        status, body = put(cache, "/admin/plans/x", doc)
        assert status == 400, body


def test_killed_node_resumes_plan_without_refetching(
        origin: NodeProcess, tmp_path: Path) -> None:
    store = tmp_path / "c"
    args = ["--role", "cache", "--store", str(store), "--upstream", origin.url]
    node = NodeProcess(args, tmp_path / "c.log").start()
    plan = pool_plan(origin, "slow", bandwidth=1_500_000, concurrency=1)
    put(node, "/admin/plans/slow", plan)
    time.sleep(1.5)
    partial = json.loads(node.get("/admin/plans/slow")[1])
    assert 0 < partial["done"] < partial["total"]
    node.kill9()
    node = NodeProcess(args, tmp_path / "c.log").start()
    try:
        done = wait_plan(node, "slow", timeout=60)
        assert done["state"] == "complete" and done["done"] == done["total"]
        pool = {p: n for p, n in origin.served().items() if "/pool/" in p}
        assert len(pool) == len(plan["artifacts"])
        assert sum(1 for n in pool.values() if n > 1) <= 1, "at most the one in flight at the kill"
    finally:
        node.stop()


def test_plan_prefetches_images_through_glance(tmp_path: Path) -> None:
    from distro.wire import plan_to_json
    from syncer.demo.images import build_image_pair
    from syncer.inventory import parse_inventory
    from syncer.planner import plan_regions

    v1, v2 = build_image_pair(tmp_path / "images", size=2 << 20)
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"), "--images",
                          str(tmp_path / "images")], tmp_path / "o.log").start()
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         origin.url], tmp_path / "c.log").start()
    try:
        inventory = parse_inventory({
            "origin": origin.url, "regions": {"r": {"parent": cache.url}},
            "profiles": {"p": {"images": [v1, v2]}},
            "sites": {"s": {"region": "r", "profile": "p"}}})
        [plan] = plan_regions(inventory, tmp_path / "work")
        assert [a.kind for a in plan.spec.artifacts] == ["glance", "glance"]
        status, doc = put(cache, f"/admin/plans/{plan.spec.plan_id}",
                          json.loads(plan_to_json(plan.spec)))
        assert status == 202
        done = wait_plan(cache, plan.spec.plan_id)
        assert done["state"] == "complete" and done["done"] == 2, done
        before = origin.served()
        for artifact in plan.spec.artifacts:
            status, body, _ = cache.get(f"/glance/v2/images/{artifact.path}/file")
            assert status == 200
            import hashlib
            assert hashlib.sha256(body).hexdigest() == artifact.sha256
        assert origin.served() == before, "pre-warmed images are served without the WAN"
    finally:
        cache.stop()
        origin.stop()


def test_bandwidth_caps_every_byte_and_progress_counts_bytes(tmp_path: Path) -> None:
    """A plan's bandwidth is a rate limit on the bytes of its transfers, not a pause between
    artifacts: one 3 MiB package under a 1 MiB/s cap takes about 3 s, and while it downloads
    the plan reports bytes done before any artifact is done. (The upper bound on the rate is
    what the cap promises; how close it comes to the cap is measured, not asserted.)"""
    from syncer.demo.sample_repo import SampleDeb, build_deb

    debs = tmp_path / "debs"
    build_deb(SampleDeb("big-one", "1.0", "amd64", (), (), (), (), 3 << 20, "big"), debs,
              seed=3, compression="none")
    origin = NodeProcess(["--role", "origin", "--store", str(tmp_path / "o"),
                          "--apt", f"main={debs}"], tmp_path / "o.log").start()
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"),
                         "--upstream", origin.url], tmp_path / "c.log").start()
    try:
        cap = 1 << 20
        plan = pool_plan(origin, "capped", bandwidth=cap, concurrency=1)
        size = plan["artifacts"][0]["size"]
        started = time.monotonic()
        assert put(cache, "/admin/plans/capped", plan)[0] == 202
        partial_seen = False
        while time.monotonic() - started < 60:
            doc = json.loads(cache.get("/admin/plans/capped")[1])
            if doc["state"] != "active":
                break
            partial_seen |= doc["done"] == 0 and 0 < doc["bytes_done"] < size
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        assert doc["state"] == "complete" and doc["bytes_done"] == size
        assert partial_seen, "no byte-level progress while the artifact downloaded"
        assert size / elapsed <= 1.1 * cap, f"{size / elapsed:.0f} B/s exceeds the cap"
    finally:
        cache.stop()
        origin.stop()
