"""A region of three real sibling cache nodes behind a real HAProxy (configured by
`distro-sync lb-config`) in front of an origin, with 20 real apt-get sites going through the
front: every artifact crosses the WAN once; `kill -9` of a sibling mid-install leaves every
site complete and sends only that sibling's share across the WAN again; the sibling comes back
and its share is served by it again, from its store."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distro.debian_repo import parse_packages
from distro.wire import PlanArtifact
from syncer.demo.sample_repo import SampleAptRepo
from syncer.inventory import Region, load_inventory
from syncer.siblings import SiblingMap, apt_quote, client_path
from tests.plugin.haproxy import HaproxyProcess, ask_front, free_port, require_haproxy
from tests.plugin.support import AptRoot, NodeProcess, sha256_file

pytestmark = pytest.mark.integration

DISTRO_SYNC = str(Path(sys.executable).parent / "distro-sync")
SITES = 20


@dataclass
class Tier:
    region: Region
    nodes: dict[str, NodeProcess]  # sibling name -> node
    front: HaproxyProcess
    args: dict[str, list[str]]
    work: Path
    inventory: Path

    def restart(self, name: str) -> NodeProcess:
        sibling = next(s for s in self.region.siblings if s.name == name)
        node = NodeProcess(self.args[name], self.work / f"{name}.log",
                           listen=sibling.url.removeprefix("http://")).start()
        self.nodes[name] = node
        return node


@pytest.fixture
def tier(origin: NodeProcess, sample_apt: SampleAptRepo, tmp_path: Path) -> Iterator[Tier]:
    require_haproxy()
    top_package = sample_apt.top_package
    ports = [free_port() for _ in range(3)]
    front_port = free_port()
    inventory_path = tmp_path / "fleet.toml"
    inventory_path.write_text(
        f'origin = "{origin.url}"\n[regions.north]\nfront = "http://127.0.0.1:{front_port}"\n'
        f"siblings = [{', '.join(f'{chr(34)}http://127.0.0.1:{p}{chr(34)}' for p in ports)}]\n"
        "[regions.north.lb]\ncheck_interval = 0.3\n"
        f'[profiles.compute]\napt = {{ repo = "main", packages = ["{top_package}"] }}\n'
        '[sites.north-1]\nregion = "north"\nprofile = "compute"\n')
    region = load_inventory(inventory_path).regions["north"]
    config = tmp_path / "haproxy.cfg"
    written = subprocess.run([DISTRO_SYNC, "lb-config", str(inventory_path), "north", "-o",
                              str(config)], capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    nodes: dict[str, NodeProcess] = {}
    args = {s.name: ["--role", "cache", "--store", str(tmp_path / f"store-{i}"),
                     "--upstream", origin.url] for i, s in enumerate(region.siblings)}
    front = HaproxyProcess(config.read_text(), tmp_path / "front", front_port)
    t = Tier(region, nodes, front, args, tmp_path, inventory_path)
    try:
        for s in region.siblings:
            t.restart(s.name)
        front.start()
        front.wait_for(lambda st: all(st.values()))
        yield t
    finally:
        front.stop()
        for node in nodes.values():
            node.stop()


def pool_index(origin: NodeProcess) -> tuple[dict[str, str], dict[str, str]]:
    """(client path of every pool file -> its sha256, apt's archive file name -> sha256)."""
    status, body, _ = origin.get("/apt/main/dists/stable/main/binary-amd64/Packages")
    assert status == 200
    entries = parse_packages(body, "Packages")
    paths = {client_path(PlanArtifact("apt", "main", e.filename, e.sha256, e.size)): e.sha256
             for e in entries}
    # apt names a downloaded archive NAME_VERSION_ARCH.deb with the epoch colon as %3a
    names = {f"{e.package}_{e.version.replace(':', '%3a')}_{e.architecture}.deb": e.sha256
             for e in entries}
    return paths, names


def served_pool(node: NodeProcess) -> dict[str, int]:
    """Client path -> times served, of the pool files a node served (its counters hold
    decoded paths; apt sent them quoted)."""
    return {apt_quote(p): n for p, n in node.served().items() if "/pool/" in p}


def make_sites(tier: Tier, sample_apt: SampleAptRepo, work: Path) -> list[AptRoot]:
    sites = []
    for i in range(SITES):
        site = AptRoot(work / f"site{i:02d}", sample_apt.public_keyring)
        site.set_source(f"{tier.front.url}/apt/main")
        sites.append(site)
    return sites


def check_archives(sites: list[AptRoot], names: dict[str, str]) -> None:
    for site in sites:
        debs = site.archives()
        assert len(debs) >= 20
        for deb in debs:
            assert sha256_file(deb) == names[deb.name], deb


def test_siblings_behind_haproxy(tier: Tier, origin: NodeProcess, sample_apt: SampleAptRepo,
                                 tmp_path: Path) -> None:
    index, names = pool_index(origin)
    full = SiblingMap.of(tier.region)
    owner = {path: full.sibling_for(path).name for path in index}  # type: ignore[union-attr]

    # 1. Twenty cold sites at once: every artifact crosses the WAN exactly once, fetched by
    # the sibling the scheduler's mapping names; the suite's indexes are fetched once too.
    sites = make_sites(tier, sample_apt, tmp_path / "a")
    with concurrent.futures.ThreadPoolExecutor(SITES) as pool:
        list(pool.map(lambda s: s.run("update"), sites))
        list(pool.map(lambda s: s.run("install", "-y", "--download-only",
                                      sample_apt.top_package), sites))
    check_archives(sites, names)
    wan = origin.served()
    pool_wan = {p: n for p, n in wan.items() if "/pool/" in p}
    assert pool_wan and set(pool_wan.values()) == {1}, pool_wan
    assert max(n for p, n in wan.items() if "/dists/" in p) == 1
    for name, node in tier.nodes.items():
        mine = served_pool(node)
        assert mine and all(owner[p] == name for p in mine), (name, mine)
    fetched = {apt_quote(p) for p in pool_wan}

    # 2. Twenty more sites, downloading slowly; one sibling is killed while they install.
    victim = max(tier.nodes, key=lambda n: sum(1 for p in fetched if owner[p] == n))
    share = {p for p in fetched if owner[p] == victim}
    sites = make_sites(tier, sample_apt, tmp_path / "b")
    with concurrent.futures.ThreadPoolExecutor(SITES) as pool:
        list(pool.map(lambda s: s.run("update"), sites))
    before = sum(served_pool(tier.nodes[victim]).values())
    slow = ["-o", "Acquire::Retries=8", "-o", "Acquire::http::Dl-Limit=300"]
    installs = [s.popen(*slow, "install", "-y", "--download-only", sample_apt.top_package)
                for s in sites]
    try:
        deadline = time.monotonic() + 120
        while sum(served_pool(tier.nodes[victim]).values()) == before:
            assert time.monotonic() < deadline, "no site asked the victim for anything"
            time.sleep(0.05)
        tier.nodes[victim].kill9()
        assert any(p.poll() is None for p in installs), "every install finished before the kill"
        outputs = [p.communicate(timeout=300)[0] for p in installs]
    finally:
        for p in installs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in installs), next(
        o for p, o in zip(installs, outputs, strict=True) if p.returncode)
    check_archives(sites, names)
    wan_b = {apt_quote(p): n for p, n in origin.served().items() if "/pool/" in p}
    again = {p for p, n in wan_b.items() if n > 1}
    assert again, "none of the victim's share was needed again after the kill"
    assert again <= share, f"crossed again outside the victim's share: {again - share}"
    assert max(wan_b.values()) == 2, wan_b  # once to the victim, once to its share's new owner
    assert tier.front.status()[victim] is False
    reduced = SiblingMap.of(tier.region, down=[victim])
    for name, node in tier.nodes.items():
        if name != victim:
            new = {p for p in served_pool(node) if owner[p] != name}
            assert new <= share and all(reduced.sibling_for(p).name == name  # type: ignore[union-attr]
                                        for p in new)

    # 3. The sibling comes back with its store: its share maps back to it and is served from
    # what it holds, without the WAN.
    tier.restart(victim)
    tier.front.wait_for(lambda st: all(st.values()))
    by_front = ask_front(tier.front.port, sorted(fetched))
    assert by_front == {p: owner[p] for p in fetched}
    assert {apt_quote(p): n for p, n in origin.served().items() if "/pool/" in p} == wan_b


