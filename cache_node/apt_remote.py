"""An apt repository served from an upstream URL: atomic index snapshots, verified pool files.

A *snapshot* of a suite is its `InRelease`/`Release`/`Release.gpg` as fetched together at one
moment. Index files (`Packages.xz`, ...) are only ever served as listed by the current snapshot:
by the sha256 its Release promises, looked up in the store or fetched by hash. When the TTL has
passed the next request for a Release file revalidates upstream; a changed Release becomes the
current snapshot only after the index files clients used under the old one were fetched,
verified against the new Release and parsed, so a client is never handed a new `InRelease` with
an old `Packages`. If upstream is down or sends anything malformed, the last good snapshot stays
and is served flagged as stale. Pool files are immutable; their bytes are verified against the
sha256 of the `Packages` entry (or the upstream tier's `Repr-Digest`) before they are kept.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import logging
import lzma
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cache_node.answers import (
    Answer,
    BlobAnswer,
    BytesAnswer,
    NotFound,
    ServiceError,
    StreamAnswer,
    content_type_for,
)
from cache_node.config import NodeConfig, delta_client_settings
from cache_node.fetch import FetchCoordinator, FetchFailed, FetchPlan
from cache_node.metrics import Metrics
from cache_node.repository import RepoKind, RepoSummary, SnapshotState
from cache_node.revalidation import freshness, mark_due, mark_failed, mark_valid
from cache_node.single_flight import Call, SingleFlight, run_once
from cache_node.store import BlobStore
from distro.debian_repo import (
    MalformedIndexError,
    PoolEntry,
    ReleaseIndex,
    decompress_index,
    parse_packages,
    parse_release,
)
from distro.errors import IntegrityError
from distro.wire import RefreshReport
from syncer.delta_client import DeltaClient, DeltaError
from syncer.http_client import (
    ClientSettings,
    HttpClient,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

RELEASE_FILES = ("InRelease", "Release", "Release.gpg")
SNAPSHOT_PREFIX = "apt-snapshot:"
BY_HASH_RE = re.compile(r"^(?:(?P<dir>.+)/)?by-hash/SHA256/(?P<digest>[0-9a-f]{64})$")
# How compressed indexes are rebuilt from the uncompressed one (the settings of
# distro.debian_repo.build_repository, and of most archive tools); accepted only when the result
# hashes to what the signed Release lists.
_RECOMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "xz": lambda raw: lzma.compress(raw, preset=6),
    "gz": lambda raw: gzip.compress(raw, 9, mtime=0),
}


@dataclass
class SuiteSnapshot:
    suite: str
    files: dict[str, bytes]
    index: ReleaseIndex
    identity: str  # sha256 of the Release text the snapshot was built from
    validated_at: float
    last_modified: str | None = None
    failed_at: float | None = None
    by_sha256: dict[str, int] = field(default_factory=dict)  # digest -> size of listed files
    # Files of the snapshot this one replaced: a client that read the old InRelease just
    # before the switch still finds its index files by hash.
    previous_by_sha256: dict[str, int] = field(default_factory=dict)

    rel_by_sha256: dict[str, str] = field(default_factory=dict)
    # Made due on purpose (a forced refresh, a moved upstream): what other workers did
    # before does not count, this worker asks the upstream itself.
    forced: bool = False

    def file_digest(self, fname: str) -> str:
        """The sha256 of one of the snapshot's Release files (computed once)."""
        digest = self._digests.get(fname)
        if digest is None:
            digest = self._digests[fname] = hashlib.sha256(self.files[fname]).hexdigest()
        return digest

    def __post_init__(self) -> None:
        self._digests: dict[str, str] = {}
        self.by_sha256 = {e.sha256: e.size for e in self.index.files.values()}
        self.rel_by_sha256 = {e.sha256: rel for rel, e in self.index.files.items()}


def _identity(files: dict[str, bytes]) -> str:
    return hashlib.sha256(files.get("InRelease", b"") + b"\0" + files.get("Release", b"")).hexdigest()


