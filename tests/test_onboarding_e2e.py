"""Zero-touch onboarding end to end: a fresh private apt root configured only by the bootstrap
script runs real apt-get (update, signature checked by apt, install --download-only) through
the region's cache; real pip installs with the generated pip.conf; real openstacksdk lists the
images with the generated clouds.yaml; the site reports to a running console. After the
operator moves the region to another node, the same script from the console re-points the
site, which then downloads from the new address only (the old node is stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distro.glance_images import write_image
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.console import DISTRO_SYNC, ConsoleProcess
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

TOKEN = "onboard-7f3a9c"
IMAGE_TOKEN = "site-image-token-41"


@dataclass
class Stack:
    origin: NodeProcess
    a: NodeProcess
    b: NodeProcess
    inventory: Path
    top_package: str
    fingerprint: str


def write_inventory(path: Path, origin: str, front: str, top_package: str,
                    key: str | None = None) -> None:
    (path.parent / "onboarding.token").write_text(TOKEN + "\n")
    pinned = f'repository_key = "{key}"\n' if key else ""
    path.write_text(f"""origin = "{origin}"
onboarding_token_file = "onboarding.token"
{pinned}
[regions.north]
parent = "{front}"

[profiles.compute]
apt = {{ repo = "main", suite = "stable", packages = ["{top_package}"] }}
pip = {{ index = "local", requirements = ["edge-agent"] }}

