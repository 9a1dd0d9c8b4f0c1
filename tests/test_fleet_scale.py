"""distro-sync plan/push/status/sync against a fleet of 200 nodes (fake nodes speaking the real
node API, one thread) in 20 regions: 10 parent/child trees and 10 sibling tiers behind fronts.
Calls fan out concurrently within --connections, every node gets what it should (siblings:
exactly the share their front sends them), and status stays one line per region."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncer.demo.sample_repo import SampleAptRepo
from syncer.inventory import load_inventory
from syncer.siblings import SiblingMap, client_path
from tests.plugin.fake_fleet import FakeFleet, FakeNode
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

DISTRO_SYNC = str(Path(sys.executable).parent / "distro-sync")
TREES, TIERS, PER_REGION = 10, 10, 10
CONNECTIONS = 16


def region_block(lines: list[str], region: str) -> tuple[str, str]:
    """A region's row of the summary table, and its problems (the indented lines under it)."""
    i = next(k for k, line in enumerate(lines) if line.startswith(region + " "))
    notes = []
    for line in lines[i + 1:]:
        if not line.startswith(" "):
            break
        notes.append(line.strip())
    return lines[i], " ".join(notes)


def distro_sync(*args: str) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = subprocess.run([DISTRO_SYNC, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "250"})
    print(f"distro-sync {args[0]}: {time.monotonic() - start:.1f}s")  # shown with -s, never asserted
    return proc


@pytest.fixture
def fleet() -> Iterator[FakeFleet]:
    fake = FakeFleet(TREES * PER_REGION + TIERS * PER_REGION)
    nodes = list(fake.nodes.values())
    for r in range(TIERS):
        names = {f"127.0.0.1:{n.port}": True
                 for n in nodes[(TREES + r) * PER_REGION:(TREES + r + 1) * PER_REGION]}
        if r == 0:  # the first tier's front has one sibling down
            names[next(iter(names))] = False
        fake.add_front(f"tier{r:02d}", names)
    fake.start()
    yield fake
    fake.stop()


def write_inventory(path: Path, origin: NodeProcess, fleet: FakeFleet, top_package: str) -> Path:
    nodes = list(fleet.nodes.values())
    fronts = list(fleet.fronts.values())
    lines = [f'origin = "{origin.url}"', ""]
    for r in range(TREES):
        mine = nodes[r * PER_REGION:(r + 1) * PER_REGION]
        lines += [f"[regions.tree{r:02d}]", f'parent = "{mine[0].url}"',
                  f"children = {json.dumps([n.url for n in mine[1:]])}", ""]
    for r in range(TIERS):
        mine = nodes[(TREES + r) * PER_REGION:(TREES + r + 1) * PER_REGION]
        lines += [f"[regions.tier{r:02d}]", f'front = "{fronts[r].url}"',
                  f"siblings = {json.dumps([n.url for n in mine])}", ""]
    lines += ["[profiles.compute]",
              f'apt = {{ repo = "main", suite = "stable", packages = ["{top_package}"] }}', ""]
    for region in [f"tree{r:02d}" for r in range(TREES)] + [f"tier{r:02d}" for r in range(TIERS)]:
        lines += [f"[sites.{region}-site]", f'region = "{region}"', 'profile = "compute"', ""]
    path.write_text("\n".join(lines))
    return path


def puts(node: FakeNode) -> list[str]:
    return [p for m, p in node.requests if m == "PUT"]


