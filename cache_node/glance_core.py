"""The Glance image service of a node, framework-free: records, listing, data, cache management.

Every node serves the Glance v2 read API under `/glance`. Its backend (`glance_backends`) is
the origin's own image directory, a real Glance API (origin, `--glance-upstream URL`) or the
next node's `/glance` API (cache role); the caller's `X-Auth-Token` is passed through.
Authorization stays upstream (`glance_auth.GlanceAuthorizer`). Image data from an HTTP backend
is fetched once through the node's `FetchCoordinator` into the content-addressed store (keyed
by sha256) and bound to the image id only after md5 and the record's `os_hash_value` verified;
clients streaming during that first fetch never receive their last byte before it verified.
A cache builds a new image from a delta against a cached image of its family (`glance_delta`)
as the producer of that same one fetch: clients stream the image while it is rebuilt, as they
would a download. An origin serving an image directory prepares the patch of every family's
newest image against the one before it as soon as it appears (the directory is watched), so
the first cache to ask does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cache_node.answers import (
    Answer,
    BadRequest,
    BlobAnswer,
    NotFound,
    ServiceError,
    StreamAnswer,
)
from cache_node.config import NodeConfig, delta_client_settings
from cache_node.fetch import Fetch, FetchCoordinator, FetchFailed, FetchPlan
from cache_node.glance_auth import Caller, GlanceAuthorizer, ListScope, UpstreamOffline
from cache_node.glance_backends import (
    Backend,
    DirectoryBackend,
    HttpGlanceBackend,
    ImageDigest,
    LocalSource,
    RemoteSource,
)
from cache_node.glance_delta import Basis, ImageDeltaFetcher, image_digests, pick_basis
from cache_node.metrics import Metrics
from cache_node.repository import RepoKind, RepoSummary
from cache_node.store import BlobRef, BlobStore
from distro.glance_images import (
    GlanceImage,
    ImageQueryError,
    ImageRecordError,
    family_key,
    list_page,
    scope_params,
    validate_list_params,
)
from distro.wire import RefreshReport
from syncer.http_client import HttpClient

log = logging.getLogger(__name__)

NAMESPACE = "glance"
NS_DATA = "glance-image"      # image id -> verified image data blob
NS_RECORD = "glance-record"   # image id -> the image record (JSON) as last confirmed
CURRENT_VERSION = "2.18"
SUPPORTED_VERSIONS = tuple(f"2.{n}" for n in range(18, -1, -1))  # newest first
OFFLINE_HEADER = "X-Edgedepot-Offline"


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
    sha256: str | None = None  # of its data, when this node knows it without asking


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


IMAGE_TYPE = "application/octet-stream"
FETCH_PREFIX = "glance:"


def _fetch_key(image_id: str) -> str:
    return FETCH_PREFIX + image_id


def _image_headers(image: GlanceImage, offline: bool) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    if image.checksum:
        headers.append(("Content-MD5", image.checksum))
    if offline:
        headers.append((OFFLINE_HEADER, "1"))
        headers.append(("Warning", '110 - "upstream unreachable; served from cache under the '
                                   'offline policy"'))
    return tuple(headers)


# -- the service -------------------------------------------------------------------------------

WATCH_INTERVAL = 5.0  # seconds between looks at an origin's image directory
Prepare = Callable[[str, str], None]  # (target sha256, basis sha256): compute its patch ahead


class GlanceService:
    def __init__(self, backend: Backend, store: BlobStore, fetches: FetchCoordinator,
                 metrics: Metrics, auth_ttl: float, offline_policy: str,
                 delta: ImageDeltaFetcher | None = None,
                 prepare: Prepare | None = None) -> None:
        self.backend = backend
        self.delta = delta  # None: the upstream is not an edgedepot node (or no upstream)
        self.prepare = prepare  # an origin's: patches of new image versions, computed ahead
        self._prepared: set[tuple[str, str]] = set()
        self.store = store
        self.fetches = fetches
        self.metrics = metrics
        self.auth = GlanceAuthorizer(backend, auth_ttl, offline_policy)
        self.hits: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._records: dict[str, GlanceImage] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> None:
        """Restore the records of images whose data this node holds (at start, and before
        choosing a delta basis: another worker process of the node may have stored one)."""
        for image_id, digest in list(self.store.names(NS_RECORD)):
            if image_id in self._records:
                continue
            try:
                doc = json.loads(self.store.read_bytes(digest))
                self._records[image_id] = GlanceImage.from_json(doc)
            except (OSError, ValueError, ImageRecordError):
                log.warning("dropping unreadable cached record of image %s", image_id)
                self.store.unbind(NS_RECORD, image_id)

    def watch_directory(self, backend: DirectoryBackend) -> None:
        """Look at the image directory every `WATCH_INTERVAL` seconds (and now): when a new
        version of an image family appears, prepare its patch against the version before it,
        which caches hold, so the first cache to ask finds it ready."""
        task = asyncio.create_task(self._watch(backend), name="glance directory watch")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, backend: DirectoryBackend) -> None:
        while True:
            try:
                await backend.refresh()
                self._prepare_new_versions(backend)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an invalid directory: served as before, retried
                log.warning("image directory: %s", exc)
            await asyncio.sleep(WATCH_INTERVAL)

    def _prepare_new_versions(self, backend: DirectoryBackend) -> None:
        if self.prepare is None:
            return
        for new_id, new_sha, old_id, old_sha in backend.latest_versions():
            if (new_sha, old_sha) not in self._prepared:
                self._prepared.add((new_sha, old_sha))
                log.info("image %s is the newest of its family: preparing its patch against "
                         "image %s", new_id, old_id)
                self.prepare(new_sha, old_sha)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.delta is not None:
            await self.delta.close()

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
        return ImageView(decision.image, decision.offline, self._known_sha256(decision.image))

    def _known_sha256(self, image: GlanceImage) -> str | None:
        """The sha256 of an image's data if this node has it (its own file, or stored): sent
        with the record so a downstream cache's delta fetch needs no digest request."""
        if image.status != "active":
            return None
        local = self.backend.local_sha256(image.id)
        if local is not None:
            return local
        ref = self.store.lookup(NS_DATA, image.id)
        return ref.digest if ref is not None else None

    # -- data --------------------------------------------------------------------------------
    async def image_data(self, caller: Caller, image_id: str) -> BlobAnswer | StreamAnswer:
        """The image's bytes: a verified file, or the shared fetch clients stream from."""
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        image = decision.image
        if image.status != "active":
            raise ServiceError(f"image {image_id} has no data (status {image.status})", 204)
        source = self.backend.source(caller, image) if not decision.offline else None
        headers = _image_headers(image, decision.offline)
        if isinstance(source, LocalSource):
            size = image.size if image.size is not None else source.path.stat().st_size
            self.hits[image_id] += 1
            return BlobAnswer(source.path, size, source.sha256, IMAGE_TYPE,
                              vouched=image_digests(image), headers=headers)
        ref = self.store.lookup(NS_DATA, image_id)
        if ref is not None:
            self.metrics.hits.inc(NAMESPACE)
            self.hits[image_id] += 1
            return self._stored(image, ref, headers)
        if source is None:
            raise UpstreamOffline(f"upstream unreachable and image {image_id} is not cached")
        self.metrics.misses.inc(NAMESPACE)
        self.hits[image_id] += 1
        joined = self.fetches.running(_fetch_key(image.id))
        fetch = self._start(caller, image, source)
        return StreamAnswer(fetch, IMAGE_TYPE, headers, coalesced=joined,
                            delta=fetch.produced)

    def _stored(self, image: GlanceImage, ref: BlobRef,
                headers: tuple[tuple[str, str], ...]) -> BlobAnswer:
        return BlobAnswer(self.store.blob_path(ref.digest), ref.size, ref.digest, IMAGE_TYPE,
                          vouched=image_digests(image), headers=headers)

    async def image_digest(self, caller: Caller, image_id: str) -> ImageDigest:
        """The sha256 and size of an image's data (`/glance/edgedepot/v1/images/{id}/digest`),
        with the record digests this node verified them against, for a downstream cache's
        delta fetch. An image not held yet is fetched first (by delta or whole, shared with
        any download of it): its sha256 is known once it verified."""
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        image = decision.image
        if image.status != "active":
            raise NotFound(f"image {image_id} has no data (status {image.status})")
        source = self.backend.source(caller, image) if not decision.offline else None
        if isinstance(source, LocalSource):
            size = image.size if image.size is not None else source.path.stat().st_size
            return ImageDigest.of(source.sha256, size, image)
        ref = self.store.lookup(NS_DATA, image_id)
        if ref is None:
            if source is None:
                raise UpstreamOffline(f"upstream unreachable and image {image_id} is not cached")
            try:
                ref = await asyncio.shield(self._start(caller, image, source).done)
            except FetchFailed as exc:
                raise ServiceError(str(exc), exc.http_status) from None
        return ImageDigest.of(ref.digest, ref.size, image)

    # -- the node's Repository protocol ------------------------------------------------------
    kind: RepoKind = "glance"
    name = "glance"
    namespace = NAMESPACE

    async def answer(self, path: str, accept: str | None = None) -> Answer:
        """An image's data by id, as an anonymous caller may see it (plan pre-warming)."""
        return await self.image_data(Caller(None), path)

    def locate(self, sha256: str) -> Path | None:
        """A file of this node's images with this sha256, for the delta endpoints: the
        origin's directory files (store blobs are found by `Node.locate_blob` itself)."""
        return self.backend.path_for_digest(sha256)

    def unchanged_while(self, path: str) -> Callable[[], bool] | None:
        return None  # not repeated by the hot path (see `Repository.unchanged_while`)

    def summary(self) -> RepoSummary:
        return RepoSummary("glance", "glance", self.backend.describe(), ())

    async def refresh(self) -> list[RefreshReport]:
        return []  # records are revalidated per request, under the authorization TTL

    def reconfigure(self, config: NodeConfig) -> None:
        """Take a reload: the authorization TTL and offline policy, and a moved upstream
        (stored records and data stay; the old upstream's authorization answers do not)."""
        self.auth.reconfigure(config.glance.auth_ttl, config.glance.offline_policy)
        if self.backend.reconfigure(config):
            log.info("images now come from %s", self.backend.describe())
            self.auth.forget()
        if self.delta is not None and config.delta_url is not None:
            self.delta.reconfigure(config.delta_url, delta_client_settings(config))

    def _basis(self, image: GlanceImage) -> Basis | None:
        """A cached image of `image`'s family to build it from (see `pick_basis`)."""
        family = family_key(image)  # look up (and so touch) only the family's blobs
        self.load()
        cached = [Basis(other, ref) for other, ref in
                  ((o, self.store.lookup(NS_DATA, o.id)) for o in self._records.values()
                   if o.id != image.id and family_key(o) == family)
                  if ref is not None]
        return pick_basis(image, cached)

    def _start(self, caller: Caller, image: GlanceImage, source: RemoteSource) -> Fetch:
        """Join or start the one fetch of an image's data, verified against its record's
        digests before it is bound: computed here from a real Glance; from an edgedepot
        tier, taken from its vouch and bound to the bytes by the sha256 it confirms. With a
        cached image of its family and an edgedepot upstream, the bytes are rebuilt from a
        delta against it (streamed all the same), else downloaded."""
        backend = self.backend

        async def confirmed_sha256() -> str | None:
            digest = await backend.fetch_digest(caller, image.id)
            return digest.sha256 if digest is not None else None

        expected = image_digests(image)
        if not expected:
            raise ServiceError(f"image {image.id}: the record has neither checksum nor a "
                               f"supported os_hash_value; refusing unverifiable data", 502)
        plan = FetchPlan(key=_fetch_key(image.id), url=source.url, namespace=NAMESPACE,
                         expected_sha256=None, expected_size=image.size, require_digest=False,
                         binds=((NS_DATA, image.id),), expected_others=expected,
                         headers=source.headers, accept_vouched=source.vouches,
                         confirm_sha256=confirmed_sha256 if source.vouches else None)
        running = self.fetches.running(plan.key)
        produce = None
        basis = self._basis(image) if self.delta is not None and not running else None
        if self.delta is not None and basis is not None:
            produce = self.delta.producer(
                image, basis, lambda: backend.fetch_digest(caller, image.id))
        fetch = self.fetches.start(plan, source.client, produce)
        if not running:
            how = f"by delta against image {basis.image.id}" if basis is not None else "whole"
            log.info("fetching image %s (%s bytes) %s from %s", image.id, image.size, how,
                     source.url)
            self._remember(image)
            if self.prepare is not None:  # an origin in front of a Glance: prepare once held
                fetch.done.add_done_callback(lambda done: self._prepared_after(image, done))
        return fetch

    def _prepared_after(self, image: GlanceImage, done: asyncio.Future[BlobRef]) -> None:
        if self.prepare is None or done.cancelled() or done.exception() is not None:
            return
        basis = self._basis(image)
        if basis is not None and image.created_at and basis.image.created_at \
                and basis.image.created_at < image.created_at:
            self.prepare(done.result().digest, basis.ref.digest)

    def _queued(self) -> set[str]:
        return {key[len(FETCH_PREFIX):] for key in self.fetches.running_keys()
                if key.startswith(FETCH_PREFIX)}

    # -- cache management (admin) ------------------------------------------------------------
    async def cache_state(self, caller: Caller) -> CacheState:
        await self.auth.require_admin(caller)
        cached = tuple(CachedImage(b.name, self.hits.get(b.name, 0), b.last_access,
                                   b.updated, b.size) for b in self.store.bound(NS_DATA))
        return CacheState(cached, tuple(sorted(self._queued())))

    async def cache_queue(self, caller: Caller, image_id: str) -> None:
        await self.auth.require_admin(caller)
        decision = await self.auth.image(caller, image_id, self.cached_record(image_id))
        if decision.image.status != "active":
            raise BadRequest("Only images with status active can be targeted for queueing")
        if self.store.lookup(NS_DATA, image_id) is not None or decision.offline:
            return
        source = self.backend.source(caller, decision.image)
        if isinstance(source, RemoteSource) and image_id not in self._queued():
            task = asyncio.create_task(self._queue(caller, decision.image, source),
                                       name=f"queue {image_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _queue(self, caller: Caller, image: GlanceImage, source: RemoteSource) -> None:
        self._start(caller, image, source)

    async def cache_delete(self, caller: Caller, image_id: str) -> None:
        await self.auth.require_admin(caller)
        ref = self.store.lookup(NS_DATA, image_id)
        if ref is None:
            raise NotFound(f"Image {image_id} not found in cache.")
        self._drop(image_id, ref)

    def _drop(self, image_id: str, ref: BlobRef) -> None:
        self.store.unbind(NS_DATA, image_id)
        if not self.store.is_bound(ref.digest):
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
            if image_id not in self._queued() and self.store.lookup(NS_DATA, image_id) is None:
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
                              metrics: Metrics, exit_stack: contextlib.AsyncExitStack,
                              new_client: Callable[[str], Awaitable[HttpClient]],
                              prepare: Prepare | None = None) -> GlanceService | None:
    """The node's image service, or None when it has no image source. `new_client(namespace)`
    gives an upstream client with the node's settings (the node reconfigures it on reload);
    an origin's `prepare(target, basis)` computes a patch ahead (new image versions)."""
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
        base = config.glance_upstream
        if base is None:
            return None
        backend = HttpGlanceBackend(base, await new_client(NAMESPACE),
                                    vouches=config.role == "cache")
    delta: ImageDeltaFetcher | None = None
    if config.role == "cache" and config.delta_url:
        # The upstream is an edgedepot node: it serves /delta/v1/ and the image digests.
        delta = ImageDeltaFetcher(store, metrics, config.delta_url,
                                  config.store_dir / "delta-work" / "glance",
                                  delta_client_settings(config))
    service = GlanceService(backend, store, fetches, metrics, settings.auth_ttl,
                            settings.offline_policy, delta,
                            prepare if config.role == "origin" else None)
    service.load()
    exit_stack.push_async_callback(service.close)
    if service.prepare is not None and isinstance(backend, DirectoryBackend):
        service.watch_directory(backend)
    return service


__all__ = ["GlanceService", "image_digests", "make_glance_service"]