class RemoteAptRepo:
    """One apt repository mirrored from `base_url` (a Debian mirror, an origin or a cache)."""

    def __init__(self, name: str, base_url: str, store: BlobStore, fetches: FetchCoordinator,
                 client: HttpClient, metrics: Metrics, index_ttl: float,
                 delta_url: str | None = None, work_dir: Path | None = None,
                 delta_settings: ClientSettings | None = None) -> None:
        self.name = name
        self.delta_url = delta_url  # the upstream node's /delta/v1/ (None: not an edgedepot node)
        self.delta_settings = delta_settings  # the node's trust and client certificate
        self.work_dir = work_dir
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.store = store
        self.fetches = fetches
        self.client = client
        self.metrics = metrics
        self.index_ttl = index_ttl
        self.namespace = f"apt/{name}"
        self._ns_pool = f"apt-pool:{name}"
        self._ns_index = f"apt-index:{name}"
        self._ns_snapshot = f"{SNAPSHOT_PREFIX}{name}"
        self._snapshots: dict[str, SuiteSnapshot] = {}
        self._shared_seen: dict[str, int] = {}  # suite -> shared_version read
        self._revalidations: SingleFlight[Call[SuiteSnapshot]] = SingleFlight()
        self._pool: dict[str, PoolEntry] = {}
        self._learned: set[str] = set()
        self._bound: dict[tuple[str, str], str] = {}

    # -- persistence -----------------------------------------------------------------------
    def load_persisted(self) -> None:
        """Restore the last good snapshots so a restarted node can serve while upstream is down."""
        suites = {name.rpartition("/")[0] for name, _ in self.store.names(self._ns_snapshot)}
        for suite in sorted(suites):
            snap = self._load_suite(suite)
            if snap is not None:
                self._snapshots[suite] = snap

    def _load_suite(self, suite: str) -> SuiteSnapshot | None:
        """The snapshot of a suite as persisted in the store (by this or another worker)."""
        files: dict[str, bytes] = {}
        for fname in RELEASE_FILES:
            digest = self.store.bound_digest(self._ns_snapshot, f"{suite}/{fname}")
            if digest is None:
                continue
            try:
                files[fname] = self.store.read_bytes(digest)
            except OSError:
                continue
        main = files.get("InRelease") or files.get("Release")
        if main is None:
            return None
        try:
            index = parse_release(main, f"{self.namespace} {suite} (stored)")
        except MalformedIndexError as exc:
            log.error("stored snapshot of %s unusable: %s", suite, exc)
            return None
        return SuiteSnapshot(suite, files, index, _identity(files), validated_at=float("-inf"))

    # -- the snapshot every worker process serves ------------------------------------------
    def _shared_key(self, suite: str) -> str:
        return f"apt-snapshot/{self.name}/{suite}"

    def _share(self, suite: str, snap: SuiteSnapshot) -> None:
        """Tell the node's other workers which snapshot is current and when it validated."""
        now_wall, now_mono = time.time(), time.monotonic()

        def wall(mono: float | None) -> float | None:
            if mono is None or mono == float("-inf"):
                return None
            return now_wall - (now_mono - mono)

        self.store.shared_put(self._shared_key(suite), {
            "identity": snap.identity, "validated_at": wall(snap.validated_at),
            "failed_at": wall(snap.failed_at), "last_modified": snap.last_modified})

    def _follow_shared(self, suite: str) -> None:
        """Adopt what another worker of this node did: a newer snapshot (whose index files it
        stored before announcing it) and its validation times, so every worker serves the
        same snapshot and only one of them asks the upstream per TTL."""
        key = self._shared_key(suite)
        version = self.store.shared_version(key)
        if version == self._shared_seen.get(suite):
            return  # nothing changed since this worker last looked
        doc = self.store.shared_get(key)
        if doc is None:
            return
        snap = self._snapshots.get(suite)
        adopt_times = snap is not None and not snap.forced
        if snap is None or doc.get("identity") != snap.identity:
            loaded = self._load_suite(suite)
            if loaded is None or loaded.identity != doc.get("identity"):
                return  # not readable yet: the next request looks again
            if snap is not None:
                loaded.previous_by_sha256 = snap.by_sha256
            loaded.last_modified = doc.get("last_modified")
            self._snapshots[suite] = snap = loaded
            adopt_times = True
            log.info("%s/%s: snapshot switched by another worker", self.name, suite)
        now_wall, now_mono = time.time(), time.monotonic()
        validated, failed = doc.get("validated_at"), doc.get("failed_at")
        if isinstance(validated, (int, float)) and adopt_times:
            snap.validated_at = max(snap.validated_at, now_mono - (now_wall - validated))
        if isinstance(failed, (int, float)):
            mono_failed = now_mono - (now_wall - failed)
            if snap.failed_at is None or mono_failed > snap.failed_at:
                snap.failed_at = mono_failed
        self._shared_seen[suite] = version

    kind: RepoKind = "apt"

    def snapshots(self) -> dict[str, SuiteSnapshot]:
        return dict(self._snapshots)

    def unchanged_while(self, path: str) -> Callable[[], bool] | None:
        """Index files and Release files of a suite answer from its current snapshot: the
        same while this worker keeps that snapshot, no other worker shared a change, and (for
        the Release files, which trigger revalidation) the TTL has not run out."""
        parts = path.split("/")
        if parts[0] != "dists" or len(parts) < 3:
            return None
        suite = parts[1]
        snap = self._snapshots.get(suite)
        if snap is None or snap.failed_at is not None:
            return None
        key = self._shared_key(suite)
        version = self.store.shared_version(key)
        if version != self._shared_seen.get(suite):
            return None
        release = "/".join(parts[2:]) in RELEASE_FILES

        def unchanged() -> bool:
            return self._snapshots.get(suite) is snap and \
                self.store.shared_version(key) == version and \
                (not release or freshness(snap, self.index_ttl) == "fresh")

        return unchanged

    def summary(self) -> RepoSummary:
        now = time.monotonic()
        states = tuple(
            SnapshotState(suite, snap.index.date,
                          now - snap.validated_at if snap.validated_at > float("-inf") else None,
                          snap.failed_at is not None)
            for suite, snap in sorted(self._snapshots.items()))
        return RepoSummary("apt", self.name, self.base_url, tuple(sorted(self._snapshots)),
                           states)

    def locate(self, sha256: str) -> Path | None:
        return None  # what it mirrors lives in the store

    def reconfigure(self, config: NodeConfig) -> None:
        """Follow the upstream to a new URL: pool files and index files stay in the store and
        are served from there; each suite revalidates against the new upstream on its next
        request (unconditionally: the new server's Last-Modified says nothing of ours)."""
        self.index_ttl = config.index_ttl
        self.delta_url = config.delta_url
        self.delta_settings = delta_client_settings(config)
        source = config.repo_source("apt", self.name)
        if source is None or not source.is_url:
            return
        base_url = source.source if source.source.endswith("/") else source.source + "/"
        if base_url == self.base_url:
            return
        log.info("%s: upstream moves from %s to %s", self.namespace, self.base_url, base_url)
        self.base_url = base_url
        for snap in self._snapshots.values():
            snap.last_modified = None
            mark_due(snap)
            snap.forced = True

    @staticmethod
    def persisted_names(store: BlobStore) -> list[str]:
        """Names of the apt repositories whose snapshots a restarted cache kept."""
        return [ns.partition(":")[2] for ns in store.namespaces()
                if ns.startswith(SNAPSHOT_PREFIX)]

    async def refresh(self) -> list[RefreshReport]:
        """Revalidate every known suite now (ignoring the TTL) and report what moved."""
        reports = []
        for suite, snap in sorted(self._snapshots.items()):
            before = self.metrics.upstream_bytes.get(self.namespace)
            mark_due(snap)
            snap.forced = True
            error = ""
            try:
                new, stale = await self.current(suite)
            except ServiceError as exc:
                new, stale, error = snap, True, str(exc)
            moved = self.metrics.upstream_bytes.get(self.namespace) - before
            changed = new.identity != snap.identity
            full = sum(len(v) for v in new.files.values())
            if changed:
                prefix = f"{suite}/"
                used = [n[len(prefix):] for n, _ in self.store.names(self._ns_index)
                        if n.startswith(prefix)]
                full += sum(e.size for rel in used if (e := new.index.entry(rel)) is not None)
            reports.append(RefreshReport("apt", self.name, suite, changed, stale, moved, full,
                                         error))
        return reports

    # -- dispatch --------------------------------------------------------------------------
    async def answer(self, relpath: str, accept: str | None = None) -> Answer:
        parts = relpath.split("/")
        if parts[0] == "dists" and len(parts) >= 3:
            suite, rest = parts[1], "/".join(parts[2:])
            if rest in RELEASE_FILES:
                return await self._answer_release(suite, rest)
            return await self._answer_index(suite, rest)
        if parts[0] == "pool" and len(parts) >= 2:
            return await self._answer_pool(relpath)
        raise NotFound(f"{self.namespace}: no such path {relpath}")

    # -- Release files and snapshots -------------------------------------------------------
    async def _answer_release(self, suite: str, fname: str) -> Answer:
        snap, stale = await self.current(suite)
        data = snap.files.get(fname)
        if data is None:
            raise NotFound(f"{self.namespace}: {suite} has no {fname} upstream")
        return BytesAnswer(data, content_type_for(fname), snap.file_digest(fname),
                           stale=stale, last_modified=snap.last_modified)

    async def current(self, suite: str, revalidate: bool = True) -> tuple[SuiteSnapshot, bool]:
        """The suite's current snapshot and whether it is stale (upstream unusable)."""
        self._follow_shared(suite)
        snap = self._snapshots.get(suite)
        if snap is not None:
            state = freshness(snap, self.index_ttl)
            if not revalidate or state == "fresh":
                return snap, False
            if state == "backing-off":
                self.metrics.stale_serves.inc(self.namespace)
                return snap, True
        try:
            return await run_once(self._revalidations,
                suite, lambda: self._revalidate_once(suite)), False
        except UpstreamNotFound:
            if snap is None:
                raise NotFound(f"{self.namespace}: upstream has no suite {suite}") from None
            mark_failed(snap)
            self._share(suite, snap)
            self.metrics.stale_serves.inc(self.namespace)
            return snap, True
        except (UpstreamError, FetchFailed, MalformedIndexError) as exc:
            if snap is None:
                status = getattr(exc, "http_status", 502)
                raise ServiceError(f"{self.namespace}: cannot get {suite} from upstream: {exc}",
                                   status) from None
            mark_failed(snap)
            self._share(suite, snap)
            self.metrics.stale_serves.inc(self.namespace)
            log.warning("serving stale snapshot of %s/%s: %s", self.name, suite, exc)
            return snap, True

    async def _revalidate_once(self, suite: str) -> SuiteSnapshot:
        """One revalidation per suite for the whole node: the worker holding the suite's lock
        asks the upstream; a worker that had to wait for it takes its result instead."""
        lock = self.store.lock(f"apt-{self.name}-{suite}")
        await lock.acquire()
        try:
            # Another worker may have revalidated since this one decided it was due.
            self._follow_shared(suite)
            done = self._snapshots.get(suite)
            if done is not None and freshness(done, self.index_ttl) != "due":
                if freshness(done, self.index_ttl) == "backing-off":
                    raise UpstreamUnavailable(self.base_url, "another worker of this node "
                                              "could not revalidate just now")
                return done
            return await self._revalidate(suite, done)
        finally:
            lock.release()

    async def _fetch_optional(self, url: str, headers: dict[str, str]) -> tuple[int, bytes,
                                                                                  str | None]:
        try:
            reply = await self.client.fetch_small(url, headers)
        except UpstreamNotFound:
            return 404, b"", None
        return reply.status, reply.body, reply.headers.get("Last-Modified")

    async def _revalidate(self, suite: str, old: SuiteSnapshot | None) -> SuiteSnapshot:
        if old is not None:
            old.forced = False
        base = f"{self.base_url}dists/{suite}/"
        cond: dict[str, str] = {}
        if old is not None and old.last_modified:
            cond["If-Modified-Since"] = old.last_modified
        status, inrelease, last_modified = await self._fetch_optional(base + "InRelease", cond)
        if status == 304 and old is not None:
            mark_valid(old)
            self._share(suite, old)
            return old
        if old is not None and status == 200 and inrelease == old.files.get("InRelease"):
            mark_valid(old)
            self._share(suite, old)
            return old
        _, release, lm2 = await self._fetch_optional(base + "Release", {})
        _, release_gpg, _ = await self._fetch_optional(base + "Release.gpg", {})
        files = {k: v for k, v in (("InRelease", inrelease), ("Release", release),
                                   ("Release.gpg", release_gpg)) if v}
        if "InRelease" not in files and "Release" not in files:
            raise UpstreamNotFound(base, "neither InRelease nor Release exists")
        try:
            index = parse_release(files.get("InRelease") or files["Release"],
                                  f"{base}{'InRelease' if 'InRelease' in files else 'Release'}")
            if "InRelease" in files and "Release" in files:
                plain = parse_release(files["Release"], base + "Release")
                if dict(plain.files) != dict(index.files):
                    raise MalformedIndexError(base + "Release", None,
                                        "Release and InRelease list different files "
                                        "(upstream is mid-update)")
        except MalformedIndexError:
            self.metrics.index_errors.inc(self.namespace)
            raise
        if old is not None and _identity(files) == old.identity:
            mark_valid(old)
            self._share(suite, old)
            return old
        new = SuiteSnapshot(suite, files, index, _identity(files), time.monotonic(),
                            last_modified or lm2)
        if old is not None:
            new.previous_by_sha256 = old.by_sha256
        await self._carry_over_indexes(new)
        refs = {fname: self.store.put_bytes(files[fname]) for fname in RELEASE_FILES
                if fname in files}
        with self.store.transaction():  # every worker switches to all of it at once
            for fname in RELEASE_FILES:
                if fname in refs:
                    self.store.bind(self._ns_snapshot, f"{suite}/{fname}", refs[fname].digest)
                else:
                    self.store.unbind(self._ns_snapshot, f"{suite}/{fname}")
            self._share(suite, new)
        self._snapshots[suite] = new
        log.info("%s/%s: new snapshot (%d index files listed)", self.name, suite,
                 len(index.files))
        return new

    async def _carry_over_indexes(self, new: SuiteSnapshot) -> None:
        """Fetch, verify and parse every index file clients used under the old snapshot."""
        prefix = f"{new.suite}/"
        used = [name[len(prefix):] for name, _ in self.store.names(self._ns_index)
                if name.startswith(prefix)]
        old = self._snapshots.get(new.suite)
        for rel in used:
            entry = new.index.entry(rel)
            if entry is None:
                self.store.unbind(self._ns_index, prefix + rel)
                continue
            if not self.store.has(entry.sha256) and not await self._index_by_delta(new, old, rel):
                fetch = self.fetches.start(self._index_plan(new, rel), self.client)
                await fetch.done
            if "Packages" in rel.rsplit("/", 1)[-1]:
                await self._learn_packages(entry.sha256, f"{self.base_url}dists/{prefix}{rel}",
                                           strict=True)
        for rel in used:
            entry = new.index.entry(rel)
            if entry is not None:
                self.store.bind(self._ns_index, prefix + rel, entry.sha256)

    # -- index updates by delta ------------------------------------------------------------
    async def _index_by_delta(self, new: SuiteSnapshot, old: SuiteSnapshot | None,
                              rel: str) -> bool:
        """Get `rel` of the new snapshot through a delta of its uncompressed index against the
        previous snapshot's, then rebuild the compressed form locally; True when stored."""
        if self.delta_url is None or self.work_dir is None or old is None:
            return False
        directory, _, name = rel.rpartition("/")
        stem, dot, suffix = name.partition(".")
        plain_rel = f"{directory}/{stem}" if directory else stem
        new_plain, old_plain = new.index.entry(plain_rel), old.index.entry(plain_rel)
        target = new.index.entry(rel)
        if new_plain is None or old_plain is None or target is None or \
                (dot and suffix not in _RECOMPRESS):
            return False
        try:
            if not self.store.has(new_plain.sha256):
                basis = await self._plain_basis(old, plain_rel)
                if basis is None:
                    return False
                await self._delta_fetch(new_plain.sha256, new_plain.size, basis,
                                        old_plain.sha256, target.size)
            if rel == plain_rel:
                return True
            raw = await asyncio.to_thread(self.store.read_bytes, new_plain.sha256)
            rebuilt = await asyncio.to_thread(_RECOMPRESS[suffix], raw)
            if hashlib.sha256(rebuilt).hexdigest() != target.sha256:
                log.info("%s: rebuilt %s differs from upstream's; fetching it whole",
                         self.namespace, rel)
                return False
            self.store.put_bytes(rebuilt, target.sha256)
            return True
        except (DeltaError, OSError, IntegrityError) as exc:
            log.warning("%s: delta update of %s failed (%s); fetching it whole",
                        self.namespace, rel, exc)
            return False

    async def _plain_basis(self, old: SuiteSnapshot, plain_rel: str) -> Path | None:
        """The previous snapshot's uncompressed index: stored, or rebuilt from a stored
        compressed sibling and verified against the previous Release."""
        entry = old.index.entry(plain_rel)
        assert entry is not None
        if self.store.has(entry.sha256):
            return self.store.blob_path(entry.sha256)
        for suffix in _RECOMPRESS:
            sibling = old.index.entry(f"{plain_rel}.{suffix}")
            if sibling is None or not self.store.has(sibling.sha256):
                continue
            data = await asyncio.to_thread(self.store.read_bytes, sibling.sha256)
            try:
                raw = await asyncio.to_thread(decompress_index, f"x.{suffix}", data)
            except MalformedIndexError:
                continue
            if hashlib.sha256(raw).hexdigest() == entry.sha256:
                return self.store.blob_path(self.store.put_bytes(raw, entry.sha256).digest)
        return None

    async def _delta_fetch(self, sha256: str, size: int, basis: Path, basis_sha256: str,
                           whole_size: int) -> None:
        assert self.delta_url is not None and self.work_dir is not None
        self.work_dir.mkdir(parents=True, exist_ok=True)
        out = self.work_dir / f"{sha256}.delta-out"
        async with DeltaClient(settings=self.delta_settings) as client:
            result = await client.fetch(f"{self.delta_url}blobs/{sha256}", basis=basis, out=out,
                                        basis_sha256=basis_sha256)
        self.metrics.upstream_requests.inc(self.namespace, result.requests)
        self.metrics.upstream_bytes.inc(self.namespace, result.bytes_received)
        self.metrics.delta_fetches.inc(self.namespace)
        self.metrics.delta_saved_bytes.inc(self.namespace,
                                           max(0, whole_size - result.wire_bytes))
        # The client verified the rebuilt file against `sha256`: no second hashing pass.
        await asyncio.to_thread(self.store.adopt_file, out, sha256,
                                verified=result.sha256 == sha256)
        log.info("%s: index %s by %s delta: %d bytes moved instead of %d", self.namespace,
                 sha256[:12], result.method, result.wire_bytes, whole_size)

    # -- index files -----------------------------------------------------------------------
    def _index_plan(self, snap: SuiteSnapshot, rel: str) -> FetchPlan:
        entry = snap.index.entry(rel)
        assert entry is not None
        directory = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if snap.index.acquire_by_hash:
            url_rel = (directory + "/" if directory else "") + f"by-hash/SHA256/{entry.sha256}"
        else:
            url_rel = rel
        return FetchPlan(key=f"sha256:{entry.sha256}",
                         url=f"{self.base_url}dists/{snap.suite}/{url_rel}",
                         namespace=self.namespace, expected_sha256=entry.sha256,
                         expected_size=entry.size,
                         binds=((self._ns_index, f"{snap.suite}/{rel}"),))

    async def _answer_index(self, suite: str, rest: str) -> Answer:
        snap, stale = await self.current(suite, revalidate=suite not in self._snapshots)
        by_hash = BY_HASH_RE.match(rest)
        if by_hash:
            digest = by_hash.group("digest")
            size = snap.by_sha256.get(digest, snap.previous_by_sha256.get(digest))
            if size is None:
                raise NotFound(f"{self.namespace}: {digest[:12]} is not listed by the current "
                               f"{suite} Release")
            # Remember which listed file apt asked for by hash: it is "used" and is carried
            # over (prefetched) before the next snapshot of this suite is switched to.
            rel = snap.rel_by_sha256.get(digest)
            binds = ((self._ns_index, f"{suite}/{rel}"),) if rel is not None else ()
            plan = FetchPlan(key=f"sha256:{digest}", url=f"{self.base_url}dists/{suite}/{rest}",
                             namespace=self.namespace, expected_sha256=digest, expected_size=size,
                             binds=binds)
        else:
            entry = snap.index.entry(rest)
            if entry is None:
                raise NotFound(f"{self.namespace}: {rest} is not listed by {suite}'s Release")
            digest = entry.sha256
            plan = self._index_plan(snap, rest)
        ref = self.store.get(digest)
        if ref is not None:
            self.metrics.hits.inc(self.namespace)
            for namespace, name in plan.binds:
                if self._bound.get((namespace, name)) != digest:  # no write per hit
                    self.store.bind(namespace, name, digest)
                    self._bound[(namespace, name)] = digest
            return BlobAnswer(self.store.blob_path(digest), ref.size, digest,
                              content_type_for(rest), stale=stale)
        self.metrics.misses.inc(self.namespace)
        fetch, joined = self.fetches.join(plan, self.client)
        if "Packages" in rest.rsplit("/", 1)[-1] and not by_hash:
            fetch.done.add_done_callback(
                lambda f: None if f.exception() else asyncio.ensure_future(
                    self._learn_packages(digest, f"{self.base_url}dists/{suite}/{rest}",
                                         strict=False)))
        return StreamAnswer(fetch, content_type_for(rest), coalesced=joined)

    async def _learn_packages(self, digest: str, source: str, strict: bool) -> None:
        """Parse a stored Packages index so pool files can be verified against it."""
        if digest in self._learned:
            return
        try:
            raw = await asyncio.to_thread(self.store.read_bytes, digest)
            name = source.rsplit("/", 1)[-1]
            entries = await asyncio.to_thread(
                lambda: parse_packages(decompress_index(name, raw), source))
        except (OSError, MalformedIndexError) as exc:
            self.metrics.index_errors.inc(self.namespace)
            log.error("rejecting index %s: %s", source, exc)
            if strict:
                raise
            return
        for entry in entries:
            self._pool[entry.filename] = entry
        self._learned.add(digest)

    async def _learn_stored_indexes(self) -> None:
        for snap in list(self._snapshots.values()):
            for rel, entry in snap.index.files.items():
                name = rel.rsplit("/", 1)[-1]
                if name.startswith("Packages") and entry.sha256 not in self._learned \
                        and self.store.has(entry.sha256):
                    await self._learn_packages(entry.sha256, f"dists/{snap.suite}/{rel}", False)

    # -- pool files ------------------------------------------------------------------------
    async def _answer_pool(self, relpath: str) -> Answer:
        ref = self.store.lookup(self._ns_pool, relpath)
        if ref is not None:
            self.metrics.hits.inc(self.namespace)
            return BlobAnswer(self.store.blob_path(ref.digest), ref.size, ref.digest,
                              content_type_for(relpath), immutable=True)
        entry = self._pool.get(relpath)
        if entry is None:
            await self._learn_stored_indexes()
            entry = self._pool.get(relpath)
        if entry is not None:
            blob = self.store.get(entry.sha256)
            if blob is not None:
                self.store.bind(self._ns_pool, relpath, entry.sha256)
                self.metrics.hits.inc(self.namespace)
                return BlobAnswer(self.store.blob_path(entry.sha256), blob.size, entry.sha256,
                                  content_type_for(relpath), immutable=True)
        # Keyed by path, not digest: whether the Packages entry is known yet must not split
        # concurrent misses for the same file into two upstream fetches.
        plan = FetchPlan(key=f"{self._ns_pool}:{relpath}", url=self.base_url + relpath,
                         namespace=self.namespace,
                         expected_sha256=entry.sha256 if entry else None,
                         expected_size=entry.size if entry else None,
                         binds=((self._ns_pool, relpath),))
        self.metrics.misses.inc(self.namespace)
        fetch, joined = self.fetches.join(plan, self.client)
        return StreamAnswer(fetch, content_type_for(relpath), coalesced=joined)
