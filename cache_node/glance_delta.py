"""Fetching a new image as a delta against a cached older image of the same family.

A cache whose upstream is an edgedepot node fetches an image it does not hold yet as follows:

  1. pick a basis: a cached image (its data bound in the store) of the same family
     (`distro.glance_images.family_key`: the `edgedepot_family` property, else `os_distro` +
     `os_version`, else the name without its version), the most recently created one first;
     without a basis the image is fetched whole, as before;
  2. ask the upstream for the sha256 of the new image's data,
     `GET {upstream}glance/edgedepot/v1/images/{id}/digest` (authorized like `/file`, with the
     caller's token). A real Glance publishes md5 and sha512 only: the origin tier answers this
     once it holds the image (it fetches it whole from Glance, once, when first asked);
  3. `syncer.delta_client.DeltaClient` makes the file from `{upstream}delta/v1/blobs/<sha256>`
     and the basis blob (a patch, or the missing blocks); the result is sha256-verified, then
     md5 and `os_hash_value` are verified against the record, exactly as a whole fetch is, and
     only then is the file moved into the store (`BlobStore.adopt_file`) and bound to the image.

Any failure (no digest upstream, a `DeltaError`, a verification failure, a corrupted basis)
falls back to the whole fetch. Work files live in `<store_dir>/delta-work/glance/`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cache_node.glance_backends import ImageDigest
from cache_node.metrics import Metrics
from cache_node.store import BlobRef, BlobStore, IntegrityError
from distro.digests import file_sha256
from distro.glance_images import GlanceImage, family_key
from syncer.delta_client import DeltaClient, DeltaError, DeltaIntegrityError

log = logging.getLogger(__name__)

NAMESPACE = "glance"
HASH_CHUNK = 4 << 20


class ImageDeltaFailed(Exception):
    """The delta fetch of an image did not produce verified data (fetch it whole instead)."""


@dataclass(frozen=True)
class Basis:
    """A cached image whose data serves as the delta basis of a newer one."""

    image: GlanceImage
    ref: BlobRef


@dataclass(frozen=True)
class FileHashes:
    md5: str
    strong: str
    algo: str  # "unknown" when the record's os_hash_algo is not supported here


def check_image(image: GlanceImage, size: int, md5: str, strong: str, algo: str) -> str | None:
    """What is wrong with data of this size and these digests for this record (None: nothing)."""
    if image.size is not None and size != image.size:
        return f"size {size} != record's {image.size}"
    if not image.checksum and not image.os_hash_value:
        return "the image record has neither checksum nor os_hash_value"
    if image.checksum and md5 != image.checksum.lower():
        return f"md5 {md5} != record's checksum {image.checksum}"
    if image.os_hash_value:
        if algo == "unknown":
            return f"unsupported os_hash_algo {image.os_hash_algo!r}"
        if strong != image.os_hash_value.lower():
            return f"{algo} differs from the record's os_hash_value"
    return None


def strong_hash(os_hash_algo: str | None) -> tuple[str, Any]:
    """The record's `os_hash_algo` (default sha512) and a fresh hasher for it; ("unknown",
    sha512) when this Python cannot compute it (`check_image` then refuses the data)."""
    algo = (os_hash_algo or "sha512").lower()
    if algo.startswith("shake"):  # variable-length digests: not a Glance os_hash_algo
        return "unknown", hashlib.sha512()
    try:
        return algo, hashlib.new(algo)
    except ValueError:
        return "unknown", hashlib.sha512()


async def hash_chunk(data: bytes, *hashers: Any) -> None:
    """Feed one chunk to several hashers in parallel threads (hashlib releases the GIL)."""
    await asyncio.gather(*(asyncio.to_thread(h.update, data) for h in hashers))


async def file_hashes(path: Path, os_hash_algo: str | None) -> FileHashes:
    """md5 and the record's strong hash of a file, read once, hashed in two threads in
    parallel. The file is opened before this returns to the loop: it may be renamed meanwhile."""
    algo, strong = strong_hash(os_hash_algo)
    md5 = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, HASH_CHUNK):
            await hash_chunk(chunk, md5, strong)
    return FileHashes(md5.hexdigest(), strong.hexdigest(), algo)


def pick_basis(image: GlanceImage, cached: Iterable[Basis]) -> Basis | None:
    """The cached image of `image`'s family to build it from: the newest, then the closest
    in size. None when no other image of the family is cached."""
    family = family_key(image)
    size = image.size or 0
    candidates = [b for b in cached if b.image.id != image.id and b.ref.size > 0
                  and family_key(b.image) == family]
    if not candidates:
        return None
    return max(candidates, key=lambda b: (b.image.created_at or "", -abs(b.ref.size - size)))


class ImageDeltaFetcher:
    """Makes an image's data from its upstream's `/delta/v1/` and a basis blob."""

    def __init__(self, store: BlobStore, metrics: Metrics, delta_url: str,
                 work_dir: Path) -> None:
        self.store = store
        self.metrics = metrics
        self.delta_url = delta_url.rstrip("/") + "/"
        self.work_dir = work_dir
        self._running: dict[str, asyncio.Task[BlobRef | None]] = {}

    @property
    def running(self) -> frozenset[str]:
        """Ids of the images being fetched by delta now."""
        return frozenset(self._running)

    async def attempt(self, image: GlanceImage, cached: Iterable[Basis],
                      digest_of: Callable[[], Awaitable[ImageDigest | None]],
                      bind: Callable[[BlobRef], None]) -> BlobRef | None:
        """Build the image from a basis among `cached` and `bind` it; None when there is no
        basis or the attempt failed (the caller then fetches it whole). One attempt per image
        at a time: concurrent callers share it, and a caller leaving does not cancel it."""
        task = self._running.get(image.id)
        if task is None:
            basis = pick_basis(image, cached)
            if basis is None:
                return None
            task = asyncio.create_task(self._attempt(image, basis, digest_of, bind),
                                       name=f"delta {image.id}")
            self._running[image.id] = task
            task.add_done_callback(lambda _t: self._running.pop(image.id, None))
        else:
            self.metrics.coalesced.inc(NAMESPACE)
        return await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(self, image: GlanceImage, basis: Basis,
                       digest_of: Callable[[], Awaitable[ImageDigest | None]],
                       bind: Callable[[BlobRef], None]) -> BlobRef | None:
        try:
            digest = await digest_of()
            if digest is None:
                log.info("image %s: the upstream tells no sha256; fetching it whole", image.id)
                return None
            ref = await self.fetch(image, digest, basis)
        except ImageDeltaFailed as exc:
            log.warning("image %s: %s; fetching it whole", image.id, exc)
            return None
        except Exception:
            log.exception("image %s: delta fetch failed; fetching it whole", image.id)
            return None
        bind(ref)
        return ref

    async def fetch(self, image: GlanceImage, digest: ImageDigest, basis: Basis) -> BlobRef:
        """The image's data, verified (sha256, md5, os_hash_value) and in the store (not yet
        bound). Raises ImageDeltaFailed."""
        if image.size is not None and digest.size != image.size:
            raise ImageDeltaFailed(f"upstream digest is of {digest.size} bytes, the record "
                                   f"says {image.size}")
        if self.store.has(digest.sha256):  # the same bytes are stored under another name
            path = self.store.blob_path(digest.sha256)
            await self._verify(image, path, digest.size)
            return BlobRef(digest.sha256, digest.size)
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        out = self.work_dir / f"{digest.sha256}.delta-out"
        try:
            async with DeltaClient() as client:
                result = await client.fetch(f"{self.delta_url}blobs/{digest.sha256}",
                                            basis=self.store.blob_path(basis.ref.digest),
                                            out=out, basis_sha256=basis.ref.digest)
        except (DeltaError, OSError) as exc:
            _discard(out)
            if isinstance(exc, DeltaIntegrityError):
                await self._check_basis(basis)
            raise ImageDeltaFailed(f"delta fetch failed: {exc}") from None
        self.metrics.upstream_requests.inc(NAMESPACE, result.requests)
        self.metrics.upstream_bytes.inc(NAMESPACE, result.bytes_received)
        # md5 + os_hash_value (two threads) while the store adopts the file. DeltaClient
        # verified its sha256 while building it (all but "identical", a copy of the basis).
        verified, adopted = await asyncio.gather(
            self._verify(image, out, result.size),
            asyncio.to_thread(self.store.adopt_file, out, digest.sha256,
                              verified=result.method != "identical"),
            return_exceptions=True)
        problem = verified if isinstance(verified, BaseException) else \
            adopted if isinstance(adopted, BaseException) else None
        if problem is not None:
            _discard(out)
            if isinstance(adopted, BlobRef) and not digest_bound(self.store, adopted.digest):
                self.store.remove(adopted.digest)
            if not isinstance(problem, (ImageDeltaFailed, IntegrityError, OSError)):
                raise problem
            raise ImageDeltaFailed(str(problem)) from None
        assert isinstance(adopted, BlobRef)
        ref = adopted
        if result.method != "whole":  # DeltaClient's own fallback moved the whole blob
            self.metrics.delta_fetches.inc(NAMESPACE)
        self.metrics.delta_saved_bytes.inc(NAMESPACE, max(0, digest.size - result.wire_bytes))
        log.info("image %s by %s delta against image %s: %d bytes moved instead of %d "
                 "(transfer %.2f s, total %.2f s)", image.id, result.method, basis.image.id,
                 result.wire_bytes, digest.size, result.seconds, time.monotonic() - started)
        return ref

    async def _check_basis(self, basis: Basis) -> None:
        """After a rebuild failed: drop the basis blob if its bytes rotted (the image is then
        fetched whole when asked for next, rather than serving bad bytes or failing again)."""
        path = self.store.blob_path(basis.ref.digest)
        try:
            actual = await asyncio.to_thread(file_sha256, path)
        except OSError:
            return
        if actual != basis.ref.digest:
            log.error("cached image %s is corrupt (sha256 %s, stored as %s): removed",
                      basis.image.id, actual, basis.ref.digest)
            self.metrics.verify_failures.inc(NAMESPACE)
            self.store.remove(basis.ref.digest)

    async def _verify(self, image: GlanceImage, path: Path, size: int) -> None:
        hashes = await file_hashes(path, image.os_hash_algo)
        problem = check_image(image, size, hashes.md5, hashes.strong, hashes.algo)
        if problem:
            self.metrics.verify_failures.inc(NAMESPACE)
            raise ImageDeltaFailed(f"image {image.id} failed verification: {problem}")


def digest_bound(store: BlobStore, digest: str) -> bool:
    """Whether any name (of any namespace) is bound to this blob."""
    row = store.db.execute("SELECT 1 FROM names WHERE digest=? LIMIT 1", (digest,)).fetchone()
    return row is not None


def _discard(out: Path) -> None:
    for path in (out, *(out.with_name(out.name + s) for s in (
            ".delta-partial", ".delta-state", ".delta-spool", ".delta-sig"))):
        path.unlink(missing_ok=True)


__all__ = ["Basis", "FileHashes", "ImageDeltaFailed", "ImageDeltaFetcher", "check_image",
           "digest_bound", "file_hashes", "hash_chunk", "pick_basis", "strong_hash"]
