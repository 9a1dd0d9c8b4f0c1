"""The plain listener's fast path (`cache_node.hot_path`) against a real cache node process:
it repeats exactly what the framework answered (status, headers, bytes), counts and logs it
the same way, hands anything else to aiohttp on the same connection (conditional requests,
HEAD, Range, pipelined and split requests, refused clients), and never outlives a change: a
new upstream snapshot is served as soon as the TTL asks the upstream again."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache_node.hot_path import HotAnswers, HotEntry, response_head
from distro.debian_repo import BuiltRepository, build_repository, parse_release
from syncer.demo.sample_repo import SampleAptRepo, SampleDeb, build_deb
from tests.plugin.pki import FleetPki
from tests.plugin.support import FakeUpstream, NodeProcess

INRELEASE = "/apt/main/dists/stable/InRelease"
PACKAGES = "/apt/main/dists/stable/main/binary-amd64/Packages"
HOT = ("edgedepot_hot_answers_total", "apt/main")


@pytest.fixture
def tree(sample_tree: BuiltRepository, tmp_path: Path) -> BuiltRepository:
    root = tmp_path / "tree"
    shutil.copytree(sample_tree.root, root)
    return BuiltRepository(root, sample_tree.suite, sample_tree.packages, sample_tree.release)


@pytest.fixture
def upstream(tree: BuiltRepository) -> Iterator[FakeUpstream]:
    server = FakeUpstream(tree.root).start()
    yield server
    server.stop()


@pytest.fixture
def node(upstream: FakeUpstream, tmp_path: Path) -> Iterator[NodeProcess]:
    proc = NodeProcess(["--role", "cache", "--store", str(tmp_path / "cache"), "--upstream",
                        upstream.url, "--index-ttl", "2", "--access-log",
                        str(tmp_path / "access.log"), "--allow", "127.0.0.1/32"],
                       tmp_path / "cache.log", workers=1)
    with proc:
        yield proc


class Conn:
    """One keep-alive connection, raw bytes both ways (to pipeline and split requests)."""

    def __init__(self, node: NodeProcess, source: str = "127.0.0.1") -> None:
        port = int(node.url.rsplit(":", 1)[1])
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30,
                                             source_address=(source, 0))
        self.pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response on the connection (Content-Length framed)."""
        while b"\r\n\r\n" not in self.pending:
            self._recv()
        head, _, rest = self.pending.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        self.pending = rest[length:]
        return status, headers, rest[:length]

    def _recv(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("connection closed")
        self.pending += chunk

    def closed(self) -> bool:
        self.sock.settimeout(5)
        try:
            return not self.pending and self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: cache\r\n{extra}\r\n".encode()


def comparable(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", "server", "connection",
                                                          "keep-alive")}


def hot(node: NodeProcess) -> float:
    return node.metrics().get(HOT, 0.0)


