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
     and the basis blob (a patch, or the missing blocks); the result is sha256-verified, and
     the md5 and `os_hash_value` the upstream vouched for with that sha256 are checked against
     the record (computed from the file only when the upstream did not vouch for them), exactly
     as a whole fetch is; only then is the file moved into the store (`BlobStore.adopt_file`)
     and bound to the image.

Any failure (no digest upstream, a `DeltaError`, a verification failure, a corrupted basis)
falls back to the whole fetch. Work files live in `<store_dir>/delta-work/glance/`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_node.glance_backends import ImageDigest
from cache_node.metrics import Metrics
from cache_node.single_flight import Call, SingleFlight, run_once
from cache_node.store import BlobRef, BlobStore
from distro.digests import file_sha256
from distro.errors import IntegrityError
from distro.glance_images import GlanceImage, family_key
from syncer.delta_client import DeltaClient, DeltaError
from syncer.http_client import ClientSettings

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


def supported_hash(os_hash_algo: str | None) -> str | None:
    """The hashlib name of a record's `os_hash_algo` (default sha512), or None when this
    Python cannot compute it (such data cannot be verified, so it is refused)."""
    algo = (os_hash_algo or "sha512").lower()
    if algo.startswith("shake"):  # variable-length digests: not a Glance os_hash_algo
        return None
    try:
        hashlib.new(algo)
    except ValueError:
        return None
    return algo


def image_digests(image: GlanceImage) -> tuple[tuple[str, str], ...]:
    """The digest an image's data must match, as ((hashlib name, hex),): the record's
    multihash (`os_hash_algo`/`os_hash_value`, sha512 by default) when it has one, else its
    md5 `checksum` -- Glance's own policy (glanceclient verifies the multihash and falls back
    to md5 only for records without one). md5 adds no assurance over sha512 and costs the
    origin more CPU than the sha512 itself. Empty when the record's multihash cannot be
    computed here: such data cannot be verified and is refused."""
    if image.os_hash_value:
        algo = supported_hash(image.os_hash_algo)
        return ((algo, image.os_hash_value.lower()),) if algo is not None else ()
    if image.checksum:
        return (("md5", image.checksum.lower()),)
    return ()


def check_image(image: GlanceImage, size: int, digests: Mapping[str, str]) -> str | None:
    """What is wrong with data of this size and these digests (hashlib name -> hex) for this
    record (None: nothing)."""
    if image.size is not None and size != image.size:
        return f"size {size} != record's {image.size}"
    if not image.checksum and not image.os_hash_value:
        return "the image record has neither checksum nor os_hash_value"
    if image.os_hash_value:
        algo = supported_hash(image.os_hash_algo)
        if algo is None:
            return f"unsupported os_hash_algo {image.os_hash_algo!r}"
        if digests.get(algo) != image.os_hash_value.lower():
            return f"{algo} differs from the record's os_hash_value"
        return None
    if digests.get("md5") != (image.checksum or "").lower():
        return f"md5 {digests.get('md5')} != record's checksum {image.checksum}"
    return None


def vouched_digests(digest: ImageDigest) -> dict[str, str]:
    """The record digests an upstream edgedepot tier vouched for with an image's sha256."""
    out = {}
    if digest.md5:
        out["md5"] = digest.md5.lower()
    algo = supported_hash(digest.os_hash_algo) if digest.os_hash_value else None
    if algo is not None and digest.os_hash_value:
        out[algo] = digest.os_hash_value.lower()
    return out


