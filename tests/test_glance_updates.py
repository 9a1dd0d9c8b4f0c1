"""Image updates that do not wait for the origin: real origin and cache processes on loopback.

The origin serves an image directory; a new version dropped into it is noticed and its patch
against the previous version prepared before any cache asks. The cache reaches the origin
through `HoldingProxy`, which can hold back the rest of a patch after its first bytes: the test
then sees the client stream the image while the cache is still rebuilding it (the last byte
held until verified), and a cache killed mid-delta resume after its restart.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distro.glance_images import DigestMemo, load_image_directory, write_image
from tests.plugin.glance_node import GlanceNode

pytestmark = pytest.mark.integration

MIB = 1 << 20
SIZE = 64 * MIB  # with its predecessor above the one-segment limit: a segmented patch
GUARD = 90.0  # seconds: hang guards, not timing assertions
PROPS = {"os_distro": "edgeos", "os_version": "1"}
PATCHES = ("edgedepot_delta_computed_total", "delta-patch")
DELTA_FETCHES = ("edgedepot_delta_fetches_total", "glance")
RESUMED = ("edgedepot_delta_resumed_bytes_total", "glance")
UPSTREAM_BYTES = ("edgedepot_upstream_bytes_total", "glance")


def next_version(data: bytes, seed: int) -> bytes:
    """Scattered 8 KiB rewrites all through the image and one insertion."""
    rnd = random.Random(seed)
    out = bytearray(data)
    for k in range(48):
        at = (k * len(data)) // 48 + rnd.randrange(0, 1 << 16)
        out[at:at + 8192] = rnd.randbytes(8192)
    out[len(out) // 3:len(out) // 3] = rnd.randbytes(20_000)
    return bytes(out[:len(data)])


class HoldingProxy:
    """A loopback HTTP/1.1 proxy in front of the origin (TCP, reading just enough of each
    response to frame it). While it is armed, the body of a delta patch (by its content type)
    is forwarded up to `budget` bytes, the rest once it is released."""

    def __init__(self, port: int) -> None:
        self.port_to = port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.budget: int | None = None
        self.released = threading.Event()
        self.released.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, budget: int) -> None:
        self.budget = budget
        self.released.clear()

    def release(self) -> None:
        self.budget = None
        self.released.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.port_to))

        def up() -> None:
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:  # a response head
                    data = upstream.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                client.sendall(head + b"\r\n\r\n")
                fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:]
                              if b":" in line)
                fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
                if b"content-length" not in fields:  # not framed: pass the rest through
                    client.sendall(buf)
                    while data := upstream.recv(65536):
                        client.sendall(data)
                    return
                left = int(fields[b"content-length"])
                budget = self.budget if b"delta-patch" in fields.get(b"content-type", b"") \
                    else None
                sent = 0
                while left:
                    if not buf:
                        buf = upstream.recv(4096)
                        if not buf:
                            return
                    piece, buf = buf[:min(left, 4096)], buf[min(left, 4096):]
                    if budget is not None and sent + len(piece) > budget:
                        self.released.wait()
                    client.sendall(piece)
                    sent += len(piece)
                    left -= len(piece)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self.release()
        self.sock.close()


@dataclass
class Stack:
    work: Path
    images: Path
    origin: GlanceNode
    proxy: HoldingProxy
    cache: GlanceNode
    data: dict[str, bytes] = field(default_factory=dict)

    def ids(self) -> dict[str, str]:
        return {d.image.name or "": d.image.id for d in
                load_image_directory(self.images, DigestMemo(None)).images}

    def add(self, name: str, data: bytes, created: str) -> None:
        write_image(self.images, name, data, visibility="public", properties=PROPS,
                    created_at=created)
        self.data[name] = data

    def file_url(self, name: str) -> str:
        return f"{self.cache.glance}/v2/images/{self.ids()[name]}/file"

    def download(self, name: str) -> bytes:
        with urllib.request.urlopen(self.file_url(name), timeout=GUARD) as resp:
            data: bytes = resp.read()
        assert data == self.data[name]
        return data

    def sha(self, name: str) -> str:
        return hashlib.sha256(self.data[name]).hexdigest()

    def patch_size(self, new: str, old: str) -> int:
        _, body, _ = self.origin.get(f"/delta/v1/blobs/{self.sha(new)}/offer?"
                                     f"basis={self.sha(old)}")
        offer = json.loads(body)
        assert offer["patch"]["state"] == "ready", offer
        return int(offer["patch"]["size"])

    def start_cache(self) -> None:
        self.cache = GlanceNode(["--role", "cache", "--store", str(self.work / "cache"),
                                 "--upstream", self.proxy.url], self.work / "cache.log").start()


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + GUARD
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("glance-updates")
    images = work / "images"
    v1 = random.Random(7).randbytes(SIZE)
    write_image(images, "edgeos-1.0", v1, visibility="public", properties=PROPS,
                created_at="2026-01-01T00:00:00Z")
    with GlanceNode(["--role", "origin", "--store", str(work / "origin"), "--images",
                     str(images)], work / "origin.log") as origin:
        proxy = HoldingProxy(int(origin.url.rsplit(":", 1)[1]))
        stack = Stack(work, images, origin, proxy, GlanceNode([], work / "unused.log"))
        stack.data["edgeos-1.0"] = v1
        stack.start_cache()
        try:
            yield stack
        finally:
            stack.cache.stop()
            proxy.close()


def test_origin_prepares_the_patch_of_a_new_version(stack: Stack) -> None:
    stack.download("edgeos-1.0")  # the cache holds the family's current version
    assert stack.origin.metrics().get(PATCHES, 0) == 0
    stack.add("edgeos-1.1", next_version(stack.data["edgeos-1.0"], 1), "2026-02-01T00:00:00Z")
    # Nobody asks for it: the origin notices the new version and prepares its patch.
    wait_for("the origin to prepare the patch",
             lambda: stack.origin.metrics().get(PATCHES, 0) >= 1)


def test_clients_stream_an_image_while_it_is_rebuilt(stack: Stack) -> None:
    patch = stack.patch_size("edgeos-1.1", "edgeos-1.0")
    before = stack.cache.metrics().get(DELTA_FETCHES, 0)
    stack.proxy.arm(budget=patch // 2)  # the cache's delta connections stop half-way
    received: list[int] = [0]
    chunks: list[bytes] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with urllib.request.urlopen(stack.file_url("edgeos-1.1"), timeout=GUARD) as resp:
                while chunk := resp.read(1 << 16):
                    chunks.append(chunk)
                    received[0] += len(chunk)
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=client)
    reader.start()
    try:
        wait_for("the first megabytes of the image", lambda: received[0] >= 2 * MIB)
        # Half the patch is held back: the image cannot be complete, yet bytes flow.
        assert reader.is_alive() and received[0] < SIZE
    finally:
        stack.proxy.release()
        reader.join(GUARD)
    assert not errors, errors
    assert b"".join(chunks) == stack.data["edgeos-1.1"]
    assert stack.cache.metrics().get(DELTA_FETCHES, 0) == before + 1
    image_id = stack.ids()["edgeos-1.1"]
    served = stack.origin.served()
    assert served.get(f"/glance/v2/images/{image_id}/file", 0) == 0
    # the record came with its data's sha256: no digest request before the patch
    assert served.get(f"/glance/v2/images/{image_id}", 0) >= 1
    assert served.get(f"/glance/edgedepot/v1/images/{image_id}/digest", 0) == 0
    assert stack.origin.metrics().get(PATCHES, 0) == 1  # the prepared one, not another


def test_an_interrupted_image_delta_resumes_after_a_restart(stack: Stack) -> None:
    stack.add("edgeos-1.2", next_version(stack.data["edgeos-1.1"], 2), "2026-03-01T00:00:00Z")
    wait_for("the origin to prepare the patch",
             lambda: stack.origin.metrics().get(PATCHES, 0) >= 2)
    patch = stack.patch_size("edgeos-1.2", "edgeos-1.1")
    spool = stack.work / "cache" / "delta-work" / "glance" / \
        f"{stack.sha('edgeos-1.2')}.delta-out.delta-spool"
    stack.proxy.arm(budget=patch // 2)

    def client() -> None:
        try:
            with urllib.request.urlopen(stack.file_url("edgeos-1.2"), timeout=GUARD) as resp:
                resp.read()
        except (OSError, http.client.HTTPException):
            pass  # the cache is killed under it

    reader = threading.Thread(target=client)
    reader.start()
    wait_for("part of the patch to arrive", lambda: spool.exists() and
             spool.stat().st_size > patch // 4)
    stack.cache.kill9()
    stack.proxy.release()
    reader.join(GUARD)
    kept = spool.stat().st_size
    assert 0 < kept < patch
    stack.start_cache()
    stack.download("edgeos-1.2")  # verified against the record
    metrics = stack.cache.metrics()
    assert metrics.get(DELTA_FETCHES, 0) == 1
    assert metrics.get(RESUMED, 0) == kept
    # Only the rest of the patch crossed again (plus records and digests, a few kB).
    assert metrics.get(UPSTREAM_BYTES, 0) < patch - kept + 64 * 1024
    assert not spool.exists()
