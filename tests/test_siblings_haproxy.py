"""The scheduler's consistent-hash mapping is HAProxy's: every path sent through a real HAProxy
(configured by `lb-config`) lands on the sibling `SiblingMap` names, for each hash function,
with a sibling down (only its share moves) and back (its share returns)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from distro.wire import PlanArtifact, PlanSpec
from syncer.chash import HashSpec
from syncer.inventory import Region, parse_inventory
from syncer.siblings import SiblingMap, apt_quote, client_path, haproxy_config, split_plan
from tests.plugin.haproxy import (
    HaproxyProcess,
    StubSiblings,
    ask_front,
    check_config,
    free_port,
    require_haproxy,
)

pytestmark = pytest.mark.integration


def region_of(ports: list[int], front_port: int, hash_spec: str = "sdbm avalanche") -> Region:
    """Three siblings: one named, with a pinned id and a small weight, one with defaults, one heavy."""
    tree = {
        "origin": "http://127.0.0.1:1",
        "regions": {"north": {
            "front": f"http://127.0.0.1:{front_port}",
            "siblings": [
                {"url": f"http://127.0.0.1:{ports[0]}", "name": "north-a", "id": 7, "weight": 10},
                f"http://127.0.0.1:{ports[1]}",
                {"url": f"http://127.0.0.1:{ports[2]}", "weight": 256},
            ],
            "lb": {"hash": hash_spec, "check_interval": 0.2},
        }},
    }
    return parse_inventory(tree).regions["north"]


def sample_paths(seed: int = 11, n: int = 500) -> list[str]:
    """Request paths as clients send them: apt pool files (quoted like apt), apt indexes of
    several suites (by-hash too), pip files, images, and odd bytes and query strings."""
    rng = random.Random(seed)
    paths = []
    for i in range(n):
        name = f"lib{rng.choice(['ssl', 'xml', 'nova', 'qemu'])}{i}"
        version = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}" + rng.choice(
            ["", "+dfsg", "~deb12u1", "+b1~rc 2", "-1"])
        paths.append(f"/apt/main/{apt_quote(f'pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb')}")
    for repo in ("main", "debian", "security"):
        for suite in ("stable", "bookworm", "bookworm-updates"):
            base = f"/apt/{repo}/dists/{suite}"
            paths += [f"{base}/InRelease", f"{base}/Release",
                      f"{base}/main/binary-amd64/Packages.xz",
                      f"{base}/main/binary-amd64/by-hash/SHA256/{rng.randbytes(32).hex()}"]
    for i in range(100):
        paths.append(f"/pypi/local/files/edge-agent{i}/edge_agent{i}-2.0%2Blocal-py3-none-any.whl")
        paths.append(f"/glance/v2/images/{uuid.UUID(int=rng.getrandbits(128))}/file")
    for _ in range(100):
        raw = "".join(f"%{b:02x}" if rng.random() < 0.3 else chr(0x61 + b % 26)
                      for b in rng.randbytes(rng.randint(0, 40)))
        paths.append(f"/{raw}" + rng.choice(["", "?x=1", "?", "/a?b=/c"]))
    return paths


@pytest.fixture
def stubs() -> Iterator[StubSiblings]:
    require_haproxy()
    siblings = StubSiblings(3).start()
    yield siblings
    siblings.stop()


@pytest.mark.parametrize("hash_spec", ["sdbm avalanche", "sdbm", "djb2", "djb2 avalanche",
                                       "wt6", "crc32 avalanche"])
def test_every_path_lands_where_the_scheduler_computes(
        stubs: StubSiblings, tmp_path: Path, hash_spec: str) -> None:
    front_port = free_port()
    region = region_of(stubs.ports, front_port, hash_spec)
    assert region.front is not None and region.front.hash == HashSpec.parse(hash_spec)
    expected = SiblingMap.of(region)
    paths = sample_paths()
    with HaproxyProcess(haproxy_config(region), tmp_path, front_port) as front:
        front.wait_for(lambda s: all(s.values()))
        served = ask_front(front.port, paths)
    wrong = {p: (served[p], expected.sibling_for(p)) for p in paths
             if served[p] != getattr(expected.sibling_for(p), "name", None)}
    assert not wrong, f"{len(wrong)} of {len(paths)} paths differ: {list(wrong.items())[:5]}"
    # Every sibling got some of it, and a suite's indexes all went to one sibling.
    assert set(served.values()) == {s.name for s in region.siblings}
    suite = {served[p] for p in paths if p.startswith("/apt/main/dists/stable/")}
    assert len(suite) == 1


def test_a_sibling_down_moves_only_its_share_and_back(stubs: StubSiblings, tmp_path: Path) -> None:
    front_port = free_port()
    region = region_of(stubs.ports, front_port)
    paths = sample_paths(seed=5)
    full = SiblingMap.of(region)
    victim = region.siblings[1]
    with HaproxyProcess(haproxy_config(region), tmp_path, front_port) as front:
        front.wait_for(lambda s: all(s.values()))
        before = ask_front(front.port, paths)
        stubs.close(stubs.ports[1])
        front.wait_for(lambda s: not s[victim.name])
        during = ask_front(front.port, paths)
        stubs.reopen(stubs.ports[1])
        front.wait_for(lambda s: all(s.values()))
        after = ask_front(front.port, paths)
        # With one sibling left HAProxy stops hashing; everything goes to it.
        stubs.close(stubs.ports[0])
        stubs.close(stubs.ports[1])
        front.wait_for(lambda s: list(s.values()).count(True) == 1)
        last = ask_front(front.port, paths[:50])
    reduced = SiblingMap.of(region, down=[victim.name])
    assert before == {p: full.sibling_for(p).name for p in paths}  # type: ignore[union-attr]
    assert during == {p: reduced.sibling_for(p).name for p in paths}  # type: ignore[union-attr]
    moved = {p for p in paths if before[p] != during[p]}
    assert moved and moved == {p for p in paths if before[p] == victim.name}
    assert after == before
    assert set(last.values()) == {region.siblings[2].name}


def test_split_plan_gives_each_artifact_to_the_sibling_that_serves_it() -> None:
    region = region_of([8001, 8002, 8003], 8000)
    artifacts = tuple(PlanArtifact("apt", "main", f"pool/main/p/p{i}/p{i}_1.0+b{i}_all.deb",
                                   f"{i:064x}", 100 + i) for i in range(60))
    spec = PlanSpec("north-x", artifacts, 4, None)
    siblings = SiblingMap.of(region)
    shares = split_plan(spec, siblings)
    assert sorted(a.path for share in shares.values() for a in share.artifacts) == \
        sorted(a.path for a in artifacts)
    for name, share in shares.items():
        assert all(siblings.sibling_for(client_path(a)).name == name  # type: ignore[union-attr]
                   for a in share.artifacts)
        order = [artifacts.index(a) for a in share.artifacts]
        assert order == sorted(order)  # install order kept
    down = split_plan(spec, SiblingMap.of(region, down=[region.siblings[0].name]))
    assert region.siblings[0].name not in down
    assert split_plan(spec, siblings) == shares  # same ids: pushing again is idempotent


def test_generated_configs_pass_haproxy_check(tmp_path: Path) -> None:
    from tests.plugin.pki import write_cert_and_key
    cert, key = write_cert_and_key(tmp_path, "front")
    bundle = tmp_path / "front.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    tree = {"origin": "http://127.0.0.1:1", "regions": {
        "tls-region": {"front": "https://127.0.0.1:8443",
                       "siblings": ["https://localhost:8443", "https://[::1]:8444"],
                       "lb": {"hash": "wt6", "bind": "[::1]:8443"}},
        "plain": {"parent": "http://10.0.0.1:8080", "front": "http://10.0.0.2",
                  "siblings": ["http://10.0.0.3:8080"]}}}
    inventory = parse_inventory(tree)
    for name, region in inventory.regions.items():
        path = tmp_path / f"{name}.cfg"
        path.write_text(haproxy_config(region, ca_file=cert, cert=bundle if region.front and
                                       region.front.url.startswith("https") else None))
        checked = check_config(path)
        assert checked.returncode == 0, checked.stdout + checked.stderr
