"""Building a new image from a delta against a cached older image of the same family.

A cache whose upstream is an edgedepot node makes an image it does not hold yet as follows:

  1. pick a basis: a cached image (its data bound in the store) of the same family
     (`distro.glance_images.family_key`: the `edgedepot_family` property, else `os_distro` +
     `os_version`, else the name without its version), the most recently created one first;
     without a basis the image is downloaded whole, as before;
  2. start the node's one fetch of the image (`FetchCoordinator.start`) with a producer
     (`ImageDeltaFetcher.producer`) instead of a plain download: clients that ask meanwhile join
     it and stream the image as it is rebuilt, the last byte held until it verified;
  3. the producer asks the upstream for the sha256 of the new image's data,
     `GET {upstream}glance/edgedepot/v1/images/{id}/digest` (authorized like `/file`, with the
     caller's token), publishes the size and sha256 (clients get their answer's head now), and
     has `syncer.delta_client.DeltaClient.fetch_into` write the image into the fetch's partial
     file from `{upstream}delta/v1/blobs/<sha256>` and the basis blob: a patch applied as it
     arrives, or the missing blocks, whichever the upstream's offer says moves fewer bytes;
  4. the fetch then verifies the file as any other: the sha256, and the md5 and `os_hash_value`
     the upstream vouched for with that sha256 (computed in the same pass when it did not), and
     only then binds it to the image.

A broken transfer is retried, resuming the delta (its state lives in
`<store_dir>/delta-work/glance/` and outlives a failure or a restart: the next attempt resumes
the download and rebuilds locally). A delta that cannot be had (no digest upstream, no path the
upstream can serve, a whole fetch expected to move less, bytes that do not verify, a rotten
basis) hands over to the plain download, which resumes with `Range` from what the rebuild wrote:
every byte written had verified on the way (a patch segment's checksum, a block's strong hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cache_node.fetch import Fetch, FetchHead, Lead, Producer
from cache_node.glance_backends import ImageDigest
from cache_node.metrics import Metrics
from cache_node.store import BlobRef, BlobStore, PartialWriter
from distro.digests import file_sha256
from distro.errors import IntegrityError
from distro.glance_images import GlanceImage, family_key
from syncer.delta_client import DeltaClient, DeltaError, DeltaTransferError, WholeIsBetter
from syncer.http_client import ClientSettings, HttpClient, UpstreamUnavailable

log = logging.getLogger(__name__)

NAMESPACE = "glance"
HASH_CHUNK = 4 << 20
FIRST_PUBLISH = 128 << 10  # below the store's threshold for hashing in lane threads
PUBLISH_STEP = 1 << 20


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


class _PublishingSink:
    """The delta client's sink: the fetch's partial file (hashed as it is written), whose
    growth clients following the fetch are told about on the event loop."""

    def __init__(self, partial: PartialWriter, fetch: Fetch,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.partial = partial
        self.fetch = fetch
        self.loop = loop

    @property
    def size(self) -> int:
        return self.partial.size

    def write(self, data: bytes | memoryview) -> None:  # from the rebuild's worker thread
        view = memoryview(data)
        # The first piece small (hashed inline, told at once), then in steps that keep the
        # followers moving while a large segment is written.
        step = FIRST_PUBLISH if self.partial.size == 0 else PUBLISH_STEP
        while view:
            self.partial.write_chunks((view[:step],))
            view = view[step:]
            step = PUBLISH_STEP
            self.loop.call_soon_threadsafe(self.fetch.published, self.partial.size)


class ImageDeltaFetcher:
    """Makes an image's data from its upstream's `/delta/v1/` and a basis blob, as the
    producer of the node's one fetch of that image."""

    def __init__(self, store: BlobStore, metrics: Metrics, delta_url: str,
                 work_dir: Path, settings: ClientSettings | None = None, retries: int = 3,
                 backoff: float = 1.0) -> None:
        self.store = store
        self.metrics = metrics
        self.delta_url = delta_url.rstrip("/") + "/"
        self.settings = settings  # the node's trust, client certificate, a patch-long timeout
        self.work_dir = work_dir
        self.retries = retries
        self.backoff = backoff
        # One client for every delta fetch: its connections to the upstream are kept, so an
        # image update starts without a new TCP (and TLS) handshake.
        self._http: HttpClient | None = None
        work_dir.mkdir(parents=True, exist_ok=True)
        cleanup_stale_work(work_dir)

    def reconfigure(self, delta_url: str, settings: ClientSettings) -> None:
        """A reload: the next attempts go to this upstream with these settings."""
        if self._http is not None:
            self._http.reconfigure(settings)
        self.delta_url, self.settings = delta_url.rstrip("/") + "/", settings

    async def _client(self) -> HttpClient:
        if self._http is None:
            self._http = await HttpClient("delta", self.settings or ClientSettings(
                connect_timeout=30, read_timeout=600, retries=0)).__aenter__()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.__aexit__(None, None, None)

    def producer(self, image: GlanceImage, basis: Basis,
                 digest_of: Callable[[], Awaitable[ImageDigest | None]]) -> Producer:
        """The producer of the fetch of ``image``: its delta against ``basis``, handing over
        to the plain download (`Lead.download`, resuming where the partial stands) when the
        delta cannot be had."""

        async def produce(lead: Lead) -> tuple[str | None, dict[str, str]]:
            partial = lead.partial
            digest = await self._digest(image, digest_of)
            if digest is None:
                return await lead.download()
            vouched = vouched_digests(digest)
            if not partial.size:  # (bytes an earlier worker left were hashed with all)
                partial.drop_digests(tuple(vouched))
            lead.set_head(FetchHead(digest.size, digest.sha256))
            sink = _PublishingSink(partial, lead.fetch, asyncio.get_running_loop())
            self.store.mark_busy(basis.ref.digest)
            try:
                await self._rebuild(image, digest, basis, sink)
                return digest.sha256, vouched
            except DeltaTransferError as exc:  # state kept: the next attempt resumes
                raise UpstreamUnavailable(self.delta_url, f"image {image.id} delta: {exc}") \
                    from None
            except WholeIsBetter:
                log.info("image %s: a whole fetch moves less than a delta", image.id)
            except (DeltaError, IntegrityError, OSError) as exc:
                log.warning("image %s: delta failed (%s); fetching the rest whole, from byte "
                            "%d", image.id, exc, partial.size)
                if isinstance(exc, IntegrityError):
                    await self._check_basis(basis)
            finally:
                self.store.unmark_busy(basis.ref.digest)
            await lead.download()
            return digest.sha256, vouched

        return produce

    async def _digest(self, image: GlanceImage,
                      digest_of: Callable[[], Awaitable[ImageDigest | None]]
                      ) -> ImageDigest | None:
        try:
            digest = await digest_of()
        except Exception as exc:  # the upstream's answer, whatever it was, gives no digest
            log.info("image %s: no digest from the upstream (%s); fetching it whole",
                     image.id, exc)
            return None
        if digest is None:
            log.info("image %s: the upstream tells no sha256; fetching it whole", image.id)
            return None
        if image.size is not None and digest.size != image.size:
            log.warning("image %s: upstream digest is of %d bytes, the record says %d; "
                        "fetching it whole", image.id, digest.size, image.size)
            return None
        return digest

    async def _rebuild(self, image: GlanceImage, digest: ImageDigest, basis: Basis,
                       sink: _PublishingSink) -> None:
        started = time.monotonic()
        state = self.work_dir / f"{digest.sha256}.delta-out"
        url = f"{self.delta_url}blobs/{digest.sha256}"
        basis_path = self.store.blob_path(basis.ref.digest)
        for attempt in range(self.retries + 1):
            client = DeltaClient(await self._client())
            try:
                async with client:
                    result = await client.fetch_into(url, basis_path, sink, state,
                                                     basis_sha256=basis.ref.digest)
                break
            except DeltaTransferError as exc:
                self.metrics.upstream_bytes.inc(NAMESPACE, client.received)
                if attempt == self.retries:
                    raise
                log.warning("image %s: delta broke off at %d of %d bytes (%s); resuming",
                            image.id, sink.size, digest.size, exc)
                await asyncio.sleep(self.backoff * 2 ** attempt)
            except (DeltaError, IntegrityError, OSError):
                _discard(state)  # nothing to resume: the next attempt starts afresh
                raise
        self.metrics.upstream_requests.inc(NAMESPACE, result.requests)
        self.metrics.upstream_bytes.inc(NAMESPACE, result.bytes_received)
        self.metrics.delta_fetches.inc(NAMESPACE)
        self.metrics.delta_saved_bytes.inc(NAMESPACE, max(0, digest.size - result.wire_bytes))
        self.metrics.delta_resumed_bytes.inc(NAMESPACE, result.resumed_bytes)
        log.info("image %s by %s delta against image %s: %d bytes moved instead of %d "
                 "(%d resumed; %.2f s)", image.id, result.method, basis.image.id,
                 result.wire_bytes, digest.size, result.resumed_bytes,
                 time.monotonic() - started)

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


WORK_MAX_AGE = 7 * 24 * 3600  # seconds an untouched delta's state is kept for a resume


def cleanup_stale_work(work_dir: Path, max_age: float = WORK_MAX_AGE) -> None:
    """Remove delta state nobody resumed for ``max_age`` seconds (call at start)."""
    now = time.time()
    for path in work_dir.iterdir():
        try:
            if now - path.stat().st_mtime > max_age:
                path.unlink()
        except OSError:
            continue


def _discard(out: Path) -> None:
    for path in (out, *(out.with_name(out.name + s) for s in (
            ".delta-partial", ".delta-state", ".delta-spool", ".delta-sig"))):
        path.unlink(missing_ok=True)


__all__ = ["Basis", "ImageDeltaFetcher", "check_image", "file_digests", "image_digests",
           "pick_basis", "supported_hash", "vouched_digests"]
