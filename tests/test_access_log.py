"""The access log of a real cache: one parsed line per request, with the cache status each
answer really had (miss, coalesced, hit, stale), in both formats, to a file or stdout."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cache_node.access_log import AccessEntry, AccessLog
from distro.debian_repo import BuiltRepository
from tests.plugin.support import FakeUpstream, Fault, NodeProcess

pytestmark = pytest.mark.integration

FIELDS = ("time", "client", "method", "path", "status", "bytes", "duration", "cache")


def parse(line: str, fmt: str) -> dict[str, object]:
    """A log line, read the way an operator's tooling would (not with the node's code)."""
    if fmt == "json":
        entry = json.loads(line)
        assert set(entry) == set(FIELDS), entry
        return dict(entry)
    fields = line.split(" ")
    assert len(fields) == len(FIELDS), line
    entry = dict(zip(FIELDS, fields, strict=True))
    return {**entry, "status": int(fields[4]), "bytes": int(fields[5]),
            "duration": float(fields[6])}


@pytest.fixture
def upstream(sample_tree: BuiltRepository, tmp_path: Path) -> Iterator[FakeUpstream]:
    root = tmp_path / "tree"
    shutil.copytree(sample_tree.root, root)
    fake = FakeUpstream(root).start()
    yield fake
    fake.stop()


def _get_in_thread(node: NodeProcess, path: str, out: list[int]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(node.get(path)[0]))
    thread.start()
    return thread


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_cache_status_of_every_answer(upstream: FakeUpstream, sample_tree: BuiltRepository,
                                      tmp_path: Path, fmt: str) -> None:
    log = tmp_path / "access.log"
    pool = sorted(sample_tree.packages, key=lambda p: p.size)[-1]
    upstream.faults[pool.filename] = Fault(delay=1.0)  # the first fetch runs a while
    with NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                      upstream.url, "--index-ttl", "1", "--upstream-retries", "0",
                      "--access-log", str(log), "--access-log-format", fmt],
                     tmp_path / "cache.log") as cache:
        base = "/apt/main/"
        assert cache.get(base + "dists/stable/InRelease")[0] == 200
        assert cache.get(base + "dists/stable/main/binary-amd64/Packages.xz")[0] == 200
        statuses: list[int] = []
        first = _get_in_thread(cache, base + pool.filename, statuses)
        time.sleep(0.4)  # the first request's fetch is waiting on the slow upstream
        second = _get_in_thread(cache, base + pool.filename, statuses)
        first.join(30)
        second.join(30)
        assert statuses == [200, 200]
        assert cache.get(base + pool.filename)[0] == 200
        assert cache.get(base + "no/such/file")[0] == 404
        upstream.down = True
        time.sleep(1.2)  # past the index TTL: revalidation fails, the snapshot is stale
        status, _, headers = cache.get(base + "dists/stable/InRelease")
        assert status == 200 and headers.get("X-Edgedepot-Stale") == "1"
        time.sleep(0.2)
        entries = [parse(line, fmt) for line in log.read_text().splitlines()]
    assert len(entries) == 7, entries
    assert all(e["client"] == "127.0.0.1" and e["method"] == "GET" for e in entries)
    assert all(str(e["time"]).endswith("Z") for e in entries)
    release, index, miss, coalesced, hit, missing, stale = entries
    assert (release["path"], release["cache"], release["status"]) == \
        (base + "dists/stable/InRelease", "hit", 200)
    assert index["cache"] == "miss" and str(index["path"]).endswith("Packages.xz")
    for entry in (miss, coalesced, hit):
        assert entry["path"] == base + pool.filename
        assert entry["status"] == 200 and entry["bytes"] == pool.size, entry
    assert miss["cache"] == "miss" and coalesced["cache"] == "coalesced"
    assert float(str(miss["duration"])) >= 0.9  # the upstream's delay is part of the answer
    assert hit["cache"] == "hit"
    assert (missing["status"], missing["cache"]) == (404, "-")
    assert stale["cache"] == "stale" and stale["bytes"] == release["bytes"]
    assert int(str(release["bytes"])) > 0
    assert upstream.count(pool.filename) == 1  # coalesced: one upstream request


def test_access_log_to_standard_output(upstream: FakeUpstream, tmp_path: Path) -> None:
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         upstream.url, "--access-log", "-"], tmp_path / "cache.log").start()
    try:
        assert cache.get("/apt/main/dists/stable/InRelease")[0] == 200
        assert cache.get("/healthz")[0] == 200
        assert cache.proc is not None and cache.proc.stdout is not None
        cache.proc.send_signal(signal.SIGTERM)
        out = cache.proc.stdout.read()
    finally:
        cache.stop()
    entries = [parse(line, "text") for line in out.splitlines()]
    assert [(e["path"], e["status"]) for e in entries] == \
        [("/apt/main/dists/stable/InRelease", 200), ("/healthz", 200)]


def test_reopen_after_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLog(str(path), "json")
    sink.open()
    entry = AccessEntry("2026-01-01T00:00:00.000Z", "127.0.0.1", "GET", "/a", 200, 1, 0.1, "hit")
    sink.write(entry)
    path.rename(tmp_path / "access.log.1")  # logrotate
    sink.write(entry)  # still into the renamed file until reopened
    sink.reopen()
    sink.write(AccessEntry(entry.time, entry.client, "HEAD", "/b", 200, 0, 0.0, "-"))
    sink.close()
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 2
    assert [json.loads(line)["path"] for line in path.read_text().splitlines()] == ["/b"]


def test_odd_paths_stay_one_field(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = AccessLog(str(path), "text")
    sink.open()
    from cache_node.access_log import _printable

    sink.write(AccessEntry("t", "c", "GET", _printable("/a b\nc\x00"), 400, 0, 0.0, "-"))
    sink.close()
    line = path.read_text()
    assert line.count("\n") == 1 and len(line.split(" ")) == len(FIELDS)
    assert "/a%20b%0Ac%00" in line
