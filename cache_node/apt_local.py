"""An apt repository served by the origin from its own disk.

The source directory is either an existing mirror tree (`dists/` + `pool/`), served as it is, or
a directory of `.deb` files, for which the origin builds (and, with a key, signs) a repository
into its store directory. A directory of `.deb` files is rescanned when a client asks for a
Release file and the set of files changed, so dropping a new `.deb` in publishes it.

Operators drop files in by hand, so a junk or truncated `.deb` is skipped with one warning line
naming it, and the repository is built from the good ones. When a rebuild fails as a whole
(signing, disk), the last good repository stays served and the failure is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cache_node.answers import Answer, BlobAnswer, NotFound, content_type_for
from cache_node.config import NodeConfig, RepoSource
from cache_node.interprocess import FileLock
from cache_node.repository import RepoKind, RepoSummary, SnapshotState
from cache_node.startup import StartupError
from distro.debian_repo import (
    BuiltRepository,
    MalformedIndexError,
    RepoToolError,
    SigningKey,
    build_repository,
    parse_release,
)
from distro.digests import file_sha256
from distro.wire import RefreshReport

log = logging.getLogger(__name__)

RESCAN_INTERVAL = 2.0
RETRY_FAILED_BUILD = 60.0   # seconds before a failed build of an unchanged directory is retried
_BUILD_ERRORS = (RepoToolError, MalformedIndexError, ValueError, OSError)


@dataclass(frozen=True)
class _FileKey:
    inode: int
    mtime_ns: int
    size: int


class LocalAptRepo:
    """Serves files of a local repository tree with their sha256 for the next tier."""

    def __init__(self, source: RepoSource, build_root: Path, signing_key: SigningKey | None):
        self.name = source.name
        self.source = source
        self.namespace = f"apt/{source.name}"
        self.signing_key = signing_key
        self.is_mirror_tree = (source.path / "dists").is_dir()
        self.root = source.path if self.is_mirror_tree else build_root / source.name
        self._digests: dict[str, str] = {}
        self._by_digest: dict[str, str] = {}
        self._hash_cache: dict[_FileKey, str] = {}
        self._deb_fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._failed: tuple[tuple[tuple[str, int, int], ...], float] | None = None
        self._last_scan = 0.0
        self._rebuild_lock = asyncio.Lock()
        self.built: BuiltRepository | None = None

    def prepare(self) -> None:
        """Build the repository once at start (directories of .deb files only). If that fails,
        the tree an earlier run built is served; without one the node cannot start."""
        if self.is_mirror_tree:
            return
        fingerprint = self._fingerprint()
        try:
            self._build(fingerprint)
        except _BUILD_ERRORS as exc:
            self._failed = (fingerprint, time.monotonic())
            if not self._load_previous():
                raise StartupError(f"cannot build apt repository {self.name} from "
                                   f"{self.source.path}: {_one_line(exc)}") from None
            log.warning("apt %s: building from %s failed, serving the repository built "
                        "earlier: %s", self.name, self.source.path, _one_line(exc))

    def _load_previous(self) -> bool:
        """Serve the tree a previous run built, if its Release is readable."""
        release_path = self.root / "dists" / self.source.suite / "Release"
        try:
            release = parse_release(release_path.read_bytes(), str(release_path))
        except (OSError, MalformedIndexError):
            return False
        self._digests = {f"dists/{self.source.suite}/{rel}": e.sha256
                         for rel, e in release.files.items()}
        self._by_digest = {sha: rel for rel, sha in self._digests.items()}
        return True

    def _fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in sorted(self.source.path.rglob("*.deb")):
            try:
                st = path.stat()
            except OSError:
                continue
            out.append((str(path), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _rebuild(self) -> None:
        """Rebuild when the set of .deb files changed; on failure keep serving what we have."""
        fingerprint = self._fingerprint()
        if fingerprint == self._deb_fingerprint:
            return
        if self._failed is not None and self._failed[0] == fingerprint and \
                time.monotonic() - self._failed[1] < RETRY_FAILED_BUILD:
            return
        try:
            self._build(fingerprint)
        except _BUILD_ERRORS as exc:
            self._failed = (fingerprint, time.monotonic())
            log.warning("apt %s: rebuilding from %s failed, still serving the previous "
                        "repository: %s", self.name, self.source.path, _one_line(exc))

    def _build(self, fingerprint: tuple[tuple[str, int, int], ...]) -> None:
        """Build once per node: the worker processes of one node share the built tree, so the
        first builds (under the build lock) and the others load what it built."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        stamp = self.root.parent / f".{self.name}.built"
        key = self.signing_key
        wanted = json.dumps({"debs": fingerprint, "suite": self.source.suite,
                             "key": [str(key.gnupg_home), key.key_id] if key else None})
        with FileLock(self.root.parent / f".{self.name}.lock").blocking():
            with contextlib.suppress(OSError):
                if stamp.read_text() == wanted and self._load_previous():
                    self._deb_fingerprint, self._failed = fingerprint, None
                    return
            stamp.unlink(missing_ok=True)
            self._build_now(fingerprint)
            stamp.write_text(wanted)

    def _build_now(self, fingerprint: tuple[tuple[str, int, int], ...]) -> None:
        started = time.monotonic()
        built = build_repository(self.source.path, self.root, suite=self.source.suite,
                                 signing_key=self.signing_key, skip_bad=True)
        for bad in built.skipped:
            log.warning("apt %s: skipped %s: %s", self.name, bad.path, bad.reason)
        digests = {f"dists/{built.suite}/{rel}": e.sha256 for rel, e in built.release.files.items()}
        for pkg in built.packages:
            digests[pkg.filename] = pkg.sha256
        self.built, self._digests, self._deb_fingerprint = built, digests, fingerprint
        self._by_digest = {sha: rel for rel, sha in digests.items()}
        self._failed = None
        log.info("%s: built repository of %d packages in %.1fs%s", self.name,
                 len(built.packages), time.monotonic() - started,
                 " (signed)" if self.signing_key else " (unsigned)")

    async def _maybe_rescan(self) -> None:
        if self.is_mirror_tree or time.monotonic() - self._last_scan < RESCAN_INTERVAL:
            return
        async with self._rebuild_lock:
            if time.monotonic() - self._last_scan < RESCAN_INTERVAL:
                return
            await asyncio.to_thread(self._rebuild)
            self._last_scan = time.monotonic()

    kind: RepoKind = "apt"

    def unchanged_while(self, path: str) -> Callable[[], bool] | None:
        return None  # not repeated by the hot path (see `Repository.unchanged_while`)

    def summary(self) -> RepoSummary:
        suites = () if self.is_mirror_tree else (self.source.suite,)
        states = () if self.built is None else (
            SnapshotState(self.source.suite, self.built.release.date, None, False),)
        return RepoSummary("apt", self.name, self.source.source, suites, states)

    def reconfigure(self, config: NodeConfig) -> None:
        """Served from a directory read at start: a reload changes nothing here (another
        directory needs a restart, which `plan_reload` reports)."""

    async def refresh(self) -> list[RefreshReport]:
        return []

    def locate(self, sha256: str) -> Path | None:
        return self.path_for_digest(sha256)

    def path_for_digest(self, digest: str) -> Path | None:
        """A file of this repository whose content has `digest` (known without hashing)."""
        rel = self._by_digest.get(digest)
        if rel is None:
            return None
        path = self.root / rel
        return path if path.is_file() else None

    async def answer(self, relpath: str, accept: str | None = None) -> Answer:
        if relpath.startswith("dists/") and relpath.rsplit("/", 1)[-1] in (
                "InRelease", "Release", "Release.gpg"):
            await self._maybe_rescan()
        path = self.root / relpath
        try:
            real = path.resolve(strict=True)
            root_real = self.root.resolve(strict=True)
        except (OSError, RuntimeError):
            raise NotFound(f"{self.namespace}: no such file {relpath}") from None
        if root_real not in real.parents or not real.is_file():
            raise NotFound(f"{self.namespace}: no such file {relpath}")
        st = real.stat()
        digest = self._digests.get(relpath)
        if digest is None:
            key = _FileKey(st.st_ino, st.st_mtime_ns, st.st_size)
            digest = self._hash_cache.get(key)
            if digest is None:
                digest = await asyncio.to_thread(file_sha256, real)
                if len(self._hash_cache) > 100_000:
                    self._hash_cache.clear()
                self._hash_cache[key] = digest
        immutable = relpath.startswith("pool/") or "/by-hash/" in relpath
        return BlobAnswer(real, st.st_size, digest, content_type_for(relpath),
                          immutable=immutable)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]
