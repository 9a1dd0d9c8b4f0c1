"""An apt repository served by the origin from its own disk.

The source directory is either an existing mirror tree (`dists/` + `pool/`), served as it is, or
a directory of `.deb` files, for which the origin builds (and, with a key, signs) a repository
into its store directory. A directory of `.deb` files is rescanned when a client asks for a
Release file and the set of files changed, so dropping a new `.deb` in publishes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from cache_node.answers import Answer, BlobAnswer, NotFound, content_type_for
from cache_node.config import RepoSource
from distro.debian_repo import BuiltRepository, SigningKey, build_repository
from distro.digests import file_sha256

log = logging.getLogger(__name__)

RESCAN_INTERVAL = 2.0


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
        self._last_scan = 0.0
        self._rebuild_lock = asyncio.Lock()
        self.built: BuiltRepository | None = None

    def prepare(self) -> None:
        """Build the repository once at start (directories of .deb files only)."""
        if not self.is_mirror_tree:
            self._rebuild()

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
        fingerprint = self._fingerprint()
        if fingerprint == self._deb_fingerprint:
            return
        started = time.monotonic()
        built = build_repository(self.source.path, self.root, suite=self.source.suite,
                                 signing_key=self.signing_key)
        digests = {f"dists/{built.suite}/{rel}": e.sha256 for rel, e in built.release.files.items()}
        for pkg in built.packages:
            digests[pkg.filename] = pkg.sha256
        self.built, self._digests, self._deb_fingerprint = built, digests, fingerprint
        self._by_digest = {sha: rel for rel, sha in digests.items()}
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

    def path_for_digest(self, digest: str) -> Path | None:
        """A file of this repository whose content has `digest` (known without hashing)."""
        rel = self._by_digest.get(digest)
        if rel is None:
            return None
        path = self.root / rel
        return path if path.is_file() else None

    async def answer(self, relpath: str) -> Answer:
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