[sites.north-01]
region = "north"
profile = "compute"
""")


@pytest.fixture
def stack(sample_apt: SampleAptRepo, wheel_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    assert sample_apt.signing_key is not None
    images = tmp_path / "images"
    write_image(images, "cirros-0.6", os.urandom(256 << 10), visibility="public",
                owner="proj-admin", created_at="2026-01-01T00:00:01Z")
    write_image(images, "edge-private", os.urandom(64 << 10), visibility="private",
                owner="proj-edge", created_at="2026-01-01T00:00:02Z")
    (images / "tokens.toml").write_text(
        f'[tokens."{IMAGE_TOKEN}"]\nproject = "proj-edge"\nroles = ["member"]\n')
    nodes: list[NodeProcess] = []
    try:
        origin = NodeProcess(
            ["--role", "origin", "--store", str(tmp_path / "origin"),
             "--apt", f"main={sample_apt.deb_dir}", "--pypi", f"local={wheel_dir}",
             "--images", str(images), "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
             "--signing-key", sample_apt.signing_key.key_id], tmp_path / "origin.log").start()
        nodes.append(origin)
        for name in ("a", "b"):
            nodes.append(NodeProcess(["--role", "cache", "--store", str(tmp_path / name),
                                      "--upstream", origin.url], tmp_path / f"{name}.log"
                                     ).start())
        inventory = tmp_path / "fleet.toml"
        write_inventory(inventory, origin.url, nodes[1].url, sample_apt.top_package)
        yield Stack(origin, nodes[1], nodes[2], inventory, sample_apt.top_package,
                    sample_apt.signing_key.key_id.upper())
    finally:
        for node in nodes:
            node.stop()


def run_bootstrap(script: str, root: Path, site: str | None = None
                  ) -> subprocess.CompletedProcess[str]:
    path = root.parent / f"{root.name}-bootstrap.sh"
    path.write_text(script)
    env = {**os.environ, "EDGEDEPOT_ROOT": str(root), "EDGEDEPOT_IMAGE_TOKEN": IMAGE_TOKEN}
    if site:
        env["EDGEDEPOT_SITE"] = site
    return subprocess.run(["sh", str(path)], capture_output=True, text=True, env=env,
                          timeout=120)


def fresh_root(root: Path) -> None:
    """An empty machine as apt sees it: no configuration, lists or packages at all."""
    for sub in ("var/lib/dpkg", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
                "etc/apt/apt.conf.d", "etc/apt/preferences.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()


def apt_get(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Real apt-get with its whole world under `root` (`Dir=`): the sources and keyring it uses
    are only those the bootstrap script wrote there."""
    proc = subprocess.run(
        ["apt-get", "-o", f"Dir={root}", "-o", "Dir::Bin::Methods=/usr/lib/apt/methods",
         "-o", "Dir::Bin::dpkg=/usr/bin/dpkg", "-o", "APT::Architecture=amd64",
         "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
         "-o", "Acquire::Retries=0", "-o", "Acquire::http::Proxy=false", *args],
        capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"apt-get {args}: {proc.stdout}\n{proc.stderr}"
    return proc


def clients_of(node: NodeProcess, address: str, key: str, at_least: int) -> int:
    """The node's count `key` for `address` once it reached `at_least` (a node's workers
    publish their counts to each other within a second); fails with the last value."""
    value = 0
    for _ in range(60):
        status, body, _ = node.get("/admin/clients")
        assert status == 200, body
        value = next((c[key] for c in json.loads(body)["clients"] if c["address"] == address), 0)
        if value >= at_least:
            return int(value)
        time.sleep(0.5)
    raise AssertionError(f"{node.url}: {address} {key} = {value}, expected >= {at_least}")


def report(console: ConsoleProcess, site: str, token: str | None) -> int:
    req = urllib.request.Request(f"{console.url}/api/sites/{site}/report",
                                 data=b'{"hostname": "x"}', method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"}
                                             if token else {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_bootstrap_configures_apt_pip_and_images_and_repoints(stack: Stack,
                                                              tmp_path: Path) -> None:
    root = tmp_path / "site-root"
    fresh_root(root)
    with ConsoleProcess(stack.inventory, tmp_path / "console.log") as console:
        gen = subprocess.run([DISTRO_SYNC, "site-config", str(stack.inventory), "north-01",
                              "--console-url", console.url], capture_output=True, text=True)
        assert gen.returncode == 0, gen.stderr
        first = run_bootstrap(gen.stdout, root)
        assert first.returncode == 0, first.stderr
        assert f"repository key {stack.fingerprint} verified" in first.stderr

        # apt: only what the script wrote; apt checks the InRelease signature with the keyring
        sources = (root / "etc/apt/sources.list.d/edgedepot.list").read_text()
        keyring = root / "usr/share/keyrings/edgedepot.gpg"
        assert f"deb [signed-by={keyring}] {stack.a.url}/apt/main stable main" in sources
        update = apt_get(root, "update")
        assert "NO_PUBKEY" not in update.stdout + update.stderr
        assert "not signed" not in update.stdout + update.stderr
        apt_get(root, "install", "-y", "--download-only", stack.top_package)
        debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
        assert any(d.name.startswith(stack.top_package + "_") for d in debs), debs
        clients_of(stack.a, "127.0.0.1", "artifact_bytes", sum(d.stat().st_size for d in debs))

        # the same root with the keyring emptied: apt itself refuses the repository
        saved = keyring.read_bytes()
        keyring.write_bytes(b"")
        refused = apt_get(root, "update", check=False)
        assert refused.returncode != 0 or "GPG error" in refused.stdout + refused.stderr
        keyring.write_bytes(saved)

        # pip with the generated pip.conf
        pip = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--target",
             str(tmp_path / "pip-target"), "edge-agent"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PIP_CONFIG_FILE": str(root / "etc/pip.conf")})
        assert pip.returncode == 0, pip.stdout + pip.stderr
        assert list((tmp_path / "pip-target").glob("edge_agent-2.0.0*.dist-info"))
        assert stack.a.url in (root / "etc/pip.conf").read_text()

        # openstacksdk with the generated clouds.yaml
        sdk = subprocess.run(
            [sys.executable, "-c", "import openstack; c = openstack.connect(cloud='edgedepot');"
             "print(sorted(i.name for i in c.image.images()))"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "OS_CLIENT_CONFIG_FILE": str(root / "etc/openstack/clouds.yaml")})
        assert sdk.returncode == 0, sdk.stderr
        assert sdk.stdout.strip() == "['cirros-0.6', 'edge-private']"  # with the site's token
        clients_of(stack.a, "127.0.0.1", "requests", 1)

        # the console saw the report; a report without the onboarding token is refused
        doc = console.wait_for("/api/sites/north-01", lambda d: d["onboarded"] is not None)
        assert doc["onboarded"]["front"] == stack.a.url and doc["known"] is True
        assert report(console, "north-01", None) == 403
        assert report(console, "north-01", "wrong") == 403

        # an unknown site running a copy of the script shows up as unknown
        other = tmp_path / "other-root"
        stranger = run_bootstrap(gen.stdout, other, site="stranger-7")
        assert stranger.returncode == 0, stranger.stderr
        unknown = console.wait_for("/api/sites?state=unknown", lambda d: d["total"] == 1)
        assert unknown["items"][0]["site"] == "stranger-7" and not unknown["items"][0]["known"]

        # the operator moves the region to node b; a takes no more requests
        stack.a.stop()
        write_inventory(stack.inventory, stack.origin.url, stack.b.url, stack.top_package)
        # the console serves the script only with the onboarding token
        assert console.get("/sites/north-01/bootstrap.sh")[0] == 401
        assert console.get("/sites/north-01/bootstrap.sh",
                           {"Authorization": "Bearer wrong"})[0] == 403
        moved = console.wait_for_text("/sites/north-01/bootstrap.sh", stack.b.url,
                                      headers={"Authorization": f"Bearer {TOKEN}"})
        again = run_bootstrap(moved, root)
        assert again.returncode == 0, again.stderr
        assert f"unchanged {keyring}" in again.stderr  # idempotent: same key, not rewritten
        assert f"wrote {root}/etc/apt/sources.list.d/edgedepot.list" in again.stderr
        assert stack.b.url in (root / "etc/apt/sources.list.d/edgedepot.list").read_text()
        assert stack.a.url not in (root / "etc/pip.conf").read_text()
        for deb in (root / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        apt_get(root, "update")
        apt_get(root, "install", "-y", "--download-only", stack.top_package)
        clients_of(stack.b, "127.0.0.1", "artifact_bytes", 1)
        doc = console.wait_for("/api/sites/north-01",
                               lambda d: d["onboarded"]["front"] == stack.b.url)
        assert doc["onboarded"]["count"] == 2

        # running it once more changes nothing
        third = run_bootstrap(moved, root)
        assert third.returncode == 0 and "wrote" not in third.stderr, third.stderr


def test_bootstrap_refuses_a_key_that_is_not_the_pinned_one(stack: Stack,
                                                            tmp_path: Path) -> None:
    write_inventory(stack.inventory, stack.origin.url, stack.a.url, stack.top_package,
                    key="0123 4567 89AB CDEF 0123 4567 89AB CDEF 0123 4567")
    gen = subprocess.run([DISTRO_SYNC, "site-config", str(stack.inventory), "north-01"],
                         capture_output=True, text=True)
    assert gen.returncode == 0, gen.stderr
    root = tmp_path / "root"
    proc = run_bootstrap(gen.stdout, root)
    assert proc.returncode != 0
    assert "not the pinned repository key" in proc.stderr and stack.fingerprint in proc.stderr
    assert not (root / "etc").exists() and not (root / "usr").exists()  # nothing written
