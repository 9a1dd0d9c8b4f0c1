"""Single-flight upstream fetches that many clients stream from while they grow.

The first miss for a key starts one background task that downloads into a partial file while
hashing; every concurrent miss for the same key attaches to that task and reads the partial
file as it grows (a tee through the file system). The task belongs to the coordinator, not to
any client: a client that disconnects does not cancel it. The last byte of a stream is held
back until the whole download verified, so a client never receives a complete body of wrong
bytes: on a failed verification its response is aborted instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cache_node.metrics import Metrics
from cache_node.store import BlobRef, BlobStore, IntegrityError, PartialWriter, StoreFullError
from cache_node.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamIntegrityError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from distro.digests import parse_repr_digest

log = logging.getLogger(__name__)

READ_CHUNK = 256 << 10
DISK_HEADROOM = 64 << 10


@dataclass(frozen=True)
class FetchPlan:
    """What to download and what it must turn out to be."""

    key: str
    url: str
    namespace: str
    expected_sha256: str | None
    expected_size: int | None
    binds: tuple[tuple[str, str], ...] = ()  # (namespace, name) bound to the blob on success
    require_digest: bool = True


@dataclass(frozen=True)
class FetchHead:
    size: int | None
    sha256: str | None


class FetchFailed(Exception):
    """The shared download failed; `http_status` is what a not-yet-answered client gets."""

    def __init__(self, message: str, http_status: int = 502) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass
class Fetch:
    plan: FetchPlan
    partial_path: Path
    blob_path: Callable[[str], Path]
    head: asyncio.Future[FetchHead]
    done: asyncio.Future[BlobRef]
    written: int = 0
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_beyond(self, seen: int) -> None:
        while self.written <= seen and not self.done.done():
            await self._progress.wait()

    @property
    def verified(self) -> bool:
        return self.done.done() and not self.done.cancelled() and self.done.exception() is None


class FetchCoordinator:
    """Owns every in-flight download of one node."""

    def __init__(self, store: BlobStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._inflight: dict[str, Fetch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def inflight_count(self) -> int:
        return len(self._inflight)

    def get(self, key: str) -> Fetch | None:
        return self._inflight.get(key)

    def start(self, plan: FetchPlan, client: UpstreamClient) -> Fetch:
        existing = self._inflight.get(plan.key)
        if existing is not None:
            self.metrics.coalesced.inc(plan.namespace)
            return existing
        loop = asyncio.get_running_loop()
        partial = self.store.new_partial()
        fetch = Fetch(plan, partial.path, self.store.blob_path, loop.create_future(),
                      loop.create_future())
        # Nobody may be left with an unretrieved exception warning.
        fetch.head.add_done_callback(_consume)
        fetch.done.add_done_callback(_consume)
        self._inflight[plan.key] = fetch
        self.metrics.inflight.set(len(self._inflight))
        task = asyncio.create_task(self._run(fetch, partial, client), name=f"fetch {plan.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, fetch: Fetch, partial: PartialWriter, client: UpstreamClient) -> None:
        plan = fetch.plan
        try:
            if plan.expected_size:
                self.store.evict_to_quota(incoming=plan.expected_size)
            expected_sha = await self._download(fetch, partial, client)
            ref = await asyncio.to_thread(self.store.commit_file, partial, expected_sha,
                                          plan.expected_size if plan.expected_size is not None
                                          else _head_size(fetch))
            self.store.register(ref)
            for namespace, name in plan.binds:
                self.store.bind(namespace, name, ref.digest)
            fetch.done.set_result(ref)
        except asyncio.CancelledError:
            partial.discard()
            _fail(fetch, FetchFailed("node shutting down", 503))
            raise
        except IntegrityError as exc:
            self.metrics.verify_failures.inc(plan.namespace)
            log.error("discarding %s: %s", plan.url, exc)
            _fail(fetch, FetchFailed(f"upstream bytes failed verification: {exc}", 502))
        except StoreFullError as exc:
            partial.discard()
            log.error("store full while fetching %s: %s", plan.url, exc)
            _fail(fetch, FetchFailed(f"cache store is full: {exc}", 507))
        except UpstreamError as exc:
            partial.discard()
            if isinstance(exc, UpstreamIntegrityError):
                self.metrics.verify_failures.inc(plan.namespace)
            log.warning("fetch failed: %s", exc)
            _fail(fetch, FetchFailed(str(exc), exc.http_status))
        except Exception as exc:
            partial.discard()
            log.exception("unexpected error fetching %s", plan.url)
            _fail(fetch, FetchFailed(f"internal error: {exc}", 500))
        finally:
            self._inflight.pop(plan.key, None)
            self.metrics.inflight.set(len(self._inflight))
            fetch.notify()

    def _ensure_room(self, size: int) -> None:
        """Refuse up front (507) a download the disk cannot hold, after trying eviction."""
        free = shutil.disk_usage(self.store.partial_dir).free
        if free >= size + DISK_HEADROOM:
            return
        self.store.evict_to_quota(incoming=size)
        free = shutil.disk_usage(self.store.partial_dir).free
        if free < size + DISK_HEADROOM:
            raise StoreFullError(28, f"store disk is full: {free} bytes free, "
                                     f"{size} needed")

    async def _download(self, fetch: Fetch, partial: PartialWriter,
                        client: UpstreamClient) -> str | None:
        """Stream the upstream body into the partial; resume with Range after a break."""
        plan = fetch.plan
        settings = client.settings
        expected_sha = plan.expected_sha256
        total: int | None = plan.expected_size
        failures = 0
        while True:
            headers = {"Range": f"bytes={partial.size}-"} if partial.size else {}
            try:
                async with client.open(plan.url, headers, retries=0) as resp:
                    skip = 0
                    if resp.status == 206 and partial.size:
                        if not resp.headers.get("Content-Range", "").startswith(
                                f"bytes {partial.size}-"):
                            raise UpstreamIntegrityError(plan.url, "bad Content-Range on resume")
                    elif resp.status == 200:
                        skip = partial.size  # upstream ignored Range: drop what we have
                    else:
                        raise UpstreamUnavailable(plan.url, f"answered {resp.status} {resp.reason}")
                    if not fetch.head.done():
                        upstream_sha = parse_repr_digest(resp.headers.get("Repr-Digest"))
                        if expected_sha is None:
                            expected_sha = upstream_sha
                        elif upstream_sha is not None and upstream_sha != expected_sha:
                            raise UpstreamIntegrityError(
                                plan.url, f"upstream digest {upstream_sha} differs from the "
                                f"index's {expected_sha}")
                        if expected_sha is None and plan.require_digest:
                            raise UpstreamIntegrityError(
                                plan.url, "no digest known for this artifact; refusing to serve "
                                "unverifiable bytes")
                        length = resp.content_length
                        if total is None:
                            total = length
                        elif length is not None and length != total:
                            raise UpstreamIntegrityError(
                                plan.url, f"upstream length {length} differs from the "
                                f"index's {total}")
                        if total is not None:
                            self._ensure_room(total)
                        fetch.head.set_result(FetchHead(total, expected_sha))
                    async for chunk in resp.content.iter_chunked(READ_CHUNK):
                        client.count_bytes(len(chunk))
                        if skip:
                            drop = min(skip, len(chunk))
                            chunk = chunk[drop:]
                            skip -= drop
                            if not chunk:
                                continue
                        partial.write(chunk)
                        fetch.written = partial.size
                        fetch.notify()
                        if total is not None and partial.size > total:
                            raise UpstreamIntegrityError(plan.url, f"more than {total} bytes")
                if total is not None and partial.size < total:
                    raise UpstreamUnavailable(
                        plan.url, f"body ended after {partial.size} of {total} bytes")
                return expected_sha
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientConnectionError) as exc:
                error: UpstreamError = UpstreamUnavailable(plan.url, f"body interrupted: {exc}")
            except TimeoutError:
                error = UpstreamTimeout(plan.url, f"body stalled for {settings.read_timeout}s")
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                error = exc
            failures += 1
            if failures > settings.retries:
                raise error
            log.warning("%s; resuming at byte %d (attempt %d)", error, partial.size, failures + 1)
            await asyncio.sleep(settings.backoff * (2 ** (failures - 1)))


def _head_size(fetch: Fetch) -> int | None:
    if fetch.head.done() and fetch.head.exception() is None:
        return fetch.head.result().size
    return None


def _fail(fetch: Fetch, exc: FetchFailed) -> None:
    if not fetch.head.done():
        fetch.head.set_exception(exc)
    if not fetch.done.done():
        fetch.done.set_exception(exc)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def stream_fetch(fetch: Fetch, write: Callable[[bytes], Awaitable[None]],
                       start: int = 0,
                       send_range: Callable[[int, int, int], Awaitable[bool]] | None = None,
                       ) -> int:
    """Feed the growing file to `write`; return the offset reached.

    With `send_range(fd, offset, count)` (sendfile from the file to the socket; it returns
    False when the transport cannot sendfile) the bytes never pass through Python.

    Raises `FetchFailed` if the shared download fails or does not verify; the caller must
    then abort its response so the client sees an error, not a complete wrong body.
    """
    offset = start
    fd = _open_partial(fetch)
    if fd is None:
        ref = await fetch.done  # renamed into the store already (or raises FetchFailed)
        fd = os.open(fetch.blob_path(ref.digest), os.O_RDONLY)
    try:
        while True:
            verified = fetch.verified
            if fetch.done.done() and not verified:
                fetch.done.result()  # raises FetchFailed
            limit = fetch.written if verified else max(0, fetch.written - 1)
            if offset < limit and send_range is not None:
                if await send_range(fd, offset, limit - offset):
                    offset = limit
                    continue
                send_range = None  # transport cannot sendfile: copy through Python
            if offset < limit:
                chunk = os.pread(fd, min(READ_CHUNK, limit - offset), offset)
                if not chunk:
                    raise FetchFailed("partial file shrank while streaming", 500)
                await write(chunk)
                offset += len(chunk)
                continue
            if verified:
                return offset
            await fetch.wait_beyond(fetch.written)
    finally:
        os.close(fd)


def _open_partial(fetch: Fetch) -> int | None:
    try:
        return os.open(fetch.partial_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
