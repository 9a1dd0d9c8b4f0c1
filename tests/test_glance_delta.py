"""A cache fetches a new image as a delta against a cached older image of the same family.

Origin (`--images DIR`) and a cache in front of it, real processes on loopback. The origin
serves delta signatures and patches for its own image files (`Node.locate_blob` asks
`GlanceService.path_for_digest`), the cache learns the new image's sha256 from
`/glance/edgedepot/v1/images/{id}/digest` and builds it with the delta client.
"""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache_node.glance_delta import Basis, check_image, pick_basis
from cache_node.store import BlobRef
from distro.glance_images import (
    DigestMemo,
    GlanceImage,
    family_key,
    load_image_directory,
    write_image,
)
from tests.plugin.glance_node import GlanceNode

pytestmark = pytest.mark.integration

MIB = 1 << 20
DELTA_FETCHES = ("edgedepot_delta_fetches_total", "glance")
UPSTREAM_BYTES = ("edgedepot_upstream_bytes_total", "glance")


def make_pair(seed: int, size: int) -> tuple[bytes, bytes]:
    """v1: pseudo-random bytes; v2: v1 with a few scattered 4 KiB changes and one insertion."""
    rnd = random.Random(seed)
    v1 = rnd.randbytes(size)
    v2 = bytearray(v1)
    for _ in range(6):
        at = rnd.randrange(0, size - 4096)
        v2[at:at + 4096] = rnd.randbytes(4096)
    at = size * 2 // 5
    v2[at:at] = rnd.randbytes(64 << 10)
    return v1, bytes(v2)


@dataclass(frozen=True)
class Stack:
    images: Path
    origin: GlanceNode
    cache: GlanceNode
    ids: dict[str, str]
    sizes: dict[str, int]

    def record(self, name: str) -> dict[str, object]:
        with urllib.request.urlopen(f"{self.cache.glance}/v2/images/{self.ids[name]}") as r:
            doc: dict[str, object] = json.loads(r.read())
        return doc

    def download(self, name: str) -> bytes:
        """Plain HTTP through the cache; checked against the record's md5 and sha512."""
        with urllib.request.urlopen(f"{self.cache.glance}/v2/images/{self.ids[name]}/file",
                                    timeout=120) as resp:
            data: bytes = resp.read()
        check(self.record(name), data)
        return data

    def whole_downloads(self, name: str) -> int:
        return self.origin.served().get(f"/glance/v2/images/{self.ids[name]}/file", 0)

    def digest(self, name: str) -> str:
        url = f"{self.cache.glance}/edgedepot/v1/images/{self.ids[name]}/digest"
        with urllib.request.urlopen(url) as resp:
            return str(json.loads(resp.read())["sha256"])


def check(record: dict[str, object], data: bytes) -> None:
    assert len(data) == record["size"]
    assert hashlib.md5(data).hexdigest() == record["checksum"]
    assert record["os_hash_algo"] == "sha512"
    assert hashlib.sha512(data).hexdigest() == record["os_hash_value"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("glance-delta")
    images = work / "images"
    v1, v2 = make_pair(1, 16 * MIB)
    props = {"os_distro": "ubuntu", "os_version": "24.04"}
    write_image(images, "ubuntu-24.04-20260101", v1, visibility="public", properties=props,
                created_at="2026-01-01T00:00:00Z")
    write_image(images, "ubuntu-24.04-20260201", v2, visibility="public", properties=props,
                created_at="2026-02-01T00:00:00Z")
    _, v3 = make_pair(2, len(v2))
    v3 = v2[: 5 * MIB] + v3[:8192] + v2[5 * MIB:]
    write_image(images, "ubuntu-24.04-20260301", v3, visibility="public", properties=props,
                created_at="2026-03-01T00:00:00Z")
    w1, w2 = make_pair(3, 4 * MIB)
    write_image(images, "fedora-40.1", w1, visibility="public", created_at="2026-01-01T00:00:00Z")
    write_image(images, "fedora-40.2", w2, visibility="public", created_at="2026-02-01T00:00:00Z")
    write_image(images, "cirros-0.6.2", random.Random(4).randbytes(2 * MIB),
                visibility="public", created_at="2026-01-01T00:00:00Z")
    loaded = load_image_directory(images, DigestMemo(None)).images
    ids = {d.image.name or "": d.image.id for d in loaded}
    sizes = {d.image.name or "": d.image.size or 0 for d in loaded}
    assert len({family_key(d.image) for d in loaded}) == 3
    with GlanceNode(["--role", "origin", "--store", str(work / "origin"), "--images",
                     str(images)], work / "origin.log") as origin, \
         GlanceNode(["--role", "cache", "--store", str(work / "cache"), "--upstream",
                     origin.url], work / "cache.log") as cache:
        yield Stack(images, origin, cache, ids, sizes)


def test_update_arrives_by_delta(stack: Stack) -> None:
    stack.download("ubuntu-24.04-20260101")
    assert stack.whole_downloads("ubuntu-24.04-20260101") == 1
    before = stack.cache.metrics()
    served_before = stack.origin.served()
    from glanceclient import Client

    client = Client("2", endpoint=stack.cache.glance, token="")
    data = b"".join(client.images.data(stack.ids["ubuntu-24.04-20260201"]))  # checks md5
    check(stack.record("ubuntu-24.04-20260201"), data)
    after = stack.cache.metrics()
    assert after.get(DELTA_FETCHES, 0) == before.get(DELTA_FETCHES, 0) + 1
    assert stack.whole_downloads("ubuntu-24.04-20260201") == 0
    sha = stack.digest("ubuntu-24.04-20260201")
    delta_paths = {p: n - served_before.get(p, 0) for p, n in stack.origin.served().items()
                   if p.startswith(f"/delta/v1/blobs/{sha}")}
    assert sum(delta_paths.values()) >= 1, delta_paths
    moved = after.get(UPSTREAM_BYTES, 0) - before.get(UPSTREAM_BYTES, 0)
    assert moved < stack.sizes["ubuntu-24.04-20260201"] / 20, moved
    # Served from the store from now on.
    assert stack.download("ubuntu-24.04-20260201") == data


def test_concurrent_requests_share_one_delta(stack: Stack) -> None:
    stack.download("ubuntu-24.04-20260201")  # the basis (cached already by the test above)
    before = stack.cache.metrics().get(DELTA_FETCHES, 0)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _i: stack.download("ubuntu-24.04-20260301"), range(6)))
    assert len({hashlib.sha256(r).hexdigest() for r in results}) == 1
    assert stack.cache.metrics().get(DELTA_FETCHES, 0) == before + 1
    assert stack.whole_downloads("ubuntu-24.04-20260301") == 0


