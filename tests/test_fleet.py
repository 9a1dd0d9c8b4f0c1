"""distro-sync plan/push/status against an origin and two regions of parent + child caches,
then 10 real apt-get sites and pip downloads per region."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.support import AptRoot, NodeProcess

pytestmark = pytest.mark.integration

DISTRO_SYNC = str(Path(sys.executable).parent / "distro-sync")
SITES_PER_REGION = 10


@pytest.fixture
def fleet(origin: NodeProcess, tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    nodes: dict[str, NodeProcess] = {}
    try:
        for region in ("north", "south"):
            parent = NodeProcess(["--role", "cache", "--store", str(tmp_path / f"{region}-p"),
                                  "--upstream", origin.url], tmp_path / f"{region}-p.log").start()
            nodes[f"{region}-parent"] = parent
            child = NodeProcess(["--role", "cache", "--store", str(tmp_path / f"{region}-c"),
                                 "--upstream", parent.url], tmp_path / f"{region}-c.log").start()
            nodes[f"{region}-child"] = child
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def write_inventory(path: Path, origin: NodeProcess, nodes: dict[str, NodeProcess],
                    top_package: str) -> Path:
    lines = [f'origin = "{origin.url}"', ""]
    for region in ("north", "south"):
        lines += [f"[regions.{region}]", f'parent = "{nodes[region + "-parent"].url}"',
                  f'children = ["{nodes[region + "-child"].url}"]', "concurrency = 4", ""]
    lines += ["[profiles.compute]",
              f'apt = {{ repo = "main", suite = "stable", packages = ["{top_package}"] }}',
              'pip = { index = "local", requirements = ["edge-agent"] }', ""]
    for region in ("north", "south"):
        for i in range(SITES_PER_REGION):
            lines += [f"[sites.{region}-{i:02d}]", f'region = "{region}"', 'profile = "compute"', ""]
    path.write_text("\n".join(lines))
    return path


def distro_sync(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DISTRO_SYNC, *args], capture_output=True, text=True, timeout=300)


def pip_download(index_url: str, out: Path) -> list[Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", NO_PROXY="127.0.0.1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
                           "--index-url", index_url, "-d", str(out), "edge-agent"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return sorted(out.iterdir())


def _install(root: AptRoot, package: str) -> list[Path]:
    """One site: apt-get update and install --download-only; the archives it downloaded."""
    root.run("update")
    root.run("install", "-y", "--download-only", package)
    return root.archives()


def test_plan_push_then_sites_install_once_per_region(
        origin: NodeProcess, fleet: dict[str, NodeProcess], sample_apt: SampleAptRepo,
        wheel_dir: Path, tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "fleet.toml", origin, fleet, sample_apt.top_package)
    plan = distro_sync("plan", str(inventory), "--format", "json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    regions = json.loads(plan.stdout)
    assert {r["region"] for r in regions} == {"north", "south"}
    n_artifacts = regions[0]["artifacts"]
    assert n_artifacts >= 20 and all(v == 0 for v in regions[0]["cached_bytes"].values())
    push = distro_sync("push", str(inventory), "--format", "json")
    assert push.returncode == 0, push.stdout + push.stderr
    pushed = json.loads(push.stdout)
    assert len(pushed) == 4 and all(p["state"] == "complete" for p in pushed)
    assert all(p["done"] == n_artifacts for p in pushed)
    # The origin served every artifact exactly once per region parent: twice in all, and
    # children fetched from their parents only.
    served = origin.served()
    # (.metadata files are also read by the planner's own pip resolver, hence excluded here.)
    artifacts = {p: n for p, n in served.items()
                 if ("/pool/" in p or "/files/" in p) and not p.endswith(".metadata")}
    assert artifacts and set(artifacts.values()) == {2}, artifacts
    after_push = {p: n for p, n in served.items() if "/pool/" in p or "/files/" in p}
    for region in ("north", "south"):
        parent_served = fleet[f"{region}-parent"].served()
        child_artifacts = {p: n for p, n in parent_served.items()
                           if "/pool/" in p or "/files/" in p}
        assert child_artifacts and set(child_artifacts.values()) == {1}
    # Now 10 sites per region install in parallel (half through the child).
    originals = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wheel_dir.iterdir()}
    jobs = []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for region in ("north", "south"):
            for i in range(SITES_PER_REGION):
                node = fleet[f"{region}-{'child' if i % 2 else 'parent'}"]
                root = AptRoot(tmp_path / "sites" / f"{region}{i}", sample_apt.public_keyring)
                root.set_source(f"{node.url}/apt/main")
                jobs.append(pool.submit(_install, root, sample_apt.top_package))
                if i < 2:
                    jobs.append(pool.submit(pip_download, f"{node.url}/pypi/local/simple/",
                                            tmp_path / "pip" / f"{region}{i}"))
        results = [j.result() for j in jobs]
    for files in results:
        assert files
        for f in files:
            if f.suffix == ".whl":
                assert hashlib.sha256(f.read_bytes()).hexdigest() == originals[f.name]
    after = {p: n for p, n in origin.served().items() if "/pool/" in p or "/files/" in p}
    assert after == after_push, "site installs after the push crossed the WAN again"
    status = distro_sync("status", str(inventory), "--format", "json")
    assert status.returncode == 0, status.stdout
    assert all(s["state"] == "complete" for s in json.loads(status.stdout))


def test_sync_refreshes_indexes_by_delta(
        origin: NodeProcess, fleet: dict[str, NodeProcess], sample_apt: SampleAptRepo,
        tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "fleet.toml", origin, fleet, sample_apt.top_package)
    for node in fleet.values():  # the sites' first apt-get update
        assert node.get("/apt/main/dists/stable/InRelease")[0] == 200
        assert node.get("/apt/main/dists/stable/main/binary-amd64/Packages.xz")[0] == 200
    proc = distro_sync("sync", str(inventory), "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 4 and all(r["kind"] == "apt" and not r["changed"] for r in rows)


def test_status_reports_a_down_node(origin: NodeProcess, fleet: dict[str, NodeProcess],
                                    sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    inventory = write_inventory(tmp_path / "fleet.toml", origin, fleet, sample_apt.top_package)
    fleet["south-child"].stop()
    status = distro_sync("status", str(inventory), "--format", "json")
    assert status.returncode == 1
    states = {s["node"]: s["state"] for s in json.loads(status.stdout)}
    assert "unreachable" in states.values()


def test_inventory_errors_are_clear(origin: NodeProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'origin = "{origin.url}"\n[regions.north]\nparent = "{origin.url}"\n'
                   '[profiles.compute]\napt = { packages = ["edge-compute-nod"] }\n'
                   '[sites.s1]\nregion = "nort"\nprofile = "compute"\n')
    proc = distro_sync("plan", str(bad))
    assert proc.returncode == 2 and "unknown region 'nort'" in proc.stdout + proc.stderr
    assert "north" in proc.stdout + proc.stderr
    bad.write_text(f'origin = "{origin.url}"\n[regions.north]\nparent = "{origin.url}"\n'
                   '[profiles.compute]\napt = { packages = ["edge-compute-nod"] }\n'
                   '[sites.s1]\nregion = "north"\nprofile = "compute"\n')
    proc = distro_sync("plan", str(bad), "--offline")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "edge-compute-nod" in out and "edge-compute-node" in out


def test_parent_killed_mid_push_resumes_without_refetching(
        origin: NodeProcess, sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    store = tmp_path / "p"
    args = ["--role", "cache", "--store", str(store), "--upstream", origin.url]
    parent = NodeProcess(args, tmp_path / "p.log").start()
    inventory = tmp_path / "fleet.toml"

    def write(url: str) -> None:
        inventory.write_text(
            f'origin = "{origin.url}"\n[regions.west]\nparent = "{url}"\nconcurrency = 1\n'
            'bandwidth = "1500000"\n[profiles.compute]\n'
            f'apt = {{ repo = "main", suite = "stable", packages = ["{sample_apt.top_package}"] }}\n'
            '[sites.w1]\nregion = "west"\nprofile = "compute"\n')

    write(parent.url)
    try:
        push = distro_sync("push", str(inventory), "--no-wait", "--format", "json")
        assert push.returncode == 0, push.stdout + push.stderr
        time.sleep(1.5)
        parent.kill9()
        status = distro_sync("status", str(inventory), "--format", "json")
        assert status.returncode == 1
        assert [s["state"] for s in json.loads(status.stdout)] == ["unreachable"]
        parent = NodeProcess(args, tmp_path / "p.log").start()  # same store, new port
        write(parent.url)
        push = distro_sync("push", str(inventory), "--format", "json")
        assert push.returncode == 0, push.stdout + push.stderr
        final = json.loads(push.stdout)
        assert final[0]["state"] == "complete" and final[0]["done"] == final[0]["total"]
        pool = {p: n for p, n in origin.served().items() if "/pool/" in p}
        assert len(pool) == final[0]["total"]
        assert sum(1 for n in pool.values() if n > 1) <= 1, "only the one in flight at the kill"
    finally:
        parent.stop()
