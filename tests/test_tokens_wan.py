"""Callers' Glance tokens never cross the WAN in clear. A recording relay stands for the WAN
between a cache and its origin and keeps every byte it carries:

* over plain http to a non-loopback address the cache refuses to start, so the relay sees
  nothing (with the setting that allows it by name, the same relay does see the token: the
  recording is able to catch one);
* over https the token crosses (the private image is served) but the relay sees only TLS.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distro.glance_images import DigestMemo, load_image_directory, write_image
from tests.plugin.glance_node import GlanceNode
from tests.plugin.pki import FleetPki
from tests.plugin.support import CACHE_NODE, TcpRelay

pytestmark = pytest.mark.integration

TOKEN = "tok-7f3c9e21-secret"
TOKENS = f"""
[tokens.{TOKEN}]
project = "proj-a"
roles = ["member", "reader"]
"""


@dataclass
class Origin:
    node: GlanceNode
    image_id: str
    data: bytes


@pytest.fixture
def origin(fleet_pki: FleetPki, tmp_path: Path) -> Iterator[Origin]:
    """An origin with a private image of proj-a, on plain HTTP and on mutual TLS."""
    images = tmp_path / "images"
    data = os.urandom(1 << 20)
    write_image(images, "private-a", data, visibility="private", owner="proj-a")
    (images / "tokens.toml").write_text(TOKENS)
    image_id = load_image_directory(images, DigestMemo(None)).images[0].image.id
    node = GlanceNode(["--role", "origin", "--store", str(tmp_path / "origin"),
                       "--images", str(images),
                       *fleet_pki.server_flags(fleet_pki.origin, client_ca=True)],
                      tmp_path / "origin.log", tls_listen="127.0.0.1:0")
    with node:
        yield Origin(node, image_id, data)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _fetch(url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"X-Auth-Token": TOKEN})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_plain_http_wan_sees_no_token_because_the_cache_refuses_to_start(
        origin: Origin, tmp_path: Path) -> None:
    # 0.0.0.0 is not a loopback address, yet connecting to it reaches this host's listeners:
    # a "remote" plain-http upstream the relay can still record.
    with TcpRelay(_port(origin.node.url)) as wan:
        upstream = f"http://0.0.0.0:{wan.port}/"
        args = ["--role", "cache", "--store", str(tmp_path / "c"), "--upstream", upstream]
        refused = subprocess.run([CACHE_NODE, "serve", "--listen", "127.0.0.1:0", *args],
                                 capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
        assert refused.returncode == 2, refused.stderr
        assert "glance.forward_tokens_over_plain_http" in refused.stderr
        assert wan.connections == 0 and not wan.recorded

        # The control: allowed by name, the same WAN carries the token in clear.
        allowed = GlanceNode([*args, "--glance-forward-tokens-over-plain-http"],
                             tmp_path / "allowed.log")
        with allowed:
            status, body = _fetch(f"{allowed.glance}/v2/images/{origin.image_id}/file")
            assert status == 200 and body == origin.data
        assert f"X-Auth-Token: {TOKEN}".lower().encode() in bytes(wan.recorded).lower()


def test_https_wan_carries_the_token_encrypted(
        origin: Origin, fleet_pki: FleetPki, tmp_path: Path) -> None:
    with TcpRelay(_port(origin.node.https_url)) as wan:
        cache = GlanceNode(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                            wan.url("https"), *fleet_pki.upstream_flags()],
                           tmp_path / "cache.log")
        with cache:
            status, body = _fetch(f"{cache.glance}/v2/images/{origin.image_id}")
            assert status == 200, body
            status, body = _fetch(f"{cache.glance}/v2/images/{origin.image_id}/file")
            assert status == 200
            assert hashlib.sha256(body).digest() == hashlib.sha256(origin.data).digest()
            status, _ = _fetch(f"{cache.glance}/v2/images")
            assert status == 200
        recorded = bytes(wan.recorded)
        assert wan.connections >= 1 and len(recorded) > len(origin.data), \
            "the token checks and the image crossed this relay"
        assert recorded[:1] == b"\x16", "a TLS handshake record"
        assert TOKEN.encode() not in recorded and b"X-Auth-Token" not in recorded
        assert origin.data[:4096] not in recorded
