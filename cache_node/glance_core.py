"""The Glance image service of a node, framework-free: records, listing, data, cache management.

Every node serves the Glance v2 read API under `/glance`. Its backend (`glance_backends`) is
the origin's own image directory, a real Glance API (origin, `--glance-upstream URL`) or the
next node's `/glance` API (cache role); the caller's `X-Auth-Token` is passed through.
Authorization stays upstream (`glance_auth.GlanceAuthorizer`). Image data from an HTTP backend
is fetched once through the node's `FetchCoordinator` into the content-addressed store (keyed
by sha256) and bound to the image id only after md5 and the record's `os_hash_value` verified;
clients streaming during that first fetch never receive their last byte before it verified.
A cache first tries to build a new image as a delta against a cached image of its family
(`glance_delta`); clients asking meanwhile wait for that one attempt (single flight), then get
the stored image or join the whole fetch it fell back to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cache_node.answers import BadRequest, NotFound, ServiceError
from cache_node.config import NodeConfig
from cache_node.fetch import Fetch, FetchCoordinator, FetchFailed, FetchPlan
from cache_node.glance_auth import Caller, GlanceAuthorizer, ListScope, UpstreamOffline
from cache_node.glance_backends import (
    Backend,
    DirectoryBackend,
    HeaderClient,
    HttpGlanceBackend,
    ImageDigest,
    LocalSource,
    RemoteSource,
)
from cache_node.glance_delta import (
    Basis,
    ImageDeltaFetcher,
    check_image,
    digest_bound,
    hash_chunk,
    strong_hash,
)
from cache_node.metrics import Metrics
from cache_node.store import BlobRef, BlobStore
from cache_node.upstream import UpstreamClient
from distro.glance_images import (
    GlanceImage,
    ImageQueryError,
    ImageRecordError,
    family_key,
    list_page,
    scope_params,
    validate_list_params,
)

log = logging.getLogger(__name__)

NAMESPACE = "glance"
NS_DATA = "glance-image"      # image id -> verified image data blob
NS_RECORD = "glance-record"   # image id -> the image record (JSON) as last confirmed
CURRENT_VERSION = "2.18"
SUPPORTED_VERSIONS = tuple(f"2.{n}" for n in range(18, -1, -1))  # newest first
READ_CHUNK = 256 << 10
HASH_CHUNK = 4 << 20
MIN_BATCH = 1 << 20


class RangeNotSatisfiable(ServiceError):
    status = 416

    def __init__(self, size: int) -> None:
        super().__init__(f"requested range not satisfiable (image has {size} bytes)")
        self.size = size


# -- values handed to the routes ---------------------------------------------------------------

@dataclass(frozen=True)
class ImageList:
    images: tuple[GlanceImage, ...]
    first: str
    next: str | None
    offline: bool = False


@dataclass(frozen=True)
class ImageView:
    image: GlanceImage
    offline: bool = False


@dataclass(frozen=True)
class LocalImageData:
    """Verified bytes on local disk (store blob or the origin's own data file)."""

    image: GlanceImage
    path: Path
    size: int
    sha256: str
    offline: bool = False


@dataclass(frozen=True)
class StreamingImageData:
    image: GlanceImage
    fetch: ImageFetch


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive


@dataclass(frozen=True)
class CachedImage:
    image_id: str
    hits: int
    last_accessed: float
    last_modified: float
    size: int


@dataclass(frozen=True)
class CacheState:
    cached: tuple[CachedImage, ...]
    queued: tuple[str, ...]


@dataclass(frozen=True)
class ClearResult:
    cache_deleted: int | None  # None: not asked to clear the cache
    queue_deleted: int | None


@dataclass(frozen=True)
class PruneResult:
    files: int
    bytes: int


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One `bytes=` range of RFC 9110; None means the whole body. 416 when unsatisfiable."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None  # not a single byte range: ignored, as RFC 9110 allows
    first, sep, last = spec.strip().partition("-")
    try:
        if not sep:
            return None
        if not first:
            n = int(last)
            if n <= 0 or size == 0:
                raise RangeNotSatisfiable(size)
            return ByteRange(max(0, size - n), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size or end <= start:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, min(end, size))


# -- the first fetch of an image, verified against its record ---------------------------------

class ImageFetch:
    """Follows a coordinator fetch, hashing md5 and os_hash_algo (in two threads, in parallel)
    as the bytes land on disk.

    Clients stream the written bytes as they arrive, all but the last one; `result` resolves
    once the whole image verified and is bound in the store, or fails: the blob is removed
    and the streams are aborted.
    """

    def __init__(self, image: GlanceImage, fetch: Fetch) -> None:
        self.image = image
        self.fetch = fetch
        self.hashed = 0
        self.result: asyncio.Future[BlobRef] = asyncio.get_running_loop().create_future()
        self.result.add_done_callback(lambda f: None if f.cancelled() else f.exception())
        self._event = asyncio.Event()
        self._fd = os.open(fetch.partial_path, os.O_RDONLY)

    @property
    def verified(self) -> bool:
        return self.result.done() and not self.result.cancelled() and \
            self.result.exception() is None

    def _notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_beyond(self, seen: int) -> None:
        """Until more than `seen` bytes were written, or the verification ended."""
        if self.fetch.written > seen or self.result.done():
            return
        if not self.fetch.done.done():
            await self.fetch.wait_beyond(seen)
        else:
            await self._event.wait()

    async def run(self, on_verified: Callable[[BlobRef], None],
                  on_failed: Callable[[BlobRef | None, str], None]) -> None:
        image, fetch = self.image, self.fetch
        md5 = hashlib.md5()
        algo, strong = strong_hash(image.os_hash_algo)
        ref: BlobRef | None = None
        try:
            while True:
                done = fetch.done.done()
                if not done and fetch.written - self.hashed < MIN_BATCH:
                    await fetch.wait_beyond(self.hashed + MIN_BATCH - 1)  # batch small reads
                    continue
                if self.hashed < fetch.written:
                    n = min(HASH_CHUNK, fetch.written - self.hashed)
                    data = os.pread(self._fd, n, self.hashed)
                    if not data:
                        raise FetchFailed("partial image file shrank", 500)
                    await hash_chunk(data, md5, strong)
                    self.hashed += len(data)
                    continue
                if done:
                    break
                await fetch.wait_beyond(self.hashed)
            ref = fetch.done.result()  # raises FetchFailed
            problem = check_image(image, ref.size, md5.hexdigest(), strong.hexdigest(), algo)
            if problem:
                on_failed(ref, problem)
                raise FetchFailed(f"image {image.id} failed verification: {problem}", 502)
            on_verified(ref)
            self.result.set_result(ref)
        except FetchFailed as exc:
            self.result.set_exception(exc)
        except Exception as exc:
            log.exception("verifying image %s", image.id)
            on_failed(ref, str(exc))
            self.result.set_exception(FetchFailed(f"internal error: {exc}", 500))
        finally:
            os.close(self._fd)
            self._notify()


async def stream_image(ifetch: ImageFetch, write: Callable[[bytes], Awaitable[None]],
                       start: int, end: int) -> int:
    """Send bytes [start, end) of an image still being fetched; the last one only once the
    whole image verified. Raises FetchFailed (the caller aborts its response)."""
    offset = start
    try:
        fd = os.open(ifetch.fetch.partial_path, os.O_RDONLY)
    except FileNotFoundError:
        ref = await ifetch.result
        fd = os.open(ifetch.fetch.blob_path(ref.digest), os.O_RDONLY)
    try:
        while offset < end:
            if ifetch.result.done() and not ifetch.verified:
                ifetch.result.result()  # raises FetchFailed
            written = ifetch.fetch.written
            cap = min(end, written) if ifetch.verified else min(end - 1, written)
            if offset < cap:
                chunk = os.pread(fd, min(READ_CHUNK, cap - offset), offset)
                if not chunk:
                    raise FetchFailed("image data vanished while streaming", 500)
                await write(chunk)
                offset += len(chunk)
                continue
            # Caught up with the download: wait for a batch rather than a trickle.
            # (offset == written here unless all bytes are in and only the verification is due)
            await ifetch.wait_beyond(written if written >= end else min(offset + READ_CHUNK, end) - 1)
        return offset
    finally:
        os.close(fd)


# -- the service -------------------------------------------------------------------------------

class GlanceService:
    def __init__(self, backend: Backend, store: BlobStore, fetches: FetchCoordinator,
                 metrics: Metrics, auth_ttl: float, offline_policy: str,
                 delta: ImageDeltaFetcher | None = None) -> None:
        self.backend = backend
        self.delta = delta  # None: the upstream is not an edgedepot node (or no upstream)
        self.store = store
        self.fetches = fetches
        self.metrics = metrics
        self.auth = GlanceAuthorizer(backend, auth_ttl, offline_policy)
        self.hits: Counter[str] = Counter()
        self._inflight: dict[str, ImageFetch] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._records: dict[str, GlanceImage] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Restore the records of images whose data this node holds."""
        for image_id, digest in list(self.store.names(NS_RECORD)):
            try:
                doc = json.loads(self.store.read_bytes(digest))
                self._records[image_id] = GlanceImage.from_json(doc)
            except (OSError, ValueError, ImageRecordError):
                log.warning("dropping unreadable cached record of image %s", image_id)
                self.store.unbind(NS_RECORD, image_id)

    async def close(self) -> None:
        if self.delta is not None:
            await self.delta.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- documents ---------------------------------------------------------------------------
    @staticmethod
    def versions(base_url: str) -> dict[str, object]:
        href = base_url.rstrip("/") + "/v2/"
        return {"versions": [
            {"id": f"v{v}", "status": "CURRENT" if v == CURRENT_VERSION else "SUPPORTED",
             "links": [{"rel": "self", "href": href}]} for v in SUPPORTED_VERSIONS]}

    # -- records -----------------------------------------------------------------------------
    def cached_record(self, image_id: str) -> GlanceImage | None:
        return self._records.get(image_id)

    def _remember(self, image: GlanceImage) -> None:
        if self._records.get(image.id) == image:
            return
        body = json.dumps(image.to_json(), sort_keys=True).encode()
        ref = self.store.put_bytes(body)
        self.store.bind(NS_RECORD, image.id, ref.digest)
        self._records[image.id] = image

    async def list_images(self, caller: Caller, params: Sequence[tuple[str, str]]) -> ImageList:
        params = list(params)
        try:
            validate_list_params(params)
            scope = ListScope(**scope_params(params))
            decision = await self.auth.listing(caller, scope, list(self._records.values()))
            page = list_page(decision.images, params)
        except ImageQueryError as exc:
            raise BadRequest(str(exc)) from None
        return ImageList(page.images, page.first, page.next, decision.offline)

    async def show_image(self, caller: Caller, image_id: str) -> ImageView:
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        return ImageView(decision.image, decision.offline)

    # -- data --------------------------------------------------------------------------------
    async def image_data(self, caller: Caller, image_id: str
                         ) -> LocalImageData | StreamingImageData:
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        image = decision.image
        if image.status != "active":
            raise ServiceError(f"image {image_id} has no data (status {image.status})", 204)
        self.metrics.requests.inc(NAMESPACE)
        source = self.backend.source(caller, image) if not decision.offline else None
        if isinstance(source, LocalSource):
            size = image.size if image.size is not None else source.path.stat().st_size
            self.hits[image_id] += 1
            return LocalImageData(image, source.path, size, source.sha256)
        ref = self.store.lookup(NS_DATA, image_id)
        if ref is not None:
            self.metrics.hits.inc(NAMESPACE)
            self.hits[image_id] += 1
            return LocalImageData(image, self.store.blob_path(ref.digest), ref.size, ref.digest,
                                  decision.offline)
        if source is None:
            raise UpstreamOffline(f"upstream unreachable and image {image_id} is not cached")
        self.metrics.misses.inc(NAMESPACE)
        self.hits[image_id] += 1
        ref = await self._try_delta(caller, image)
        if ref is not None:
            return LocalImageData(image, self.store.blob_path(ref.digest), ref.size, ref.digest)
        return StreamingImageData(image, self._start(image, source))

    async def image_digest(self, caller: Caller, image_id: str) -> ImageDigest:
        """The sha256 and size of an image's data (`/glance/edgedepot/v1/images/{id}/digest`),
        for a downstream cache's delta fetch. An image not held yet is fetched first (by delta
        or whole, shared with any download of it): its sha256 is known once it verified."""
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        image = decision.image
        if image.status != "active":
            raise NotFound(f"image {image_id} has no data (status {image.status})")
        source = self.backend.source(caller, image) if not decision.offline else None
        if isinstance(source, LocalSource):
            size = image.size if image.size is not None else source.path.stat().st_size
            return ImageDigest(source.sha256, size)
        ref = self.store.lookup(NS_DATA, image_id)
        if ref is None:
            if source is None:
                raise UpstreamOffline(f"upstream unreachable and image {image_id} is not cached")
            ref = await self._try_delta(caller, image)
            if ref is None:
                try:
                    ref = await asyncio.shield(self._start(image, source).result)
                except FetchFailed as exc:
                    raise ServiceError(str(exc), exc.http_status) from None
        return ImageDigest(ref.digest, ref.size)

    def path_for_digest(self, sha256: str) -> Path | None:
        """A file of this node's images with this sha256, for the delta endpoints: the
        origin's directory files (store blobs are found by `Node.locate_blob` itself)."""
        if isinstance(self.backend, DirectoryBackend):
            return self.backend.path_for_digest(sha256)
        return None

    async def _try_delta(self, caller: Caller, image: GlanceImage) -> BlobRef | None:
        """The image's data built as a delta against a cached image of its family, bound in
        the store; None when there is no basis or it failed (then fetch it whole)."""
        if self.delta is None or image.id in self._inflight:
            return None
        backend = self.backend
        assert isinstance(backend, HttpGlanceBackend)
        family = family_key(image)  # look up (and so touch) only the family's blobs
        cached = [Basis(other, ref) for other, ref in
                  ((o, self.store.lookup(NS_DATA, o.id)) for o in self._records.values()
                   if o.id != image.id and family_key(o) == family)
                  if ref is not None]

        def bind(ref: BlobRef) -> None:
            self.store.bind(NS_DATA, image.id, ref.digest)
            self._remember(image)

        return await self.delta.attempt(image, cached,
                                        lambda: backend.fetch_digest(caller, image.id), bind)

    def _start(self, image: GlanceImage, source: RemoteSource) -> ImageFetch:
        running = self._inflight.get(image.id)
        if running is not None:
            self.metrics.coalesced.inc(NAMESPACE)
            return running
        backend = self.backend
        assert isinstance(backend, HttpGlanceBackend)
        plan = FetchPlan(key=f"glance:{image.id}", url=source.url, namespace=NAMESPACE,
                         expected_sha256=None, expected_size=image.size, require_digest=False)
        fetch = self.fetches.start(plan, HeaderClient(backend.client, dict(source.headers)))
        log.info("fetching image %s (%s bytes) from %s", image.id, image.size, source.url)
        ifetch = ImageFetch(image, fetch)
        self._inflight[image.id] = ifetch
        self._remember(image)

        def verified(ref: BlobRef) -> None:
            self.store.bind(NS_DATA, image.id, ref.digest)
            self._remember(image)

        def failed(ref: BlobRef | None, problem: str) -> None:
            self.metrics.verify_failures.inc(NAMESPACE)
            log.error("discarding data of image %s: %s", image.id, problem)
            if ref is not None and not digest_bound(self.store, ref.digest):
                self.store.remove(ref.digest)

        task = asyncio.create_task(ifetch.run(verified, failed), name=f"verify {image.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def finished(_task: asyncio.Task[None]) -> None:
            self._inflight.pop(image.id, None)

        task.add_done_callback(finished)
        return ifetch

    def _delta_running(self, image_id: str) -> bool:
        return self.delta is not None and image_id in self.delta.running

    # -- cache management (admin) ------------------------------------------------------------
    async def cache_state(self, caller: Caller) -> CacheState:
        await self.auth.require_admin(caller)
        self.store.flush_access()
        rows = self.store.db.execute(
            "SELECT n.name, b.size, b.last_access, n.updated FROM names n "
            "JOIN blobs b ON b.digest = n.digest WHERE n.namespace=? ORDER BY n.name",
            (NS_DATA,)).fetchall()
        cached = tuple(CachedImage(str(name), self.hits.get(str(name), 0), float(access),
                                   float(updated), int(size))
                       for name, size, access, updated in rows)
        deltas = self.delta.running if self.delta is not None else frozenset()
        return CacheState(cached, tuple(sorted({*self._inflight, *deltas})))

    async def cache_queue(self, caller: Caller, image_id: str) -> None:
        await self.auth.require_admin(caller)
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        if decision.image.status != "active":
            raise BadRequest("Only images with status active can be targeted for queueing")
        if self.store.lookup(NS_DATA, image_id) is not None or decision.offline:
            return
        source = self.backend.source(caller, decision.image)
        if isinstance(source, RemoteSource) and not self._delta_running(image_id):
            task = asyncio.create_task(self._queue(caller, decision.image, source),
                                       name=f"queue {image_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _queue(self, caller: Caller, image: GlanceImage, source: RemoteSource) -> None:
        if await self._try_delta(caller, image) is None:
            self._start(image, source)

    async def cache_delete(self, caller: Caller, image_id: str) -> None:
        await self.auth.require_admin(caller)
        ref = self.store.lookup(NS_DATA, image_id)
        if ref is None:
            raise NotFound(f"Image {image_id} not found in cache.")
        self._drop(image_id, ref)

    def _drop(self, image_id: str, ref: BlobRef) -> None:
        self.store.unbind(NS_DATA, image_id)
        if not digest_bound(self.store, ref.digest):
            self.store.remove(ref.digest)
        self.hits.pop(image_id, None)

    async def cache_clear(self, caller: Caller, target: str) -> ClearResult:
        await self.auth.require_admin(caller)
        target = target.strip().lower()
        if target not in ("", "cache", "queue"):
            raise BadRequest("If provided 'x-image-cache-clear-target' must be 'cache', "
                             "'queue' or empty string.")
        deleted: int | None = None
        if target in ("", "cache"):
            deleted = 0
            for image_id, _digest in list(self.store.names(NS_DATA)):
                ref = self.store.lookup(NS_DATA, image_id)
                if ref is not None:
                    self._drop(image_id, ref)
                    deleted += 1
        # Queued images are being fetched already; a running fetch is not abandoned.
        return ClearResult(deleted, 0 if target in ("", "queue") else None)

    async def cache_clean(self, caller: Caller) -> int:
        """Forget cached records whose data is gone; returns how many."""
        await self.auth.require_admin(caller)
        dropped = 0
        for image_id in list(self._records):
            if image_id not in self._inflight and not self._delta_running(image_id) \
                    and self.store.lookup(NS_DATA, image_id) is None:
                self.store.unbind(NS_RECORD, image_id)
                self._records.pop(image_id, None)
                dropped += 1
        return dropped

    async def cache_prune(self, caller: Caller) -> PruneResult:
        await self.auth.require_admin(caller)
        before = self.store.stats()
        files = self.store.evict_to_quota()
        after = self.store.stats()
        return PruneResult(files, max(0, before.total_bytes - after.total_bytes))


async def make_glance_service(config: NodeConfig, store: BlobStore, fetches: FetchCoordinator,
                              metrics: Metrics, exit_stack: contextlib.AsyncExitStack
                              ) -> GlanceService | None:
    """The node's image service, or None when it has no image source."""
    settings = config.glance
    if not settings.enabled:
        return None
    backend: Backend
    if config.role == "origin" and settings.images_dir is not None:
        if settings.upstream_url is not None:
            log.warning("both --images and --glance-upstream given: serving the directory")
        backend = DirectoryBackend(settings.images_dir,
                                   config.store_dir / "glance-origin-digests.json")
        await backend.refresh()
    else:
        if config.role == "origin":
            base = settings.upstream_url
        else:
            base = f"{config.upstream}glance/" if config.upstream else None
        if base is None:
            return None
        client = UpstreamClient(
            NAMESPACE, config.upstream_client,
            on_request=lambda: metrics.upstream_requests.inc(NAMESPACE),
            on_bytes=lambda n: metrics.upstream_bytes.inc(NAMESPACE, n))
        await exit_stack.enter_async_context(client)
        backend = HttpGlanceBackend(base, client)
    delta: ImageDeltaFetcher | None = None
    if config.role == "cache" and config.upstream:
        # The upstream is an edgedepot node: it serves /delta/v1/ and the image digests.
        delta = ImageDeltaFetcher(store, metrics, f"{config.upstream}delta/v1/",
                                  config.store_dir / "delta-work" / "glance")
    service = GlanceService(backend, store, fetches, metrics, settings.auth_ttl,
                            settings.offline_policy, delta)
    service.load()
    exit_stack.push_async_callback(service.close)
    return service


__all__ = ["GlanceService", "make_glance_service", "parse_range", "stream_image"]
