"""Content-addressed blob store with a SQLite name map, LRU quota and fsck.

Layout under the store root:
    blobs/sha256/ab/<hex>   verified blobs, immutable, named by their sha256
    partial/<random>        downloads in progress (never served from a listing; removed at start)
    index.sqlite            names -> digests per namespace, blob sizes, last access, pins

A blob only enters `blobs/` after its bytes hashed to the digest it was promised, were fsync'd,
and renamed into place. A blob that fails verification is deleted, never kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import queue
import sqlite3
import struct
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_node.interprocess import FileLock
from distro.digests import file_sha256, is_sha256_hex
from distro.errors import EdgedepotError, IntegrityError

log = logging.getLogger(__name__)

HASH_CHUNK = 1 << 20
PARALLEL_HASH_MIN = 256 << 10  # from a batch this large on, digests run in lane threads
LANE_BACKLOG = 8  # batches a hash lane may lag behind the writes
KNOWN_BLOBS_CACHE = 200_000


class StoreFullError(OSError, EdgedepotError):
    """The disk ran out of space while writing; nothing was stored."""

    http_status = 507


@dataclass(frozen=True)
class BlobRef:
    digest: str  # sha256 hex
    size: int


@dataclass(frozen=True)
class BoundBlob:
    """A name bound to a blob, with the blob's size and LRU access time."""

    name: str
    digest: str
    size: int
    last_access: float
    updated: float  # when the name was (re)bound


@dataclass(frozen=True)
class StoreStats:
    blob_count: int
    total_bytes: int
    quota_bytes: int | None


@dataclass(frozen=True)
class FsckReport:
    checked: int
    bad: tuple[str, ...]
    missing: tuple[str, ...]
    orphans_adopted: int

    @property
    def ok(self) -> bool:
        return not self.bad and not self.missing


class _HashLane:
    """One digest computed in its own thread, behind the writes: bytes are on disk (and
    streamable to clients) before they are hashed, and several digests run in parallel
    (hashlib releases the GIL); reading the digest waits for the lane's backlog."""

    def __init__(self, hasher: Any, name: str) -> None:
        self.hasher = hasher
        self._queue: queue.Queue[Sequence[bytes | memoryview] | None] = \
            queue.Queue(maxsize=LANE_BACKLOG)
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, name=f"hash-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunks := self._queue.get()) is not None:
            if not self._abandoned:
                _update_all(self.hasher, chunks)

    def submit(self, chunks: Sequence[bytes | memoryview]) -> None:
        self._queue.put(chunks)  # blocks the writer when the lane is far behind

    def close(self, abandon: bool = False) -> None:
        if self._thread.is_alive():
            self._abandoned = abandon
            self._queue.put(None)
            self._thread.join()


