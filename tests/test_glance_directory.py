"""The Glance endpoint over the origin's image directory: origin and cache nodes, real HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from cache_node.answers import RangeNotSatisfiable, parse_range
from distro.glance_images import (
    DigestMemo,
    GlanceImage,
    family_key,
    load_image_directory,
    write_image,
)
from tests.plugin.glance_node import GlanceNode

pytestmark = pytest.mark.integration

TOKENS = """
[tokens.tok-a]
project = "proj-a"
roles = ["member", "reader"]
[tokens.tok-b]
project = "proj-b"
roles = ["member", "reader"]
[tokens.tok-admin]
project = "proj-admin"
roles = ["admin", "member", "reader"]
"""


@dataclass
class Nodes:
    images: Path
    origin: GlanceNode
    cache: GlanceNode

    def ids(self) -> dict[str, str]:
        memo = DigestMemo(None)
        return {d.image.name or "": d.image.id
                for d in load_image_directory(self.images, memo).images}


def _make_images(root: Path) -> None:
    rnd = os.urandom
    write_image(root, "debian-12.1", rnd(3 << 20), visibility="public", owner="proj-admin",
                disk_format="qcow2", properties={"os_distro": "debian", "os_version": "12"},
                tags=["edge"], created_at="2026-01-01T00:00:01Z")
    write_image(root, "debian-12.2", rnd(2 << 20), visibility="public", owner="proj-admin",
                disk_format="qcow2", properties={"os_distro": "debian", "os_version": "12"},
                created_at="2026-01-01T00:00:02Z")
    write_image(root, "cirros", rnd(1 << 20), visibility="public", owner="proj-admin",
                created_at="2026-01-01T00:00:03Z")
    write_image(root, "private-a", rnd(1 << 20), visibility="private", owner="proj-a",
                created_at="2026-01-01T00:00:04Z")
    write_image(root, "private-b", rnd(1 << 20), visibility="private", owner="proj-b",
                created_at="2026-01-01T00:00:05Z")
    write_image(root, "community", rnd(1 << 18), visibility="community", owner="proj-b",
                created_at="2026-01-01T00:00:06Z")
    write_image(root, "hidden", rnd(1 << 18), visibility="public", owner="proj-admin",
                os_hidden=True, created_at="2026-01-01T00:00:07Z")
    (root / "tokens.toml").write_text(TOKENS)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    work = tmp_path_factory.mktemp("glance-dir")
    images = work / "images"
    _make_images(images)
    with GlanceNode(["--role", "origin", "--store", str(work / "origin"), "--images", str(images)],
                    work / "origin.log") as origin, \
         GlanceNode(["--role", "cache", "--store", str(work / "cache"), "--upstream", origin.url,
                     "--glance-auth-ttl", "0.5"], work / "cache.log") as cache:
        yield Nodes(images, origin, cache)


def _get(node: GlanceNode, path: str, token: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    h = {"X-Auth-Token": token} if token else {}
    h.update(headers or {})
    return node.get("/glance" + path, h)


def _names(body: bytes) -> list[str]:
    return [i["name"] for i in json.loads(body)["images"]]


# -- pure functions ------------------------------------------------------------------------------

def test_parse_range() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == parse_range("bytes=2-4", 10)
    r = parse_range("bytes=2-", 10)
    assert r is not None and (r.start, r.end) == (2, 10)
    r = parse_range("bytes=-3", 10)
    assert r is not None and (r.start, r.end) == (7, 10)
    r = parse_range("bytes=5-100", 10)
    assert r is not None and (r.start, r.end) == (5, 10)
    with pytest.raises(RangeNotSatisfiable, match="not satisfiable"):
        parse_range("bytes=10-", 10)


def test_family_key_and_record_roundtrip() -> None:
    a = GlanceImage(id="x", name="ubuntu-22.04.3", properties=(("os_distro", "ubuntu"),))
    b = GlanceImage(id="y", name="ubuntu-22.04.4")
    assert family_key(a) == family_key(b) == "name:ubuntu"
    c = GlanceImage(id="z", name="n", properties=(("os_distro", "debian"), ("os_version", "12")))
    assert family_key(c) == "os:debian:12"
    d = GlanceImage(id="w", name="n", properties=(("edgedepot_family", "fw"),))
    assert family_key(d) == "family:fw"
    assert GlanceImage.from_json(c.to_json()) == c


# -- the read API --------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["origin", "cache"])
def test_versions_and_schemas(nodes: Nodes, where: str) -> None:
    node = getattr(nodes, where)
    status, body, _ = _get(node, "/versions")
    assert status == 200
    versions = json.loads(body)["versions"]
    assert versions[0] == {"id": "v2.18", "status": "CURRENT",
                           "links": [{"rel": "self", "href": f"{node.glance}/v2/"}]}
    assert {v["id"] for v in versions} >= {"v2.0", "v2.14", "v2.17"}
    assert _get(node, "/")[0] == 300
    status, body, _ = _get(node, "/v2/schemas/image")
    assert status == 200 and json.loads(body)["name"] == "image"
    status, body, _ = _get(node, "/v2/schemas/images")
    assert status == 200 and json.loads(body)["name"] == "images"


@pytest.mark.parametrize("where", ["origin", "cache"])
def test_listing_visibility_sorting_paging(nodes: Nodes, where: str) -> None:
    node = getattr(nodes, where)
    # Default order: created_at desc. Hidden and others' community images are not listed.
    status, body, _ = _get(node, "/v2/images", "tok-a")
    assert status == 200
    assert _names(body) == ["private-a", "cirros", "debian-12.2", "debian-12.1"]
    assert _names(_get(node, "/v2/images", "tok-b")[1]) == [
        "community", "private-b", "cirros", "debian-12.2", "debian-12.1"]
    assert _names(_get(node, "/v2/images")[1]) == ["cirros", "debian-12.2", "debian-12.1"]
    assert _names(_get(node, "/v2/images?visibility=community", "tok-a")[1]) == ["community"]
    assert _names(_get(node, "/v2/images?os_hidden=true", "tok-a")[1]) == ["hidden"]
    assert _names(_get(node, "/v2/images?sort_key=name&sort_dir=asc", "tok-a")[1]) == [
        "cirros", "debian-12.1", "debian-12.2", "private-a"]
    assert _names(_get(node, "/v2/images?sort=size:asc,name:desc", "tok-a")[1]) == [
        "private-a", "cirros", "debian-12.2", "debian-12.1"]
    assert _names(_get(node, "/v2/images?os_distro=debian&tag=edge", "tok-a")[1]) == [
        "debian-12.1"]
    assert _names(_get(node, "/v2/images?name=in:cirros,private-a", "tok-a")[1]) == [
        "private-a", "cirros"]
    assert _names(_get(node, "/v2/images?visibility=private", "tok-a")[1]) == ["private-a"]
    # Paging: Glance's `first`/`next` links; the page after the last is empty.
    seen: list[str] = []
    path = "/v2/images?limit=2&sort_key=name&sort_dir=asc"
    pages = 0
    while True:
        status, body, _ = _get(node, path, "tok-a")
        assert status == 200
        doc = json.loads(body)
        pages += 1
        assert doc["first"] == "/v2/images?limit=2&sort_key=name&sort_dir=asc"
        assert doc["schema"] == "/v2/schemas/images"
        seen += [i["name"] for i in doc["images"]]
        if "next" not in doc:
            break
        assert doc["next"].startswith("/v2/images?limit=2&sort_key=name&sort_dir=asc&marker=")
        path = doc["next"]
    assert seen == ["cirros", "debian-12.1", "debian-12.2", "private-a"]
    assert pages == 3 and doc["images"] == []
    # Bad input
    assert _get(node, "/v2/images?marker=not-an-image", "tok-a")[0] == 400
    assert _get(node, f"/v2/images?marker={nodes.ids()['private-b']}", "tok-a")[0] == 400
    assert _get(node, "/v2/images?limit=x", "tok-a")[0] == 400
    assert _get(node, "/v2/images?sort_key=bogus", "tok-a")[0] == 400
    assert _get(node, "/v2/images?visibility=everyone", "tok-a")[0] == 400
    assert _get(node, "/v2/images", "bad-token")[0] == 401


def test_show_and_private_images(nodes: Nodes) -> None:
    ids = nodes.ids()
    for node in (nodes.origin, nodes.cache):
        status, body, _ = _get(node, f"/v2/images/{ids['private-a']}", "tok-a")
        assert status == 200
        doc = json.loads(body)
        data = (nodes.images / "private-a.img").read_bytes()
        assert doc["checksum"] == hashlib.md5(data).hexdigest()
        assert doc["os_hash_algo"] == "sha512"
        assert doc["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert doc["size"] == len(data) and doc["status"] == "active"
        assert doc["file"] == f"/v2/images/{ids['private-a']}/file"
        assert _get(node, "/v2/images/00000000-0000-0000-0000-000000000000", "tok-a")[0] == 404
    # Project A's private image, cached by A's download: B and anonymous still get 404.
    status, body, _ = _get(nodes.cache, f"/v2/images/{ids['private-a']}/file", "tok-a")
    assert status == 200 and body == (nodes.images / "private-a.img").read_bytes()
    for token in ("tok-b", None):
        assert _get(nodes.cache, f"/v2/images/{ids['private-a']}/file", token)[0] == 404
        assert _get(nodes.cache, f"/v2/images/{ids['private-a']}", token)[0] == 404


def test_download_headers_and_ranges(nodes: Nodes) -> None:
    ids = nodes.ids()
    data = (nodes.images / "debian-12.2.img").read_bytes()
    url = f"/v2/images/{ids['debian-12.2']}/file"
    for _ in range(2):  # cold (streamed while fetched), then warm (from the store)
        status, body, headers = _get(nodes.cache, url, "tok-b")
        assert status == 200 and body == data
        assert headers["Content-MD5"] == hashlib.md5(data).hexdigest()
        assert int(headers["Content-Length"]) == len(data)
    status, body, headers = _get(nodes.cache, url, "tok-b", {"Range": "bytes=100-199"})
    assert status == 206 and body == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, body, headers = _get(nodes.cache, url, "tok-b", {"Range": "bytes=-10"})
    assert status == 206 and body == data[-10:]
    status, _, headers = _get(nodes.cache, url, "tok-b", {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
    # A range on an image not cached yet is served from the running fetch.
    url = f"/v2/images/{ids['community']}/file"
    status, body, headers = _get(nodes.cache, url, "tok-a", {"Range": "bytes=5-9"})
    data = (nodes.images / "community.img").read_bytes()
    assert status == 206 and body == data[5:10]


# -- concurrency ----------------------------------------------------------------------------------

async def _download(session: aiohttp.ClientSession, url: str, stop_after: int | None) -> bytes:
    async with session.get(url, headers={"X-Auth-Token": "tok-a"}) as resp:
        assert resp.status == 200
        out = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 20):
            out += chunk
            if stop_after is not None and len(out) >= stop_after:
                return bytes(out)  # disconnect midway
        return bytes(out)


def test_twenty_concurrent_cold_downloads(nodes: Nodes) -> None:
    data = os.urandom(24 << 20)
    write_image(nodes.images, "big", data, visibility="public", owner="proj-admin")
    image_id = nodes.ids()["big"]
    url = f"{nodes.cache.glance}/v2/images/{image_id}/file"

    async def run() -> list[bytes]:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(*(
                _download(session, url, (4 << 20) if i == 3 else None) for i in range(20)))

    key = ("edgedepot_upstream_bytes_total", "glance")
    before = nodes.cache.metrics().get(key, 0.0)
    bodies = asyncio.run(run())
    digest = hashlib.sha512(data).hexdigest()
    full = [b for i, b in enumerate(bodies) if i != 3]
    assert all(hashlib.sha512(b).hexdigest() == digest for b in full)
    served = nodes.origin.served()
    assert served[f"/glance/v2/images/{image_id}/file"] == 1
    upstream_bytes = nodes.cache.metrics()[key] - before
    assert len(data) <= upstream_bytes < len(data) + (256 << 10)  # data once, plus a record


# -- cache management ----------------------------------------------------------------------------

def _req(node: GlanceNode, method: str, path: str, token: str | None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request
    h = {"X-Auth-Token": token} if token else {}
    h.update(headers or {})
    req = urllib.request.Request(node.glance + path, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_cache_management_api(nodes: Nodes) -> None:
    ids = nodes.ids()
    cache = nodes.cache
    assert _req(cache, "GET", "/v2/cache", None)[0] == 401
    assert _req(cache, "GET", "/v2/cache", "tok-a")[0] == 403
    assert _req(cache, "PUT", f"/v2/cache/{ids['cirros']}", "tok-a")[0] == 403
    assert _req(cache, "PUT", f"/v2/cache/{ids['cirros']}", "tok-admin")[0] == 202
    deadline = time.monotonic() + 30
    while True:
        doc = json.loads(_req(cache, "GET", "/v2/cache", "tok-admin")[1])
        cached = {c["image_id"]: c for c in doc["cached_images"]}
        if ids["cirros"] in cached or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert cached[ids["cirros"]]["size"] == 1 << 20
    assert _req(cache, "DELETE", f"/v2/cache/{ids['cirros']}", "tok-admin")[0] == 204
    doc = json.loads(_req(cache, "GET", "/v2/cache", "tok-admin")[1])
    assert ids["cirros"] not in {c["image_id"] for c in doc["cached_images"]}
    assert _req(cache, "DELETE", f"/v2/cache/{ids['cirros']}", "tok-admin")[0] == 404
    assert _req(cache, "POST", "/v2/cache/clean", "tok-admin")[0] == 200
    status, body = _req(cache, "POST", "/v2/cache/prune", "tok-admin")
    assert status == 200 and "total_files_pruned" in json.loads(body)
    assert _req(cache, "DELETE", "/v2/cache", "tok-admin",
                {"x-image-cache-clear-target": "bogus"})[0] == 400
    assert _req(cache, "DELETE", "/v2/cache", "tok-admin",
                {"x-image-cache-clear-target": "cache"})[0] == 204
    assert json.loads(_req(cache, "GET", "/v2/cache", "tok-admin")[1])["cached_images"] == []
    # Still downloadable after clearing: fetched again from the origin.
    status, body, _ = _get(cache, f"/v2/images/{ids['cirros']}/file", "tok-a")
    assert status == 200 and body == (nodes.images / "cirros.img").read_bytes()


# -- faults: corrupt upstream, upstream down ------------------------------------------------------

@dataclass
class FakeGlance:
    """A Glance-speaking upstream whose image data is corrupt (records are right)."""

    data: bytes
    image: GlanceImage
    url: str = ""
    file_requests: int = 0

    def start(self) -> FakeGlance:
        ready = threading.Event()

        async def record(request: web.Request) -> web.Response:
            if request.match_info["id"] != self.image.id:
                raise web.HTTPNotFound()
            return web.json_response(self.image.to_json())

        async def listing(request: web.Request) -> web.Response:
            return web.json_response({"images": [self.image.to_json()], "first": "/v2/images",
                                      "schema": "/v2/schemas/images"})

        async def data(request: web.Request) -> web.Response:
            self.file_requests += 1
            bad = bytes([self.data[0] ^ 1]) + self.data[1:]
            return web.Response(body=bad, content_type="application/octet-stream")

        async def cache(request: web.Request) -> web.Response:
            if request.headers.get("X-Auth-Token") != "tok-admin":
                raise web.HTTPForbidden()
            return web.json_response({"cached_images": [], "queued_images": []})

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_get("/glance/v2/images", listing)
            app.router.add_get("/glance/v2/images/{id}", record)
            app.router.add_get("/glance/v2/images/{id}/file", data)
            app.router.add_get("/glance/v2/cache", cache)
            runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_corrupt_upstream_bytes_are_never_served_or_stored(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    image = GlanceImage(id="11111111-2222-3333-4444-555555555555", name="bad", visibility="public",
                        size=len(data), checksum=hashlib.md5(data).hexdigest(),
                        os_hash_algo="sha512", os_hash_value=hashlib.sha512(data).hexdigest(),
                        created_at="2026-01-01T00:00:00Z", updated_at="2026-01-01T00:00:00Z")
    fake = FakeGlance(data, image).start()
    try:
        with GlanceNode(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         fake.url, "--upstream-retries", "0"], tmp_path / "c.log") as cache:
            url = f"{cache.glance}/v2/images/{image.id}/file"

            async def fetch() -> tuple[int, int, bool]:
                async with aiohttp.ClientSession() as session, \
                        session.get(url, headers={"X-Auth-Token": "tok-a"}) as resp:
                    got = 0
                    try:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            got += len(chunk)
                    except aiohttp.ClientPayloadError:
                        return resp.status, got, False
                    return resp.status, got, True

            status, got, complete = asyncio.run(fetch())
            assert not complete and got < len(data), (status, got)
            doc = json.loads(_req(cache, "GET", "/v2/cache", "tok-admin")[1])
            assert doc["cached_images"] == []
            assert not list((tmp_path / "c" / "store" / "partial").iterdir())
            blobs = (tmp_path / "c" / "store" / "blobs").rglob("*")
            assert all(b.stat().st_size != len(data) for b in blobs if b.is_file())
            m = cache.metrics()
            assert m[("edgedepot_verify_failures_total", "glance")] >= 1
            # Asking again fetches again (nothing was kept) and fails again.
            status, got, complete = asyncio.run(fetch())
            assert not complete and fake.file_requests == 2
    finally:
        fake.stop()


def test_upstream_down_offline_policy(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _make_images(images)
    ids = {d.image.name: d.image.id for d in load_image_directory(images, DigestMemo(None)).images}
    origin = GlanceNode(["--role", "origin", "--store", str(tmp_path / "o"), "--images",
                         str(images)], tmp_path / "o.log").start()
    try:
        with GlanceNode(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         origin.url, "--glance-auth-ttl", "0", "--upstream-retries", "0",
                         "--upstream-connect-timeout", "2"], tmp_path / "c.log") as cache:
            for name in ("cirros", "private-a"):
                assert _get(cache, f"/v2/images/{ids[name]}/file", "tok-a")[0] == 200
            origin.stop()
            status, body, headers = _get(cache, f"/v2/images/{ids['cirros']}/file", "tok-a")
            assert status == 200 and headers.get("X-Edgedepot-Offline") == "1"
            assert body == (images / "cirros.img").read_bytes()
            status, body, headers = _get(cache, "/v2/images", "tok-a")
            assert status == 200 and headers.get("X-Edgedepot-Offline") == "1"
            assert _names(body) == ["cirros"]
            # Private images are not served offline under the default policy; nor uncached ones.
            assert _get(cache, f"/v2/images/{ids['private-a']}/file", "tok-a")[0] == 503
            assert _get(cache, f"/v2/images/{ids['debian-12.1']}/file", "tok-a")[0] == 503
    finally:
        origin.stop()