def test_other_family_is_fetched_whole(stack: Stack) -> None:
    before = stack.cache.metrics().get(DELTA_FETCHES, 0)
    stack.download("cirros-0.6.2")
    assert stack.whole_downloads("cirros-0.6.2") == 1
    assert stack.cache.metrics().get(DELTA_FETCHES, 0) == before


def test_corrupted_basis_falls_back_to_whole_fetch(stack: Stack) -> None:
    stack.download("fedora-40.1")
    sha = stack.digest("fedora-40.1")
    blob = Path(stack.cache.args[stack.cache.args.index("--store") + 1]) / "store" / "blobs" \
        / "sha256" / sha[:2] / sha
    with open(blob, "r+b") as fh:  # bit rot in the cached basis, same size
        fh.seek(1 * MIB)
        fh.write(bytes(64 << 10))
    before = stack.cache.metrics().get(DELTA_FETCHES, 0)
    stack.download("fedora-40.2")  # verified against the record
    assert stack.whole_downloads("fedora-40.2") == 1
    assert stack.cache.metrics().get(DELTA_FETCHES, 0) == before
    # The rotten basis was found out and dropped: v1 is fetched again and correct (by delta
    # against the now cached v2, the family's other member).
    assert not blob.exists()
    stack.download("fedora-40.1")
    assert stack.whole_downloads("fedora-40.1") == 1
    assert stack.cache.metrics().get(DELTA_FETCHES, 0) == before + 1


def test_origin_serves_delta_for_its_image_files(stack: Stack) -> None:
    sha = stack.digest("cirros-0.6.2")
    status, body, _ = stack.origin.get(f"/delta/v1/blobs/{sha}/signature")
    assert status == 200 and body.startswith(b"EDSIG")
    status, _, _ = stack.origin.get("/delta/v1/blobs/" + "0" * 64 + "/signature")
    assert status == 404


def test_pick_basis_prefers_the_newest_of_the_family() -> None:
    def img(i: int, name: str, created: str, **props: str) -> Basis:
        image = GlanceImage(id=f"id-{i}", name=name, created_at=created, size=100,
                            properties=tuple(sorted(props.items())))
        return Basis(image, BlobRef(f"{i:064x}", 100))

    new = img(0, "debian-12.5", "2026-05-01", os_distro="debian", os_version="12").image
    cached = [img(1, "debian-12.3", "2026-03-01", os_distro="debian", os_version="12"),
              img(2, "debian-12.4", "2026-04-01", os_distro="debian", os_version="12"),
              img(3, "debian-13.0", "2026-06-01", os_distro="debian", os_version="13"),
              img(4, "other", "2026-07-01", edgedepot_family="x")]
    chosen = pick_basis(new, cached)
    assert chosen is not None and chosen.image.id == "id-2"
    assert pick_basis(img(5, "cirros-0.6", "2026-01-01").image, cached) is None
    assert pick_basis(cached[1].image, cached[1:2]) is None  # never itself


def test_check_image() -> None:
    data = b"image bytes"
    md5, sha512 = hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()
    good = GlanceImage(id="i", name="n", size=len(data), checksum=md5, os_hash_algo="sha512",
                       os_hash_value=sha512)
    both = {"md5": md5, "sha512": sha512}
    assert check_image(good, len(data), both) is None
    assert "size" in (check_image(good, 3, both) or "")
    # With a multihash, it decides (as glanceclient does); md5 is the fallback without one.
    assert "sha512" in (check_image(good, len(data), {**both, "sha512": "0" * 128}) or "")
    assert "sha512" in (check_image(good, len(data), {"md5": md5}) or "")  # missing: refused
    legacy = GlanceImage(id="i", name="n", size=len(data), checksum=md5)
    assert check_image(legacy, len(data), {"md5": md5}) is None
    assert "md5" in (check_image(legacy, len(data), {"md5": "0" * 32}) or "")
    odd = GlanceImage(id="i", name="n", size=len(data), os_hash_algo="whirlpool-x",
                      os_hash_value="ab")
    assert "unsupported" in (check_image(odd, len(data), both) or "")
