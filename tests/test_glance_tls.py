"""The real OpenStack clients over TLS: a real Glance behind an origin that serves only
enrolled caches (mutual TLS), a cache in front of it on HTTPS, and python-glanceclient's
`glance` CLI (`--os-cacert`) and openstacksdk (`cacert`) trusting the fleet CA. Records,
listings, token checks and image data all cross the mTLS link."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugin.glance_node import GlanceNode
from tests.plugin.glance_server import GlanceServer, GlanceUnavailable, Grant, ensure_glance_venv
from tests.plugin.pki import FleetPki

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

GLANCE_CLI = str(Path(sys.executable).parent / "glance")
TOKENS = {
    "tok-a": Grant("proj-a", ("member", "reader")),
    "tok-b": Grant("proj-b", ("member", "reader")),
    "tok-admin": Grant("proj-admin", ("admin", "member", "reader")),
}


@dataclass
class Stack:
    pki: FleetPki
    origin: GlanceNode
    cache: GlanceNode
    images: dict[str, dict[str, object]]
    data: dict[str, bytes]

    def id(self, name: str) -> str:
        return str(self.images[name]["id"])

    @property
    def endpoint(self) -> str:
        return self.cache.https_url + "/glance"


@pytest.fixture(scope="module")
def stack(fleet_pki: FleetPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        ensure_glance_venv()
    except GlanceUnavailable as exc:
        pytest.skip(f"a real Glance cannot be installed here: {exc}")
    work = tmp_path_factory.mktemp("glance-tls")
    with GlanceServer(work / "glance", dict(TOKENS)) as glance:
        data = {"private-a": os.urandom(2 << 20), "public-1": os.urandom(1 << 20)}
        images = {
            "private-a": glance.create_image("tok-a", "private-a", data["private-a"],
                                             visibility="private"),
            "public-1": glance.create_image("tok-admin", "public-1", data["public-1"],
                                            visibility="public"),
        }
        origin = GlanceNode(["--role", "origin", "--store", str(work / "origin"),
                             "--glance-upstream", glance.url,
                             *fleet_pki.server_flags(fleet_pki.origin, client_ca=True)],
                            work / "origin.log", listen=None, tls_listen="127.0.0.1:0",
                            client_tls=fleet_pki.client_context(fleet_pki.cache_client))
        with origin:
            cache = GlanceNode(["--role", "cache", "--store", str(work / "cache"),
                                "--upstream", origin.https_url, *fleet_pki.upstream_flags(),
                                *fleet_pki.server_flags(fleet_pki.cache)],
                               work / "cache.log", listen=None, tls_listen="127.0.0.1:0",
                               client_tls=fleet_pki.client_context())
            with cache:
                yield Stack(fleet_pki, origin, cache, images, data)


def _cli(stack: Stack, token: str, *args: str, check: bool = True
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    proc = subprocess.run([GLANCE_CLI, "--os-image-url", stack.endpoint, "--os-cacert",
                           str(stack.pki.ca.cert), "--os-auth-token", token, *args],
                          capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def test_glance_cli_over_https(stack: Stack, tmp_path: Path) -> None:
    out = _cli(stack, "tok-a", "image-list").stdout
    assert "private-a" in out and "public-1" in out
    assert "private-a" not in _cli(stack, "tok-b", "image-list").stdout
    target = tmp_path / "a.img"
    _cli(stack, "tok-a", "image-download", "--file", str(target), stack.id("private-a"))
    assert _sha(target.read_bytes()) == _sha(stack.data["private-a"])
    refused = _cli(stack, "tok-b", "image-download", "--file", str(tmp_path / "b.img"),
                   stack.id("private-a"), check=False)
    assert refused.returncode != 0, "another project's token may not read the cached image"
    _cli(stack, "tok-admin", "cache-queue", stack.id("public-1"))
    assert stack.id("private-a") in _cli(stack, "tok-admin", "cache-list").stdout


def test_openstacksdk_over_https(stack: Stack, tmp_path: Path) -> None:
    import openstack

    conn = openstack.connect(auth_type="admin_token",
                             auth={"endpoint": "http://127.0.0.1:9/unused", "token": "tok-a"},
                             image_endpoint_override=stack.endpoint,
                             cacert=str(stack.pki.ca.cert))
    assert sorted(i.name for i in conn.image.images()) == ["private-a", "public-1"]
    image = conn.get_image(stack.id("public-1"))
    assert image is not None and image.checksum == stack.images["public-1"]["checksum"]
    target = tmp_path / "p1.img"
    conn.download_image(stack.id("public-1"), output_path=str(target))
    assert _sha(target.read_bytes()) == _sha(stack.data["public-1"])
    conn.download_image(stack.id("public-1"), output_path=str(tmp_path / "again.img"))
    # The image's data crossed the mTLS link once, however often it was served.
    served = stack.origin.served()
    assert served[f"/glance/v2/images/{stack.id('public-1')}/file"] == 1