def test_two_hundred_nodes(origin: NodeProcess, fleet: FakeFleet, sample_apt: SampleAptRepo,
                           tmp_path: Path) -> None:
    path = write_inventory(tmp_path / "fleet.toml", origin, fleet, sample_apt.top_package)
    inventory = load_inventory(path)
    nodes = list(fleet.nodes.values())
    down_child = nodes[3 * PER_REGION + 4]  # a child of tree03
    fleet.take_down(down_child)
    down_sibling = inventory.regions["tier00"].siblings[0]

    plan = distro_sync("plan", str(path), "--format", "json", "--connections", str(CONNECTIONS))
    assert plan.returncode == 0, plan.stderr
    plans = {p["region"]: p for p in json.loads(plan.stdout)}
    assert len(plans) == TREES + TIERS
    assert sum(len(p["nodes"]) for p in plans.values()) == len(nodes)
    assert 2 <= fleet.max_in_flight <= CONNECTIONS

    fleet.max_in_flight = 0
    push = distro_sync("push", str(path), "--format", "json", "--connections", str(CONNECTIONS))
    assert push.returncode == 1, push.stderr  # a node is down
    rows = {r["node"]: r for r in json.loads(push.stdout)}
    assert 2 <= fleet.max_in_flight <= CONNECTIONS
    assert rows[down_child.url]["state"] == "unreachable"
    assert rows[down_sibling.url]["state"] == "not pushed"
    assert rows[down_sibling.url]["front_up"] is False
    others = [r for n, r in rows.items() if n not in (down_child.url, down_sibling.url)]
    assert len(others) == len(nodes) - 2
    # (a sibling of a small plan may have no share: nothing is pushed to it)
    empty = {r["node"] for r in others if r["state"] == "not pushed"
             and r["error"] == "no artifact of this plan maps to it" and r["role"] == "sibling"}
    assert all(r["state"] == "complete" for r in others if r["node"] not in empty)
    # Trees: every live node got the whole plan once. Tiers: each live sibling got exactly the
    # artifacts its front sends to it, and together they hold the plan.
    for r in range(TREES):
        for node in nodes[r * PER_REGION:(r + 1) * PER_REGION]:
            if node is not down_child:
                assert puts(node) == [f"/admin/plans/{plans[f'tree{r:02d}']['plan_id']}"]
                held = next(iter(node.plans.values())).spec.artifacts
                assert len(held) == plans[f"tree{r:02d}"]["artifacts"]
    by_port = {n.url: n for n in nodes}
    for r in range(TIERS):
        region = inventory.regions[f"tier{r:02d}"]
        down = [down_sibling.name] if r == 0 else []
        expected = SiblingMap.of(region, down)
        covered = []
        for sibling in region.siblings:
            node = by_port[sibling.url]
            if sibling.name in down:
                assert not puts(node)
                continue
            assert len(puts(node)) == (0 if sibling.url in empty else 1)
            for spec in (p.spec for p in node.plans.values()):
                for artifact in spec.artifacts:
                    assert expected.sibling_for(client_path(artifact)) == sibling
                    covered.append(artifact.path)
        assert sorted(covered) == sorted(i["path"] for i in plans[region.name]["items"])

    status = distro_sync("status", str(path), "--connections", str(CONNECTIONS))
    assert status.returncode == 1  # the down node, the down sibling
    lines = status.stdout.splitlines()
    assert len(lines) < 60, status.stdout  # one line per region, not per node
    assert down_sibling.url not in status.stdout
    tree03, tier00 = region_block(lines, "tree03"), region_block(lines, "tier00")
    assert "9/10" in tree03[0] and "unreachable" in tree03[1] and down_child.url in tree03[1]
    assert "9/10 siblings up" in tier00[0]
    assert f"front routes around {down_sibling.name}" in tier00[1]
    assert all("10/10" in line for line in lines if "tree0" in line and "tree03" not in line)

    details = distro_sync("status", str(path), "--details")
    assert all(n.url in details.stdout for n in nodes)
    one = distro_sync("status", str(path), "--region", "tier00", "--format", "json")
    region_rows = json.loads(one.stdout)
    assert {r["region"] for r in region_rows} == {"tier00"} and len(region_rows) == PER_REGION
    assert [r["front_up"] for r in region_rows].count(False) == 1

    fleet.max_in_flight = 0
    sync = distro_sync("sync", str(path), "--format", "json", "--connections", str(CONNECTIONS))
    assert sync.returncode == 1  # the down node
    synced = json.loads(sync.stdout)
    assert len(synced) == len(nodes)
    assert 2 <= fleet.max_in_flight <= CONNECTIONS
    for r in range(TREES):  # a parent is refreshed before its children start
        parent, *children = nodes[r * PER_REGION:(r + 1) * PER_REGION]
        assert parent.refreshed is not None
        for child in children:
            if child is not down_child:
                assert child.refreshed is not None and child.refreshed[0] >= parent.refreshed[1]
