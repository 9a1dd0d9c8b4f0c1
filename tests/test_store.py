"""Unit tests of the content-addressed store."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache_node.store import BlobStore
from distro.errors import IntegrityError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    s = BlobStore(tmp_path / "store")
    s.open()
    return s


def test_put_verifies_and_names_map(store: BlobStore) -> None:
    ref = store.put_bytes(b"hello", sha(b"hello"))
    store.bind("ns", "a/b", ref.digest)
    assert store.lookup("ns", "a/b") == ref
    assert store.read_bytes(ref.digest) == b"hello"
    assert store.stats().blob_count == 1 and store.stats().total_bytes == 5


def test_wrong_digest_is_never_kept(store: BlobStore) -> None:
    with pytest.raises(IntegrityError):
        store.put_bytes(b"evil", sha(b"good"))
    assert store.stats().blob_count == 0
    assert not list(store.partial_dir.iterdir())
    assert not store.has(sha(b"evil"))


def test_wrong_size_is_never_kept(store: BlobStore) -> None:
    partial = store.new_partial()
    partial.write(b"abc")
    with pytest.raises(IntegrityError):
        store.commit(partial, sha(b"abc"), 4)
    assert store.stats().blob_count == 0


def test_partials_are_removed_at_open_unless_a_live_writer_holds_them(tmp_path: Path) -> None:
    """A partial whose writer died is removed when a store opens; one that another worker
    process is still writing (it holds the lock) is left alone."""
    s = BlobStore(tmp_path / "s")
    s.open()
    dead = s.new_partial()
    dead.write(b"half a download")
    os.close(dead._fd)  # the writer is gone (killed): its lock is released with its fd
    live = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(s.partial_dir / 'live.part')!r}, os.O_WRONLY | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(30)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and live.stdout.readline() == "locked\n"
        s.close()
        s2 = BlobStore(tmp_path / "s")
        s2.open()
        assert [p.name for p in s2.partial_dir.iterdir()] == ["live.part"]
    finally:
        live.kill()
        live.wait()


def test_lru_eviction_respects_pins_and_recency(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "s", quota_bytes=300)
    s.open()
    a = s.put_bytes(b"a" * 100)
    b = s.put_bytes(b"b" * 100)
    s.pin(a.digest)
    c = s.put_bytes(b"c" * 100)
    s.get(b.digest)  # b is now more recent than c
    d = s.put_bytes(b"d" * 100)
    assert s.has(a.digest), "pinned"
    assert s.has(b.digest) and s.has(d.digest)
    assert not s.has(c.digest), "least recently used, unpinned"
    assert s.stats().total_bytes <= 300


def test_fsck_finds_corruption_and_missing(store: BlobStore) -> None:
    good = store.put_bytes(b"good bytes")
    bad = store.put_bytes(b"soon corrupt")
    gone = store.put_bytes(b"soon missing")
    store.bind("ns", "bad", bad.digest)
    store.blob_path(bad.digest).write_bytes(b"flipped")
    store.blob_path(gone.digest).unlink()
    report = store.fsck()
    assert report.bad == (bad.digest,) and report.missing == (gone.digest,)
    assert store.has(good.digest) and not store.has(bad.digest)
    assert store.lookup("ns", "bad") is None
    assert store.fsck().ok


def test_restart_keeps_blobs_and_names(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "s")
    s.open()
    ref = s.put_bytes(b"persist me")
    s.bind("ns", "x", ref.digest)
    s.close()
    s2 = BlobStore(tmp_path / "s")
    s2.open()
    assert s2.lookup("ns", "x") == ref and s2.stats().blob_count == 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=2000), max_size=8), st.integers(100, 5000))
def test_quota_is_never_exceeded(tmp_path_factory: pytest.TempPathFactory, blobs: list[bytes],
                                 quota: int) -> None:
    s = BlobStore(tmp_path_factory.mktemp("q"), quota_bytes=quota)
    s.open()
    for data in blobs:
        ref = s.put_bytes(data, sha(data))
        assert s.read_bytes(ref.digest) == data
        others = s.stats().total_bytes - (ref.size if s.has(ref.digest) else 0)
        assert others <= quota or s.stats().blob_count == 1
    s.close()
