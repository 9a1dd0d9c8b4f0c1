"""Sibling tiers in the inventory, and the consistent-hash ring's own properties (the ring's
agreement with a real HAProxy is tests/test_siblings_haproxy.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distro.wire import PlanArtifact
from syncer.chash import (
    HashSpec,
    Ring,
    RingServer,
    UriKey,
    full_hash,
    hash_crc32,
    hash_djb2,
    hash_sdbm,
    hash_wt6,
)
from syncer.inventory import InventoryError, parse_inventory
from syncer.siblings import apt_quote, client_path, front_status_body, haproxy_config


def inventory(region: dict[str, Any]) -> dict[str, Any]:
    return {"origin": "http://origin:8080", "regions": {"r": region}}


SIBS = ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"]


def test_siblings_parse_with_defaults_and_pins() -> None:
    region = parse_inventory(inventory({
        "front": "http://front.example", "siblings": [
            SIBS[0], {"url": SIBS[1], "name": "b", "id": 42, "weight": 7}]})).regions["r"]
    a, b = region.siblings
    assert (a.name, a.weight) == ("10.0.0.1:8080", 100) and a.id >= 1
    assert (b.name, b.id, b.weight) == ("b", 42, 7)
    assert region.parent is None and region.nodes == (SIBS[0], SIBS[1])
    assert region.front is not None and region.front.bind == "front.example:80"
    assert region.front.hash == HashSpec("sdbm", True)
    assert region.role_of(SIBS[0]) == "sibling"
    # ids come from names, not positions: reordering keeps every sibling's ring points
    again = parse_inventory(inventory({"front": "http://f", "siblings": SIBS[::-1]}))
    first = parse_inventory(inventory({"front": "http://f", "siblings": SIBS}))
    assert {s.name: s.id for s in again.regions["r"].siblings} == \
        {s.name: s.id for s in first.regions["r"].siblings}


def test_parent_children_regions_still_parse() -> None:
    region = parse_inventory(inventory({"parent": SIBS[0], "children": [SIBS[1]]})).regions["r"]
    assert region.nodes == (SIBS[0], SIBS[1]) and region.front is None and not region.siblings
    mixed = parse_inventory(inventory({"parent": SIBS[0], "front": "http://f",
                                       "siblings": SIBS[1:]})).regions["r"]
    assert mixed.nodes == tuple(SIBS) and mixed.role_of(SIBS[0]) == "parent"


@pytest.mark.parametrize("region, message", [
    ({"siblings": SIBS}, "regions.r.front: the URL sites use"),
    ({"front": "http://f"}, "regions.r.front: only for a region with siblings"),
    ({}, "regions.r: needs a parent or siblings"),
    ({"front": "http://f", "siblings": []}, "regions.r.siblings: a non-empty list"),
    ({"front": "http://f", "siblings": [SIBS[0], SIBS[0]]}, "url 'http://10.0.0.1:8080' is also"),
    ({"front": "http://f", "siblings": [{"url": SIBS[0], "name": "x"},
                                        {"url": SIBS[1], "name": "x"}]}, "name 'x' is also"),
    ({"front": "http://f", "siblings": [{"url": SIBS[0], "id": 5}, {"url": SIBS[1], "id": 5}]},
     "give one of them an explicit id"),
    ({"front": "http://f", "siblings": [{"url": SIBS[0], "weight": 0}]}, ".weight: an integer"),
    ({"front": "http://f", "siblings": [{"url": SIBS[0], "name": "a b"}]}, ".name: letters"),
    ({"front": "http://f", "siblings": [{"url": SIBS[0], "wieght": 1}]}, "unknown keys"),
    ({"front": "http://f", "siblings": SIBS, "lb": {"hash": "md5"}}, "lb.hash: hash function"),
    ({"front": "http://f", "siblings": SIBS, "lb": {"hash": "sdbm fast"}}, "only 'avalanche'"),
    ({"front": "http://f", "siblings": SIBS, "lb": {"bind": "nowhere"}}, "lb.bind: HOST:PORT"),
    ({"front": "http://f", "siblings": SIBS, "lb": {"check_interval": 0}}, "check_interval"),
    ({"children": [SIBS[0]], "front": "http://f", "siblings": SIBS[1:]}, "give one"),
    ({"parent": SIBS[0], "front": "http://f", "siblings": SIBS}, "named more than once"),
])
def test_sibling_mistakes_are_one_line(region: dict[str, Any], message: str) -> None:
    with pytest.raises(InventoryError, match=None) as info:
        parse_inventory(inventory(region))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_hash_functions_match_haproxy_reference_values() -> None:
    # HAProxy's functions on "/" and on a typical path, computed by hand from src/hash.c; the
    # ring as a whole is checked against a running HAProxy in test_siblings_haproxy.
    assert hash_sdbm(b"a") == 97 and hash_sdbm(b"ab") == (98 + 97 * 65599) & 0xFFFFFFFF
    assert hash_djb2(b"") == 5381 and hash_djb2(b"a") == 5381 * 33 + 97
    assert hash_crc32(b"123456789") == 0xCBF43926  # the standard CRC-32 check value
    assert hash_wt6(b"") == 0xA53C965A ^ 0x5CA6953A
    assert full_hash(0) != full_hash(1) and 0 <= full_hash(2**32 - 1) < 2**32


def test_uri_key_is_what_balance_uri_hashes() -> None:
    assert UriKey().key(b"/apt/x?y=1") == b"/apt/x"
    assert UriKey(whole=True).key(b"/apt/x?y=1") == b"/apt/x?y=1"
    assert UriKey(depth=4).key(b"/apt/main/dists/stable/InRelease") == b"/apt/main/dists/stable"
    assert UriKey(depth=4).key(b"/apt/main") == b"/apt/main"
    assert UriKey(length=5).key(b"/apt/main") == b"/apt/"
    assert UriKey().key(b"http://front:80/apt/x") == b"/apt/x"  # path-only


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(1, 500_000), min_size=2, max_size=6, unique=True),
       weights=st.lists(st.integers(1, 256), min_size=6, max_size=6),
       victim=st.integers(0, 5), seed=st.integers(0, 2**32))
def test_a_server_down_moves_only_its_keys(ids: list[int], weights: list[int], victim: int,
                                           seed: int) -> None:
    servers = [RingServer(f"s{i}", sid, weights[i]) for i, sid in enumerate(ids)]
    ring = Ring(servers)
    gone = servers[victim % len(servers)].name
    reduced = ring.without([gone])
    rng = random.Random(seed)
    for _ in range(200):
        path = f"/apt/main/pool/{rng.getrandbits(64):x}.deb"
        before, after = ring.server_for(path), reduced.server_for(path)
        assert before is not None and after is not None
        if before.name != gone:
            assert after == before
        else:
            assert after.name != gone


def test_client_paths_are_what_clients_send() -> None:
    apt = PlanArtifact("apt", "main", "pool/main/g/g++/g++_12.2~rc1+b1_amd64.deb", "0" * 64, 1)
    assert client_path(apt) == "/apt/main/pool/main/g/g%2b%2b/g%2b%2b_12.2%7erc1%2bb1_amd64.deb"
    pip = PlanArtifact("pypi", "local", "edge-agent/edge_agent-2.0+local-py3-none-any.whl",
                       "0" * 64, 1)
    assert client_path(pip) == "/pypi/local/files/edge-agent/edge_agent-2.0%2Blocal-py3-none-any.whl"
    image = PlanArtifact("glance", "glance", "0b9d9c9e-1b2c-4d5e-8f90-123456789abc", "0" * 64, 1)
    assert client_path(image) == "/glance/v2/images/0b9d9c9e-1b2c-4d5e-8f90-123456789abc/file"
    assert apt_quote("a b%c\u00e9") == "a%20b%25c%c3%a9"


def test_lb_config_names_every_sibling_with_its_id_and_weight() -> None:
    region = parse_inventory(inventory({
        "front": "http://f:81", "siblings": [{"url": SIBS[0], "name": "a", "id": 3},
                                             {"url": SIBS[1], "name": "b", "weight": 9}],
        "lb": {"hash": "djb2"}})).regions["r"]
    text = haproxy_config(region)
    assert "bind f:81" in text and text.count("hash-type consistent djb2\n") == 2
    assert "server a 10.0.0.1:8080 id 3 weight 100" in text
    assert f"server b 10.0.0.2:8080 id {region.siblings[1].id} weight 9" in text
    assert "track r_siblings/a" in text and "balance uri path-only depth 4" in text
    assert 'srv_is_up(r_siblings/b)' in front_status_body(region)


def test_lb_config_verifies_https_siblings_with_the_inventorys_ca(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.plugin.pki import write_cert_and_key
    ca, _ = write_cert_and_key(tmp_path, "fleet-ca")
    path = tmp_path / "fleet.toml"
    path.write_text(f'origin = "https://origin:8443"\nca_file = "{ca}"\n[regions.r]\n'
                    'front = "http://f:80"\nsiblings = ["https://10.0.0.1:8443"]\n')
    distro_sync = str(Path(sys.executable).parent / "distro-sync")
    out = subprocess.run([distro_sync, "lb-config", str(path), "r"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"ssl verify required ca-file {ca} sni str(10.0.0.1)" in out.stdout
    missing = subprocess.run([distro_sync, "lb-config", str(path), "nowhere"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "unknown region 'nowhere'" in missing.stderr