def test_repeats_the_framework_answer_and_counts_it(node: NodeProcess, tmp_path: Path) -> None:
    conn = Conn(node)
    try:
        conn.send(get(INRELEASE))
        first = conn.response()  # the framework answered (and offered it to the fast path)
        assert first[0] == 200 and hot(node) == 0
        for _ in range(3):
            conn.send(get(INRELEASE))
            again = conn.response()
            assert again[0] == 200 and again[2] == first[2]
            assert comparable(again[1]) == comparable(first[1])
            assert "date" in again[1]
            time.sleep(0.05)  # (a request that comes before aiohttp waits again is its own)
        assert hot(node) >= 2
        # several requests in one packet, and one request split over three
        conn.send(get(INRELEASE) + get(INRELEASE))
        assert [conn.response()[2] for _ in range(2)] == [first[2]] * 2
        time.sleep(0.05)
        request = get(INRELEASE)
        for part in (request[:7], request[7:30], request[30:]):
            conn.send(part)
            time.sleep(0.05)
        assert conn.response()[2] == first[2]
        assert hot(node) >= 5
    finally:
        conn.close()
    metrics = node.metrics()
    assert metrics[("edgedepot_requests_total", "apt/main")] == 7
    assert metrics[("edgedepot_served_bytes_total", "apt/main")] == 7 * len(first[2])
    log = [line.split() for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [(e[1], e[2], e[3], e[4], e[5]) for e in log if e[3] == INRELEASE] == \
        [("127.0.0.1", "GET", INRELEASE, "200", str(len(first[2])))] * 7
    status, body, _ = node.get("/admin/clients")
    counts = {c["address"]: c["requests"] for c in json.loads(body)["clients"]}
    assert counts.get("127.0.0.1", 0) >= 7


def test_anything_else_goes_to_the_framework_on_the_same_connection(node: NodeProcess) -> None:
    conn = Conn(node)
    try:
        conn.send(get(INRELEASE))
        status, headers, body = conn.response()
        etag = headers["etag"]
        served = hot(node)
        # a conditional request: 304 from the framework, which keeps the connection
        conn.send(get(INRELEASE, f"If-None-Match: {etag}\r\n"))
        assert conn.response()[0] == 304
        conn.send(get(INRELEASE, "Range: bytes=0-9\r\n"))
        status, headers, part = conn.response()
        assert status == 206 and part == body[:10]
        conn.send(get(INRELEASE, method="HEAD"))
        conn.send(get(INRELEASE))  # pipelined behind the HEAD: answered in order
        head_status, head_headers, _ = conn.response()
        assert head_status == 200 and head_headers["etag"] == etag, head_headers
        assert conn.response()[2] == body
        assert hot(node) == served  # none of these came from the fast path
    finally:
        conn.close()
    # Connection: close is honoured by the fast path too
    conn = Conn(node)
    try:
        conn.send(get(INRELEASE, "Connection: close\r\n"))
        assert conn.response()[2] == body and conn.closed()
    finally:
        conn.close()
    # a client the allow list refuses gets the framework's 403, never a repeated answer
    refused = Conn(node, source="127.0.0.2")
    try:
        refused.send(get(INRELEASE))
        status, _, message = refused.response()
        assert status == 403 and json.loads(message)["error"] == "client_not_allowed"
    finally:
        refused.close()
    # a malformed request is the framework's to refuse
    bad = Conn(node)
    try:
        bad.send(b"GET " + INRELEASE.encode() + b" HTTP/1.1\r\nHost : x\r\n\r\n")
        assert bad.response()[0] == 400
    finally:
        bad.close()


def test_a_new_snapshot_is_served_once_the_ttl_asks_again(
        node: NodeProcess, tree: BuiltRepository, sample_apt: SampleAptRepo,
        upstream: FakeUpstream, tmp_path: Path) -> None:
    conn = Conn(node)
    try:
        conn.send(get(INRELEASE))
        old = conn.response()[2]
        conn.send(get(PACKAGES))
        assert conn.response()[0] == 200
        before = upstream.count("/dists/stable/InRelease")
        debs = tmp_path / "debs"
        shutil.copytree(sample_apt.deb_dir, debs)
        build_deb(SampleDeb("edge-hot-new", "1.0", "all", (), (), (), (), 2048, "new"), debs,
                  seed=5)
        build_repository(debs, tree.root, signing_key=sample_apt.signing_key)
        deadline = time.monotonic() + 30
        while True:  # repeated until the TTL runs out, then the new snapshot
            conn.send(get(INRELEASE))
            status, _, body = conn.response()
            assert status == 200
            if body != old:
                break
            assert time.monotonic() < deadline, "the old InRelease outlived the TTL"
            time.sleep(0.1)
        assert upstream.count("/dists/stable/InRelease") > before
        entry = parse_release(body, "InRelease").entry("main/binary-amd64/Packages")
        assert entry is not None
        for _ in range(3):  # the index by path follows the new snapshot at once
            conn.send(get(PACKAGES))
            status, _, packages = conn.response()
            assert status == 200 and hashlib.sha256(packages).hexdigest() == entry.sha256
            assert b"edge-hot-new" in packages
    finally:
        conn.close()


def test_answers_are_bounded_and_dropped_when_changed() -> None:
    current = {"ok": True}

    def entry(size: int) -> HotEntry:
        return HotEntry(b"HTTP/1.1 200 OK\r\n", b"x" * size, "apt/main", "/p", "/p",
                        lambda: current["ok"], counts_hit=True, digest=None)

    answers = HotAnswers(max_entries=3, max_bytes=100)
    for i in range(4):
        answers.offer(f"/{i}".encode(), entry(10))
    assert len(answers) == 3 and answers.get(b"/0") is None  # the oldest went first
    answers.offer(b"/big", entry(80))  # over the byte budget: older ones make room
    assert answers.get(b"/big") is not None and len(answers) == 3 and answers.get(b"/1") is None
    answers.offer(b"/huge", entry(101))  # larger than the whole budget: never held
    assert answers.get(b"/huge") is None
    current["ok"] = False  # the repository changed: the entry is gone at its next use
    assert answers.get(b"/big") is None and len(answers) == 2
    head = response_head(200, "OK", [("Content-Type", "text/plain"), ("Date", "x"),
                                     ("Content-Length", "9"), ("ETag", '"e"')], 4)
    assert head == b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: "e"\r\n' \
                   b"Content-Length: 4\r\n"


def test_wheels_over_tls_repeat_on_the_hot_path(tls_cache: NodeProcess, wheel_dir: Path,
                                                fleet_pki: FleetPki) -> None:
    """Stored pip files (here a wheel's PEP 658 metadata) never change: repeated over HTTPS
    too (the TLS listener has the same protocol in front of aiohttp's); pages, which depend
    on Accept, never are."""
    wheel = next(p for p in sorted(wheel_dir.iterdir()) if p.name.startswith("edge_agent-"))
    path = f"/pypi/local/files/edge-agent/{wheel.name}.metadata"  # small: held in memory
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(next(n for n in archive.namelist()
                                     if n.endswith(".dist-info/METADATA")))
    host, port = tls_cache.https_url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=fleet_pki.client_context(),
                                       timeout=30)
    try:
        for _ in range(5):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200 and response.read() == metadata
            time.sleep(0.05)  # let aiohttp go back to waiting between requests
        for _ in range(3):
            conn.request("GET", "/pypi/local/simple/edge-agent/")
            response = conn.getresponse()
            assert response.status == 200 and b"edge_agent" in response.read()
    finally:
        conn.close()
    metrics = tls_cache.metrics()
    assert metrics.get(("edgedepot_hot_answers_total", "pypi/local"), 0) >= 3
    assert metrics[("edgedepot_requests_total", "pypi/local")] == 8