def test_push_prewarms_each_sibling_with_what_the_front_sends_it(
        tier: Tier, origin: NodeProcess, sample_apt: SampleAptRepo, tmp_path: Path) -> None:
    index, names = pool_index(origin)
    push = subprocess.run([DISTRO_SYNC, "push", str(tier.inventory), "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert push.returncode == 0, push.stdout + push.stderr
    rows = json.loads(push.stdout)
    assert {r["role"] for r in rows} == {"sibling"} and len(rows) == 3
    pushed = {apt_quote(p) for p, n in origin.served().items() if "/pool/" in p and n == 1}
    assert pushed and all(n == 1 for p, n in origin.served().items() if "/pool/" in p)
    full = SiblingMap.of(tier.region)
    by_url = {r["node"]: r for r in rows}
    for sibling in tier.region.siblings:  # each got its share and nothing else
        share = sum(1 for p in pushed if full.sibling_for(p) == sibling)
        assert by_url[sibling.url]["total"] == share and by_url[sibling.url]["state"] == \
            "complete"
    # Sites through the front now find every artifact on the sibling it is sent to: nothing
    # more crosses the WAN.
    sites = make_sites(tier, sample_apt, tmp_path / "sites")[:5]
    with concurrent.futures.ThreadPoolExecutor(len(sites)) as pool:
        list(pool.map(lambda s: (s.run("update"), s.run(
            "install", "-y", "--download-only", sample_apt.top_package)), sites))
    check_archives(sites, names)
    assert all(n == 1 for p, n in origin.served().items() if "/pool/" in p)
    status = subprocess.run([DISTRO_SYNC, "status", str(tier.inventory)], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert status.returncode == 0, status.stdout + status.stderr
    line = next(line for line in status.stdout.splitlines() if "north" in line)
    assert "3/3 siblings up" in line and "3 complete" in line