async def file_digests(path: Path, algos: tuple[str, ...]) -> dict[str, str]:
    """Digests of a file read once, hashed in parallel threads (hashlib releases the GIL).
    The file is opened before this returns to the loop: it may be renamed meanwhile."""
    hashers = {algo: hashlib.new(algo) for algo in algos}
    with open(path, "rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, HASH_CHUNK):
            await asyncio.gather(*(asyncio.to_thread(h.update, chunk)
                                   for h in hashers.values()))
    return {algo: h.hexdigest() for algo, h in hashers.items()}


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
                 work_dir: Path, settings: ClientSettings | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.delta_url = delta_url.rstrip("/") + "/"
        self.settings = settings  # the node's trust, client certificate, a patch-long timeout
        self.work_dir = work_dir
        self._flights: SingleFlight[Call[BlobRef | None]] = SingleFlight(
            on_join=lambda: metrics.coalesced.inc(NAMESPACE))

    @property
    def running(self) -> frozenset[str]:
        """Ids of the images being fetched by delta now."""
        return self._flights.keys()

    async def attempt(self, image: GlanceImage, cached: Iterable[Basis],
                      digest_of: Callable[[], Awaitable[ImageDigest | None]],
                      bind: Callable[[BlobRef], None]) -> BlobRef | None:
        """Build the image from a basis among `cached` and `bind` it; None when there is no
        basis or the attempt failed (the caller then fetches it whole). One attempt per image
        at a time: concurrent callers share it, and a caller leaving does not cancel it."""
        running = image.id in self._flights
        basis = None if running else pick_basis(image, cached)
        if not running and basis is None:
            return None

        async def attempt() -> BlobRef | None:
            assert basis is not None  # only called when this caller starts the attempt
            return await self._attempt(image, basis, digest_of, bind)

        return await run_once(self._flights, image.id, attempt)

    async def close(self) -> None:
        await self._flights.close()

    def reconfigure(self, delta_url: str, settings: ClientSettings) -> None:
        """A reload: the next attempts go to this upstream with these settings."""
        self.delta_url, self.settings = delta_url.rstrip("/") + "/", settings

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
            await self._verify(image, path, digest)
            return BlobRef(digest.sha256, digest.size)
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        out = self.work_dir / f"{digest.sha256}.delta-out"
        try:
            async with DeltaClient(settings=self.settings) as client:
                result = await client.fetch(f"{self.delta_url}blobs/{digest.sha256}",
                                            basis=self.store.blob_path(basis.ref.digest),
                                            out=out, basis_sha256=basis.ref.digest)
        except (DeltaError, IntegrityError, OSError) as exc:
            _discard(out)
            if isinstance(exc, IntegrityError):
                await self._check_basis(basis)
            raise ImageDeltaFailed(f"delta fetch failed: {exc}") from None
        self.metrics.upstream_requests.inc(NAMESPACE, result.requests)
        self.metrics.upstream_bytes.inc(NAMESPACE, result.bytes_received)
        # The record digests the upstream vouched for with this sha256 (else computed here)
        # while the store adopts the file. DeltaClient verified its sha256 while building it
        # (all but "identical", a copy of the basis, which adopt_file hashes).
        verified, adopted = await asyncio.gather(
            self._verify(image, out, digest),
            asyncio.to_thread(self.store.adopt_file, out, digest.sha256,
                              verified=result.method != "identical"),
            return_exceptions=True)
        problem = verified if isinstance(verified, BaseException) else \
            adopted if isinstance(adopted, BaseException) else None
        if problem is not None:
            _discard(out)
            if isinstance(adopted, BlobRef) and not self.store.is_bound(adopted.digest):
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

    async def _verify(self, image: GlanceImage, path: Path, digest: ImageDigest) -> None:
        """The record's md5 and os_hash: taken from the upstream's vouch for this sha256 when
        it gave them, computed from the file only when it did not."""
        digests = vouched_digests(digest)
        wanted = dict(image_digests(image))
        missing = tuple(algo for algo in wanted if algo not in digests)
        if missing:
            digests.update(await file_digests(path, missing))
        problem = check_image(image, digest.size, digests)
        if problem:
            self.metrics.verify_failures.inc(NAMESPACE)
            raise ImageDeltaFailed(f"image {image.id} failed verification: {problem}")


def _discard(out: Path) -> None:
    for path in (out, *(out.with_name(out.name + s) for s in (
            ".delta-partial", ".delta-state", ".delta-spool", ".delta-sig"))):
        path.unlink(missing_ok=True)


__all__ = ["Basis", "ImageDeltaFailed", "ImageDeltaFetcher", "check_image", "file_digests",
           "image_digests", "pick_basis", "supported_hash", "vouched_digests"]
