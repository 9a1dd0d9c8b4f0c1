"""Sites behind a real HAProxy (configured by `lb-config`, `option forwardfor`) are seen as
themselves by a node that trusts the front: the allow list, the access log and the per-client
counts (what the console attributes to sites) use the address HAProxy names, never one a client
wrote itself; a node that does not trust the sender ignores the header."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncer.demo.node_process import NodeProcess
from syncer.demo.sample_repo import SampleAptRepo
from syncer.inventory import parse_inventory
from syncer.siblings import haproxy_config
from tests.plugin.haproxy import HaproxyProcess, free_port, require_haproxy

pytestmark = pytest.mark.integration

SITE, STRANGER, SPOOFED = "127.0.0.7", "127.0.0.8", "127.0.0.9"
PATH = "/apt/main/dists/stable/InRelease"


@pytest.fixture
def node(sample_apt: SampleAptRepo, tmp_path: Path) -> Iterator[NodeProcess]:
    require_haproxy()
    assert sample_apt.signing_key is not None
    proc = NodeProcess(
        ["--role", "origin", "--store", str(tmp_path / "origin"),
         "--apt", f"main={sample_apt.deb_dir}",
         "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
         "--signing-key", sample_apt.signing_key.key_id,
         "--trusted-proxy", "127.0.0.1/32", "--allow", "127.0.0.1/32", "--allow", f"{SITE}/32",
         "--access-log", str(tmp_path / "access.log"), "--workers", "1"],
        tmp_path / "node.log")
    with proc:
        yield proc


def fetch(port: int, source: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET PATH from a client socket bound to `source` (a loopback address of its own)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30,
                                      source_address=(source, 0))
    try:
        conn.request("GET", PATH, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def clients(node: NodeProcess) -> dict[str, int]:
    status, body, _ = node.get("/admin/clients")
    assert status == 200, body
    return {c["address"]: c["requests"] for c in json.loads(body)["clients"]}


def test_clients_behind_haproxy_are_seen_as_themselves(node: NodeProcess,
                                                       tmp_path: Path) -> None:
    node_port = int(node.url.rsplit(":", 1)[1])
    front_port = free_port()
    region = parse_inventory({"origin": node.url, "regions": {"north": {
        "front": f"http://127.0.0.1:{front_port}", "siblings": [node.url],
        "lb": {"check_interval": 0.2}}}}).regions["north"]
    with HaproxyProcess(haproxy_config(region), tmp_path / "front", front_port) as front:
        front.wait_for(lambda s: all(s.values()))
        # through the front: the site is allowed and counted as itself, a stranger refused
        assert fetch(front_port, SITE)[0] == 200
        status, body = fetch(front_port, STRANGER)
        assert status == 403 and json.loads(body)["error"] == "client_not_allowed"
        assert STRANGER in json.loads(body)["message"]
        # what a client writes itself is not believed: HAProxy appends the real address
        assert fetch(front_port, SITE, {"X-Forwarded-For": SPOOFED})[0] == 200
        assert fetch(front_port, STRANGER, {"X-Forwarded-For": SITE})[0] == 403
    # straight to the node, a client that is not a trusted proxy cannot name another
    assert fetch(node_port, STRANGER, {"X-Forwarded-For": SITE})[0] == 403
    deadline = time.monotonic() + 30
    while (seen := clients(node)).get(SITE, 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert seen.get(SITE) == 2, seen
    assert SPOOFED not in seen and seen.get(STRANGER, 0) == 3, seen
    log = (tmp_path / "access.log").read_text()
    site_lines = [line for line in log.splitlines() if line.split()[1:2] == [SITE]
                  and PATH in line]
    assert len(site_lines) == 2, log
    assert SPOOFED not in log