class PartialWriter:
    """An append-only partial file that computes every digest asked for in the one pass that
    writes it (sha256 always; e.g. an image's os_hash).

    Small writes are hashed inline. From the first large batch on, each digest runs in its
    own lane thread behind the writes, so the bytes reach disk (and the clients following
    the file) at the speed of the write, and a fetch that must match several digests costs
    the wall time of the slowest one, not of all of them.
    """

    def __init__(self, path: Path, extra_digests: tuple[str, ...] = (), *,
                 resume: bool = False) -> None:
        """A new partial file at `path`; with `resume`, the file at `path` (a download an
        earlier worker left, e.g. killed) is kept and its bytes hashed to continue from."""
        self.path = path
        self._hashers: dict[str, Any] = {"sha256": hashlib.sha256()}
        self._hashers.update({algo: hashlib.new(algo) for algo in extra_digests
                              if algo != "sha256"})
        self._lanes: dict[str, _HashLane] = {}
        self.size = 0
        self.closed = False
        if resume:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            while chunk := os.read(self._fd, HASH_CHUNK):
                for h in self._hashers.values():
                    h.update(chunk)
                self.size += len(chunk)
        else:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        # Held while this process writes: a worker starting meanwhile leaves the file alone.
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, data: bytes | memoryview) -> None:
        self.write_chunks((data,))

    def write_chunks(self, chunks: Sequence[bytes | memoryview]) -> None:
        """Write chunks in order and queue them for hashing; call from a worker thread for
        large batches (the write may block on disk, or on a lane far behind)."""
        total = 0
        try:
            for data in chunks:
                view = memoryview(data)
                while view:
                    n = os.write(self._fd, view)
                    view = view[n:]
                total += len(data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(
                    exc.errno, f"store disk full while writing {self.path.name}") from exc
            raise
        self.size += total
        if not self._lanes and total >= PARALLEL_HASH_MIN:
            self._lanes = {algo: _HashLane(h, algo) for algo, h in self._hashers.items()}
        if self._lanes:
            for lane in self._lanes.values():
                lane.submit(chunks)
        else:
            for h in self._hashers.values():
                _update_all(h, chunks)

    def _drain(self) -> None:
        for lane in self._lanes.values():
            lane.close()

    def hexdigest(self) -> str:
        """The sha256 of everything written (waits for the hash lanes)."""
        self._drain()
        return str(self._hashers["sha256"].hexdigest())

    def drop_digests(self, algos: tuple[str, ...]) -> None:
        """Stop computing digests the upstream tier vouched for (before the first write)."""
        for algo in algos:
            if algo != "sha256":
                self._hashers.pop(algo, None)

    def hexdigests(self) -> dict[str, str]:
        """Every digest computed, by hashlib name (waits for the hash lanes)."""
        self._drain()
        return {algo: str(h.hexdigest()) for algo, h in self._hashers.items()}

    def finish(self) -> None:
        """fsync and close; call before committing."""
        if not self.closed:
            self._drain()
            os.fsync(self._fd)
            os.close(self._fd)
            self.closed = True

    def discard(self) -> None:
        for lane in self._lanes.values():
            lane.close(abandon=True)
        if not self.closed:
            os.close(self._fd)
            self.closed = True
        self.path.unlink(missing_ok=True)


def _update_all(hasher: Any, chunks: Sequence[bytes | memoryview]) -> None:
    for data in chunks:
        hasher.update(data)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    last_access REAL NOT NULL,
    pins INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS names (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX IF NOT EXISTS names_digest ON names(digest);
CREATE INDEX IF NOT EXISTS blobs_lru ON blobs(last_access);
-- Totals kept by the database itself, so every worker process sharing the store sees the
-- same exact size and count (quota and eviction stay exact across workers).
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    bytes INTEGER NOT NULL,
    count INTEGER NOT NULL
);
-- Small documents the worker processes of the node share (e.g. which apt snapshot is
-- current and when it was last validated), by key.
CREATE TABLE IF NOT EXISTS shared (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS blobs_added AFTER INSERT ON blobs BEGIN
    UPDATE totals SET bytes = bytes + NEW.size, count = count + 1 WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS blobs_removed AFTER DELETE ON blobs BEGIN
    UPDATE totals SET bytes = bytes - OLD.size, count = count - 1 WHERE id = 0;
END;
"""


class BlobStore:
    """The node's persistent store. Synchronous and cheap; called from the event loop."""

    def __init__(self, root: Path, quota_bytes: int | None = None) -> None:
        self.root = root
        self.quota_bytes = quota_bytes
        self.blob_dir = root / "blobs" / "sha256"
        self._blob_prefix = f"{self.blob_dir}/"
        self.partial_dir = root / "partial"
        self._db: sqlite3.Connection | None = None
        self._busy: dict[str, int] = {}  # digests being streamed right now: not evicted
        self._touched: dict[str, float] = {}  # LRU access times not yet written to SQLite
        # Recently confirmed blobs: digest -> size, so a hit costs no SQLite query.
        self._known: OrderedDict[str, int] = OrderedDict()
        self._name_cache: dict[tuple[str, str], str] = {}
        self._paths: dict[str, Path] = {}  # hot blobs' Path objects (built once, not per hit)
        self._in_transaction = False
        self._pending_versions: list[str] = []
        self._versions: mmap.mmap | None = None  # see `shared_version`

    # -- lifecycle -------------------------------------------------------------------------
    def open(self, clean_partials: bool = True) -> None:
        """Open the store. `clean_partials=False` for a worker that replaces a dead one: the
        download it left is resumed by whichever worker takes it over, not removed."""
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        if clean_partials:
            self.remove_stale_partials()
        # Worker processes starting together set the database up one at a time (switching
        # to WAL and creating the schema need the database to themselves).
        with FileLock(self.lock_dir / "open.lock").blocking():
            self._db = sqlite3.connect(self.root / "index.sqlite", isolation_level=None,
                                       check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            with self.transaction():
                if self._db.execute("SELECT 1 FROM totals WHERE id=0").fetchone() is None:
                    self._db.execute("INSERT INTO totals(id, bytes, count) SELECT 0, "
                                     "COALESCE(SUM(size), 0), COUNT(*) FROM blobs")
            self._reconcile()
            self._versions = _map_versions(self.lock_dir / "shared-versions")

    @property
    def lock_dir(self) -> Path:
        return self.root / "locks"

    def remove_stale_partials(self) -> None:
        """Remove downloads no live process is writing: a partial is live while its writer
        holds the lock on it (other worker processes of the node may be downloading)."""
        for stale in sorted(self.partial_dir.iterdir()):
            if stale.suffix != ".part":
                continue
            try:
                fd = os.open(stale, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer
            finally:
                os.close(fd)
            log.info("removing partial download left by an earlier run: %s", stale.name)
            stale.unlink(missing_ok=True)
            for side in (".head", ".failed"):
                stale.with_suffix(side).unlink(missing_ok=True)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (BEGIN IMMEDIATE: serialised against other processes)."""
        self.db.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            self._pending_versions.clear()
            raise
        finally:
            self._in_transaction = False
        self.db.execute("COMMIT")
        bumped, self._pending_versions = self._pending_versions, []
        for key in bumped:
            self._bump_version(key)

    def close(self) -> None:
        if self._db is not None:
            self.flush_access()
            self._db.close()
            self._db = None
        if self._versions is not None:
            self._versions.close()
            self._versions = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    def _reconcile(self) -> None:
        """Drop rows whose blob file vanished."""
        rows = self.db.execute("SELECT digest FROM blobs").fetchall()
        for (digest,) in rows:
            if not self.blob_path(digest).exists():
                log.warning("blob %s listed but missing on disk; forgetting it", digest[:12])
                self._forget(digest)

    def _recount(self) -> None:
        """Recompute the totals from the rows (fsck: repairs them if anything drifted)."""
        self.db.execute("UPDATE totals SET bytes = (SELECT COALESCE(SUM(size), 0) FROM blobs), "
                        "count = (SELECT COUNT(*) FROM blobs) WHERE id = 0")

    def _totals(self) -> tuple[int, int]:
        """(bytes, count) of every verified blob, as all processes of the node see it."""
        row = self.db.execute("SELECT bytes, count FROM totals WHERE id=0").fetchone()
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)

    # -- paths -----------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        path = self._paths.get(digest)
        if path is None:
            if not is_sha256_hex(digest):
                raise ValueError(f"not a sha256 hex digest: {digest!r}")
            path = Path(f"{self._blob_prefix}{digest[:2]}/{digest}")
            if len(self._paths) > KNOWN_BLOBS_CACHE:
                self._paths.clear()
            self._paths[digest] = path
        return path

    def _remember(self, digest: str, size: int) -> None:
        self._known[digest] = size
        if len(self._known) > KNOWN_BLOBS_CACHE:
            self._known.popitem(last=False)

    def new_partial(self, extra_digests: tuple[str, ...] = ()) -> PartialWriter:
        return PartialWriter(self.partial_dir / f"{uuid.uuid4().hex}.part", extra_digests)

    # -- blobs -----------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        row = self.db.execute("SELECT 1 FROM blobs WHERE digest=?", (digest,)).fetchone()
        return row is not None and self.blob_path(digest).exists()

    def get(self, digest: str) -> BlobRef | None:
        size = self._known.get(digest)
        if size is not None and not os.path.exists(f"{self._blob_prefix}{digest[:2]}/{digest}"):
            size = None  # evicted meanwhile (perhaps by another worker process)
            self._known.pop(digest, None)
        if size is None:
            row = self.db.execute("SELECT size FROM blobs WHERE digest=?", (digest,)).fetchone()
            if row is None:
                return None
            size = int(row[0])
            self._remember(digest, size)
        self._touched[digest] = time.time()
        return BlobRef(digest, size)

    def touch(self, digest: str) -> None:
        """Note a use of the blob for LRU eviction (a hit answered without `get`)."""
        self._touched[digest] = time.time()

    def commit(self, partial: PartialWriter, expected_sha256: str | None,
               expected_size: int | None = None) -> BlobRef:
        """Verify a finished partial and move it into the store, or delete it and raise."""
        ref = self.commit_file(partial, expected_sha256, expected_size)
        self.register(ref)
        return ref

    def commit_file(self, partial: PartialWriter, expected_sha256: str | None,
                    expected_size: int | None = None) -> BlobRef:
        """The file half of `commit` (verify, fsync, rename); safe in a worker thread.

        The caller must then `register` the returned blob from the thread owning the store.
        """
        try:
            digest = partial.hexdigest()
            if expected_size is not None and partial.size != expected_size:
                raise IntegrityError(
                    f"size mismatch: expected {expected_size} bytes, got {partial.size}")
            if expected_sha256 is not None and digest != expected_sha256:
                raise IntegrityError(
                    f"sha256 mismatch: expected {expected_sha256}, got {digest}")
            partial.finish()
            target = self.blob_path(digest)
            target.parent.mkdir(exist_ok=True)
            os.replace(partial.path, target)
            _fsync_dir(target.parent)
        except BaseException:
            partial.discard()
            raise
        return BlobRef(digest, partial.size)

    def register(self, ref: BlobRef) -> None:
        self._insert_blob(ref.digest, ref.size)

    def put_bytes(self, data: bytes, expected_sha256: str | None = None) -> BlobRef:
        partial = self.new_partial()
        partial.write(data)
        return self.commit(partial, expected_sha256, len(data))

    def adopt_file(self, path: Path, expected_sha256: str, *, verified: bool = False) -> BlobRef:
        """Move a finished file (e.g. a delta result) into the store.

        The file is hashed again unless `verified` says the caller already hashed exactly
        these bytes to `expected_sha256` (the delta client does, while building the file).
        """
        actual = expected_sha256 if verified else file_sha256(path)
        if actual != expected_sha256:
            path.unlink(missing_ok=True)
            raise IntegrityError(f"sha256 mismatch: expected {expected_sha256}, got {actual}")
        size = path.stat().st_size
        target = self.blob_path(actual)
        target.parent.mkdir(exist_ok=True)
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(path, target)
        _fsync_dir(target.parent)
        self._insert_blob(actual, size)
        return BlobRef(actual, size)

    def read_bytes(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def _insert_blob(self, digest: str, size: int) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO blobs(digest, size, last_access) VALUES (?,?,?)",
            (digest, size, time.time()))
        self.evict_to_quota(keep=digest)

    # -- names -----------------------------------------------------------------------------
    def bind(self, namespace: str, name: str, digest: str) -> None:
        self._name_cache.pop((namespace, name), None)
        self.db.execute(
            "INSERT OR REPLACE INTO names(namespace, name, digest, updated) VALUES (?,?,?,?)",
            (namespace, name, digest, time.time()))

    def lookup(self, namespace: str, name: str) -> BlobRef | None:
        digest = self._name_cache.get((namespace, name))
        if digest is not None and digest in self._known and os.path.exists(
                f"{self._blob_prefix}{digest[:2]}/{digest}"):
            self._touched[digest] = time.time()
            return BlobRef(digest, self._known[digest])
        row = self.db.execute(
            "SELECT n.digest, b.size FROM names n JOIN blobs b ON b.digest = n.digest "
            "WHERE n.namespace=? AND n.name=?", (namespace, name)).fetchone()
        if row is None:
            return None
        digest, size = str(row[0]), int(row[1])
        if not self.blob_path(digest).exists():
            self._forget(digest)
            return None
        self._touched[digest] = time.time()
        self._remember(digest, size)
        if len(self._name_cache) > KNOWN_BLOBS_CACHE:
            self._name_cache.clear()
        self._name_cache[(namespace, name)] = digest
        return BlobRef(digest, size)

    def names(self, namespace: str) -> Iterator[tuple[str, str]]:
        yield from self.db.execute(
            "SELECT name, digest FROM names WHERE namespace=? ORDER BY name", (namespace,))

    def bound(self, namespace: str) -> list[BoundBlob]:
        """Every name of a namespace with its blob, by name."""
        self.flush_access()
        rows = self.db.execute(
            "SELECT n.name, n.digest, b.size, b.last_access, n.updated FROM names n "
            "JOIN blobs b ON b.digest = n.digest WHERE n.namespace=? ORDER BY n.name",
            (namespace,)).fetchall()
        return [BoundBlob(str(name), str(digest), int(size), float(access), float(updated))
                for name, digest, size, access, updated in rows]

    def bound_digest(self, namespace: str, name: str) -> str | None:
        """The digest bound to a name now, read from the database (not from this process's
        caches: another worker process may have bound it a moment ago)."""
        row = self.db.execute("SELECT n.digest FROM names n JOIN blobs b ON b.digest = n.digest "
                              "WHERE n.namespace=? AND n.name=?", (namespace, name)).fetchone()
        return str(row[0]) if row is not None else None

    def is_bound(self, digest: str) -> bool:
        """Whether any name (of any namespace) is bound to this blob."""
        row = self.db.execute("SELECT 1 FROM names WHERE digest=? LIMIT 1", (digest,)).fetchone()
        return row is not None

    def shared_get(self, key: str) -> dict[str, Any] | None:
        """A document every worker process of the node sees (None: never written)."""
        row = self.db.execute("SELECT value FROM shared WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def shared_put(self, key: str, value: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO shared(key, value) VALUES (?, ?)",
                        (key, json.dumps(value, sort_keys=True)))
        if self._in_transaction:
            self._pending_versions.append(key)  # only once the transaction is committed
        else:
            self._bump_version(key)

    def _bump_version(self, key: str) -> None:
        if self._versions is not None:  # a fresh random value: no two writers write the same
            self._versions[_slot(key):_slot(key) + 8] = os.urandom(8)

    def shared_version(self, key: str) -> int:
        """Changes whenever any worker `shared_put`s the key: 8 bytes read from a table every
        worker maps (`locks/shared-versions`), not a query or a stat, so a hot request path
        can tell cheaply whether to read the document again. The value is written after the
        database commit, so a changed version is always readable; keys sharing a slot only
        cost a needless re-read."""
        if self._versions is None:
            return 0
        value: int = struct.unpack_from("<Q", self._versions, _slot(key))[0]
        return value

    def lock(self, name: str) -> FileLock:
        """A lock shared by the node's worker processes (see `interprocess`)."""
        return FileLock(self.lock_dir / f"{name}.lock")

    def namespaces(self) -> list[str]:
        """Every namespace that has a name bound (what a restarted cache served before)."""
        return [str(ns) for (ns,) in self.db.execute("SELECT DISTINCT namespace FROM names")]

    def unbind(self, namespace: str, name: str) -> None:
        self._name_cache.pop((namespace, name), None)
        self.db.execute("DELETE FROM names WHERE namespace=? AND name=?", (namespace, name))

    def flush_access(self) -> None:
        """Write batched LRU access times (hits only touch memory on the hot path)."""
        if self._touched:
            touched, self._touched = self._touched, {}
            self.db.executemany("UPDATE blobs SET last_access=? WHERE digest=?",
                                [(t, d) for d, t in touched.items()])

    # -- pins, busy, eviction --------------------------------------------------------------
    def pin(self, digest: str) -> None:
        self.db.execute("UPDATE blobs SET pins = pins + 1 WHERE digest=?", (digest,))

    def unpin(self, digest: str) -> None:
        self.db.execute("UPDATE blobs SET pins = MAX(pins - 1, 0) WHERE digest=?", (digest,))

    def mark_busy(self, digest: str) -> None:
        self._busy[digest] = self._busy.get(digest, 0) + 1

    def unmark_busy(self, digest: str) -> None:
        left = self._busy.get(digest, 0) - 1
        if left <= 0:
            self._busy.pop(digest, None)
        else:
            self._busy[digest] = left

    def evict_to_quota(self, keep: str | None = None, incoming: int = 0) -> int:
        """Evict least recently used, unpinned blobs until the store fits its quota."""
        if self.quota_bytes is None:
            return 0
        evicted = 0
        total = self._totals()[0]
        if total + incoming <= self.quota_bytes:
            return 0
        self.flush_access()
        rows = self.db.execute(
            "SELECT digest, size FROM blobs WHERE pins = 0 ORDER BY last_access ASC").fetchall()
        for digest, size in rows:
            if total + incoming <= self.quota_bytes:
                break
            if digest == keep or digest in self._busy:
                continue
            log.info("evicting %s (%d bytes) to stay within quota", digest[:12], size)
            self._remove_blob(digest)
            total -= int(size)
            evicted += 1
        return evicted

    def _remove_blob(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)
        self._forget(digest)

    def _forget(self, digest: str) -> None:
        self._known.pop(digest, None)
        self._name_cache.clear()
        self.db.execute("DELETE FROM blobs WHERE digest=?", (digest,))
        self.db.execute("DELETE FROM names WHERE digest=?", (digest,))

    def remove(self, digest: str) -> None:
        self._remove_blob(digest)

    def stats(self) -> StoreStats:
        total, count = self._totals()
        return StoreStats(count, total, self.quota_bytes)

    # -- fsck ------------------------------------------------------------------------------
    def fsck(self, repair: bool = True) -> FsckReport:
        """Re-hash every blob; remove (with repair) the ones whose bytes do not match."""
        bad: list[str] = []
        missing: list[str] = []
        checked = 0
        adopted = 0
        listed = {str(d) for (d,) in self.db.execute("SELECT digest FROM blobs")}
        for sub in sorted(self.blob_dir.iterdir()) if self.blob_dir.exists() else []:
            for path in sorted(sub.iterdir()):
                name = path.name
                checked += 1
                actual = file_sha256(path)
                if not is_sha256_hex(name) or actual != name:
                    bad.append(name)
                    listed.discard(name)
                    if repair:
                        path.unlink(missing_ok=True)
                        self._forget(name)
                    continue
                if name not in listed:
                    adopted += 1
                    if repair:
                        self._insert_blob(name, path.stat().st_size)
                listed.discard(name)
        for digest in sorted(listed):
            missing.append(digest)
            if repair:
                self._forget(digest)
        self._recount()
        return FsckReport(checked, tuple(bad), tuple(missing), adopted)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


VERSION_SLOTS = 512


def _slot(key: str) -> int:
    """The byte offset of `key`'s version in the shared table."""
    return (int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "little")
            % VERSION_SLOTS) * 8


def _map_versions(path: Path) -> mmap.mmap:
    """The version table every worker maps: created zeroed once, never shrunk."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < VERSION_SLOTS * 8:
            os.ftruncate(fd, VERSION_SLOTS * 8)
        return mmap.mmap(fd, VERSION_SLOTS * 8, mmap.MAP_SHARED,
                         mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
