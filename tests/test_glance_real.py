"""A real Glance (PyPI, gunicorn, sqlite, file store) behind an origin and a cache node, driven
by the real OpenStack clients: python-glanceclient (library and `glance` CLI) and openstacksdk.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugin.glance_node import GlanceNode
from tests.plugin.glance_server import GlanceServer, GlanceUnavailable, Grant, ensure_glance_venv

# The first test also builds the Glance venv on a fresh machine (a few minutes, once).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

GLANCE_CLI = str(Path(sys.executable).parent / "glance")
TOKENS = {
    "tok-a": Grant("proj-a", ("member", "reader")),
    "tok-b": Grant("proj-b", ("member", "reader")),
    "tok-admin": Grant("proj-admin", ("admin", "member", "reader")),
}


@dataclass
class Stack:
    glance: GlanceServer
    origin: GlanceNode
    cache: GlanceNode
    images: dict[str, dict[str, object]]  # name -> Glance's record
    data: dict[str, bytes]                # name -> bytes

    def id(self, name: str) -> str:
        return str(self.images[name]["id"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        ensure_glance_venv()
    except GlanceUnavailable as exc:
        pytest.skip(f"a real Glance cannot be installed here: {exc}")
    work = tmp_path_factory.mktemp("glance-real")
    with GlanceServer(work / "glance", dict(TOKENS)) as glance:
        data = {"private-a": os.urandom(3 << 20), "private-b": os.urandom(2 << 20),
                "public-1": os.urandom(1 << 20), "public-2": os.urandom(1 << 19),
                "public-3": os.urandom(1 << 18)}
        owners = {"private-a": "tok-a", "private-b": "tok-b"}
        images = {}
        for name, payload in data.items():
            images[name] = glance.create_image(
                owners.get(name, "tok-admin"), name, payload,
                visibility="private" if name in owners else "public", os_distro="cirros")
        with GlanceNode(["--role", "origin", "--store", str(work / "origin"),
                         "--glance-upstream", glance.url], work / "origin.log") as origin, \
             GlanceNode(["--role", "cache", "--store", str(work / "cache"), "--upstream",
                         origin.url], work / "cache.log") as cache:
            yield Stack(glance, origin, cache, images, data)


def _cli(stack: Stack, token: str, *args: str) -> str:
    proc = subprocess.run([GLANCE_CLI, "--os-image-url", stack.cache.glance,
                           "--os-auth-token", token, *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc.stdout


def _check(stack: Stack, name: str, payload: bytes) -> None:
    record = stack.images[name]
    assert hashlib.md5(payload).hexdigest() == record["checksum"]
    assert hashlib.sha512(payload).hexdigest() == record["os_hash_value"]


def _http(url: str, token: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"X-Auth-Token": token} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_glance_cli(stack: Stack, tmp_path: Path) -> None:
    out = _cli(stack, "tok-a", "image-list", "--page-size", "1")
    for name in ("private-a", "public-1", "public-2", "public-3"):
        assert name in out
    assert "private-b" not in out
    out = _cli(stack, "tok-a", "image-show", stack.id("private-a"))
    assert str(stack.images["private-a"]["checksum"]) in out and "private-a" in out
    target = tmp_path / "a.img"
    _cli(stack, "tok-a", "image-download", "--file", str(target), stack.id("private-a"))
    _check(stack, "private-a", target.read_bytes())
    # Cache management, as an admin.
    _cli(stack, "tok-admin", "cache-queue", stack.id("public-1"))
    out = _cli(stack, "tok-admin", "cache-list")
    assert stack.id("private-a") in out
    _cli(stack, "tok-admin", "cache-delete", stack.id("private-a"))
    assert stack.id("private-a") not in _cli(stack, "tok-admin", "cache-list")
    _cli(stack, "tok-admin", "cache-clear", "--target", "cache")
    listing = json.loads(_http(stack.cache.glance + "/v2/cache", "tok-admin")[1])
    assert listing["cached_images"] == []
    proc = subprocess.run([GLANCE_CLI, "--os-image-url", stack.cache.glance, "--os-auth-token",
                           "tok-a", "cache-list"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0  # not an admin


def test_glanceclient_library(stack: Stack) -> None:
    from glanceclient import Client

    client = Client("2", endpoint=stack.cache.glance, token="tok-b")
    names = [i["name"] for i in client.images.list(page_size=2)]
    assert sorted(names) == ["private-b", "public-1", "public-2", "public-3"]
    payload = b"".join(client.images.data(stack.id("private-b")))  # checks Content-MD5
    _check(stack, "private-b", payload)
    image = client.images.get(stack.id("public-2"))
    assert image["os_hash_value"] == stack.images["public-2"]["os_hash_value"]


def test_openstacksdk(stack: Stack, tmp_path: Path) -> None:
    import openstack

    conn = openstack.connect(auth_type="admin_token",
                             auth={"endpoint": "http://127.0.0.1:9/unused", "token": "tok-a"},
                             image_endpoint_override=stack.cache.glance)
    names = sorted(i.name for i in conn.image.images(limit=1))
    assert names == ["private-a", "public-1", "public-2", "public-3"]
    assert sorted(i.name for i in conn.list_images()) == names
    image = conn.get_image(stack.id("public-3"))
    assert image is not None and image.checksum == stack.images["public-3"]["checksum"]
    target = tmp_path / "p3.img"
    conn.download_image(stack.id("public-3"), output_path=str(target))
    _check(stack, "public-3", target.read_bytes())


def test_two_projects_never_see_each_others_private_images(stack: Stack) -> None:
    cache = stack.cache.glance
    for owner, other, name in (("tok-a", "tok-b", "private-a"), ("tok-b", "tok-a", "private-b")):
        url = f"{cache}/v2/images/{stack.id(name)}/file"
        status, payload = _http(url, owner)
        assert status == 200
        _check(stack, name, payload)
        # Cached now; the other project, a bad token and no token still get nothing.
        assert _http(url, other)[0] == 404
        assert _http(f"{cache}/v2/images/{stack.id(name)}", other)[0] == 404
        assert name not in json.loads(_http(f"{cache}/v2/images", other)[1]).__repr__()
        assert _http(url, None)[0] == 401
        assert _http(url, "forged")[0] == 401


def test_listing_matches_real_glance(stack: Stack) -> None:
    queries = ["", "?limit=2", "?sort_key=name&sort_dir=asc&limit=2", "?sort=size:asc,name",
               "?visibility=public", "?os_distro=cirros&limit=3", "?name=public-2",
               "?limit=1&sort_key=size"]
    for query in queries:
        for token in ("tok-a", "tok-admin"):
            direct = json.loads(stack.glance.request("GET", "/v2/images" + query, token)[1])
            cached = json.loads(_http(f"{stack.cache.glance}/v2/images{query}", token)[1])
            assert [i["id"] for i in cached["images"]] == [i["id"] for i in direct["images"]], \
                query
            assert cached.get("next") == direct.get("next"), query
            assert cached["first"] == direct["first"], query
    marker = stack.id("public-1")
    direct = json.loads(stack.glance.request(
        "GET", f"/v2/images?limit=2&marker={marker}", "tok-a")[1])
    cached = json.loads(_http(f"{stack.cache.glance}/v2/images?limit=2&marker={marker}",
                              "tok-a")[1])
    assert [i["id"] for i in cached["images"]] == [i["id"] for i in direct["images"]]
    assert _http(f"{stack.cache.glance}/v2/images?marker=bogus", "tok-a")[0] == 400
    assert stack.glance.request("GET", "/v2/images?marker=bogus", "tok-a")[0] == 400


def test_twenty_concurrent_cold_downloads_fetch_from_glance_once(stack: Stack) -> None:
    import asyncio

    import aiohttp

    payload = os.urandom(12 << 20)
    record = stack.glance.create_image("tok-admin", "concurrent", payload, visibility="public")
    url = f"{stack.cache.glance}/v2/images/{record['id']}/file"
    key = ("edgedepot_upstream_bytes_total", "glance")
    before = (stack.origin.metrics().get(key, 0.0), stack.cache.metrics().get(key, 0.0))

    async def one(session: aiohttp.ClientSession, quit_early: bool) -> bytes:
        async with session.get(url, headers={"X-Auth-Token": "tok-b"}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-MD5"] == record["checksum"]
            if quit_early:
                return await resp.content.read(1 << 20)  # and disconnect
            return await resp.read()

    async def run() -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(one(session, i == 7) for i in range(20)))

    bodies = asyncio.run(run())
    for i, body in enumerate(bodies):
        if i != 7:
            assert hashlib.sha512(body).hexdigest() == record["os_hash_value"]
            assert hashlib.md5(body).hexdigest() == record["checksum"]
    origin_bytes = stack.origin.metrics()[key] - before[0]
    cache_bytes = stack.cache.metrics()[key] - before[1]
    for got in (origin_bytes, cache_bytes):  # the image once per tier, plus small records
        assert len(payload) <= got < len(payload) + (256 << 10), got
