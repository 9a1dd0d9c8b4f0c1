"""The node's one fetch-and-stream pipeline: single-flight upstream fetches that many clients
stream from while they grow.

Every byte a node fetches (pool files, wheels, index files, Glance image data) goes through
here. A `FetchPlan` names every digest the bytes must match: sha256 always (from the index or
the upstream tier's `Repr-Digest`), plus md5 and the `os_hash` for images. All of them are
computed in the one pass that writes the partial file; large batches are written and hashed in
a worker thread (the digests in parallel threads) while the event loop receives the next one.

The first miss for a key starts the fetch; every concurrent miss joins it (`SingleFlight`) and
reads the partial file as it grows, by sendfile. The fetch belongs to the coordinator, not to
any client: a client that disconnects does not cancel it. The last byte of every stream is held
back until the whole download verified, so a client never receives a complete body of wrong
bytes: on a failed verification its response is aborted instead.

A tier whose upstream is another edgedepot node verifies what that node vouches for instead of
recomputing every digest: the upstream's `Repr-Digest` carries its sha-256 and, for images, the
md5 and os_hash it verified; the plan accepts those when they equal what the plan expects, and
the bytes are checked against the sha-256 alone (`FetchPlan.accept_vouched`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from cache_node.metrics import Metrics
from cache_node.rate_limit import PLAN_LIMITER, TokenBucket
from cache_node.single_flight import SingleFlight
from cache_node.store import BlobRef, BlobStore, PartialWriter, StoreFullError
from distro.digests import parse_repr_digests
from distro.errors import IntegrityError
from syncer.http_client import (
    HttpClient,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)

READ_CHUNK = 256 << 10
BATCH = 4 << 20          # bytes handed to one worker-thread write (and hash) at a time
INLINE_WRITE = 256 << 10  # smaller final batches are written on the loop: no thread hop
DISK_HEADROOM = 64 << 10
STREAM_BATCH = 1 << 20    # bytes a follower lets accumulate before its next send
STREAM_PATIENCE = 0.005   # seconds it waits for them at most
FOLLOW_MIN_WAIT = 0.002   # a follower in another worker polls the partial file this often
FOLLOW_MAX_WAIT = 0.05    # ... backing off to this while it does not grow



@dataclass(frozen=True)
class FetchPlan:
    """What to download and every digest it must turn out to match."""

    key: str
    url: str
    namespace: str
    expected_sha256: str | None
    expected_size: int | None
    binds: tuple[tuple[str, str], ...] = ()  # (namespace, name) bound to the blob on success
    require_digest: bool = True
    # Other digests the bytes must match, as (hashlib name, lowercase hex): md5, sha512, ...
    expected_others: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # e.g. the caller's X-Auth-Token (images)
    # The upstream is an edgedepot tier: an equal digest in its Repr-Digest stands for itself,
    # and only sha256 is computed here.
    accept_vouched: bool = False
    # When the upstream tier is still fetching too, its Repr-Digest vouches the record's
    # digests but cannot name the sha256 yet: this asks it afterwards, and the bytes received
    # must hash to what it confirms (binding the vouch to these bytes).
    confirm_sha256: Callable[[], Awaitable[str | None]] | None = None


@dataclass(frozen=True)
class FetchHead:
    size: int | None
    sha256: str | None


class FetchFailed(Exception):
    """The shared download failed; `http_status` is what a not-yet-answered client gets."""

    def __init__(self, message: str, http_status: int = 502) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass(eq=False)
class Fetch:
    """One running download; what every client of the same key follows."""

    plan: FetchPlan
    partial_path: Path
    blob_path: Callable[[str], Path]
    head: asyncio.Future[FetchHead]
    done: asyncio.Future[BlobRef]
    _job: Callable[[Fetch], Awaitable[None]]
    written: int = 0
    limiter: TokenBucket | None = None  # a plan's bandwidth cap; None once a client joins
    _progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await self._job(self)

    def notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_beyond(self, seen: int) -> None:
        while self.written <= seen and not self.done.done():
            await self._progress.wait()

    @property
    def verified(self) -> bool:
        return self.done.done() and not self.done.cancelled() and self.done.exception() is None

    @property
    def size(self) -> int | None:
        if self.head.done() and not self.head.cancelled() and self.head.exception() is None:
            return self.head.result().size
        return None


class FetchCoordinator:
    """Owns every in-flight download of one node."""

    def __init__(self, store: BlobStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        self._flights: SingleFlight[Fetch] = SingleFlight()

    @property
    def inflight_count(self) -> int:
        return len(self._flights)

    def get(self, key: str) -> Fetch | None:
        return self._flights.get(key)

    def running(self, key: str) -> bool:
        return key in self._flights

    def running_keys(self) -> frozenset[str]:
        return self._flights.keys()

    def start(self, plan: FetchPlan, client: HttpClient) -> Fetch:
        """Join the download of `plan.key`, or start it (here, or by following the worker
        process of this node that is downloading it already)."""
        return self.join(plan, client)[0]

    def join(self, plan: FetchPlan, client: HttpClient) -> tuple[Fetch, bool]:
        """`start`, also telling whether this caller joined a running download (coalesced)."""
        def make() -> Fetch:
            loop = asyncio.get_running_loop()
            name = hashlib.sha256(plan.key.encode()).hexdigest()[:40]
            fetch = Fetch(plan, self.store.partial_dir / f"{name}.part", self.store.blob_path,
                          loop.create_future(), loop.create_future(),
                          lambda f: self._lead_or_follow(f, client, name),
                          limiter=PLAN_LIMITER.get())
            # Nobody may be left with an unretrieved exception warning.
            fetch.head.add_done_callback(_consume)
            fetch.done.add_done_callback(_consume)
            return fetch

        fetch, started = self._flights.start(plan.key, make)
        if not started:
            self.metrics.coalesced.inc(plan.namespace)
            if PLAN_LIMITER.get() is None:
                fetch.limiter = None  # a client needs it now: no pre-warm cap
        return fetch, not started

    async def close(self) -> None:
        await self._flights.close()

    # -- one download per key across the node's worker processes ---------------------------
    async def _lead_or_follow(self, fetch: Fetch, client: HttpClient, name: str) -> None:
        """The process that holds the key's lock file downloads; the others follow its
        partial file as it grows and take over (resuming) if it dies."""
        lock = _KeyLock(self.store.lock_dir / f"{name}.lock")
        try:
            if lock.acquire():
                await self._lead(fetch, client, lock)
            else:
                self.metrics.coalesced.inc(fetch.plan.namespace)
                await self._follow(fetch, client, lock)
        except asyncio.CancelledError:
            _fail(fetch, FetchFailed("node shutting down", 503))
            raise
        finally:
            lock.release()
            fetch.notify()

    async def _lead(self, fetch: Fetch, client: HttpClient, lock: _KeyLock,
                    following_since: float | None = None) -> None:
        """Download as the key's only writer. A follower taking over (`following_since`)
        first checks whether the leader it followed failed: then it fails alike instead of
        asking the upstream again at once (a new request later does retry)."""
        plan = fetch.plan
        stored = self._already_stored(plan)
        if stored is not None:  # another worker finished it just now
            fetch.partial_path.unlink(missing_ok=True)
            lock.head_path.unlink(missing_ok=True)
            _settle(fetch, stored)
            return
        failed = lock.failure_since(following_since) if following_since is not None else None
        if failed is not None:
            _fail(fetch, failed)
            return
        lock.clear_failure()
        resume = lock.head_matches(plan) and fetch.partial_path.exists()
        partial = await asyncio.to_thread(
            PartialWriter, fetch.partial_path, tuple(algo for algo, _ in plan.expected_others),
            resume=resume)
        if resume and partial.size:
            log.info("resuming %s at byte %d (left by an earlier worker)", plan.url,
                     partial.size)
        fetch.written = partial.size
        await self._run(fetch, partial, client, lock)

    async def _follow(self, fetch: Fetch, client: HttpClient, lock: _KeyLock) -> None:
        """Follow another worker's download: its head, its partial file's growth, and its
        end (the blob bound in the shared store, or its failure). If it dies, lead."""
        fd: int | None = None
        idle = FOLLOW_MIN_WAIT
        since = time.time()
        try:
            while True:
                if lock.acquire():  # the leader is gone: finished, failed or killed
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    await self._lead(fetch, client, lock, following_since=since)
                    return
                if not fetch.head.done():
                    head = lock.read_head()
                    if head is not None:
                        fetch.head.set_result(head)
                if fd is None:
                    with contextlib.suppress(FileNotFoundError):
                        fd = os.open(fetch.partial_path, os.O_RDONLY)
                size = os.fstat(fd).st_size if fd is not None else 0
                if size > fetch.written:
                    fetch.written = size
                    fetch.notify()
                    idle = FOLLOW_MIN_WAIT
                else:
                    idle = min(idle * 2, FOLLOW_MAX_WAIT)
                await asyncio.sleep(idle)
        finally:
            if fd is not None:
                os.close(fd)

    def _already_stored(self, plan: FetchPlan) -> BlobRef | None:
        """The verified blob of this plan if some worker stored and bound it already."""
        if plan.expected_sha256 is not None:  # names may still point at older versions
            ref = self.store.get(plan.expected_sha256)
            if ref is not None:
                for namespace, name in plan.binds:
                    self.store.bind(namespace, name, ref.digest)
            return ref
        if plan.binds:  # immutable names (pool paths, files, image ids) of unknown digest
            digests = {self.store.bound_digest(ns, n) for ns, n in plan.binds}
            if len(digests) == 1:
                (digest,) = digests
                if digest is not None:
                    return self.store.get(digest)
        return None

    async def _run(self, fetch: Fetch, partial: PartialWriter, client: HttpClient,
                   lock: _KeyLock) -> None:
        plan = fetch.plan
        try:
            if plan.expected_size:
                self.store.evict_to_quota(incoming=plan.expected_size)
            expected_sha, vouched = await self._download(fetch, partial, client, lock)
            size = plan.expected_size if plan.expected_size is not None else fetch.size
            if expected_sha is None and vouched and plan.confirm_sha256 is not None:
                expected_sha = await plan.confirm_sha256()
                if expected_sha is None:
                    raise _bad(plan, "the upstream did not confirm the sha256 of the bytes "
                                     "it vouched for")

            def verify_and_commit() -> BlobRef:  # waits for the hash lanes: not on the loop
                _check_others(plan, partial, vouched)
                return self.store.commit_file(partial, expected_sha, size)

            ref = await asyncio.to_thread(verify_and_commit)
            self.store.register(ref)
            for namespace, name in plan.binds:
                self.store.bind(namespace, name, ref.digest)
            lock.head_path.unlink(missing_ok=True)
            fetch.done.set_result(ref)
            return
        except asyncio.CancelledError:
            partial.discard()
            lock.head_path.unlink(missing_ok=True)
            _fail(fetch, FetchFailed("node shutting down", 503))
            raise
        except IntegrityError as exc:
            self.metrics.verify_failures.inc(plan.namespace)
            log.error("discarding %s: %s", plan.url, exc)
            failure = FetchFailed(f"upstream bytes failed verification: {exc}", 502)
        except StoreFullError as exc:
            log.error("store full while fetching %s: %s", plan.url, exc)
            failure = FetchFailed(f"cache store is full: {exc}", 507)
        except UpstreamError as exc:
            log.warning("fetch failed: %s", exc)
            failure = FetchFailed(str(exc), exc.http_status)
        except Exception as exc:
            log.exception("unexpected error fetching %s", plan.url)
            failure = FetchFailed(f"internal error: {exc}", 500)
        partial.discard()
        lock.head_path.unlink(missing_ok=True)
        lock.record_failure(failure)
        _fail(fetch, failure)

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

    def _accept_head(self, fetch: Fetch, resp: aiohttp.ClientResponse,
                     total: int | None) -> tuple[str | None, dict[str, str], int | None]:
        """Check the first response's length and digests against the plan; publish the head."""
        plan = fetch.plan
        upstream = parse_repr_digests(resp.headers.get("Repr-Digest"))
        upstream_sha = upstream.get("sha256")
        expected_sha = plan.expected_sha256
        if expected_sha is None:
            expected_sha = upstream_sha
        elif upstream_sha is not None and upstream_sha != expected_sha:
            raise _bad(plan, f"upstream digest {upstream_sha} differs from the index's {expected_sha}")
        if expected_sha is None and plan.require_digest:
            raise _bad(plan, "no digest known for this artifact; refusing to serve unverifiable bytes")
        vouched: dict[str, str] = {}
        if plan.accept_vouched and (upstream_sha is not None or plan.confirm_sha256 is not None):
            for algo, want in plan.expected_others:
                have = upstream.get(algo)
                if have is not None and have != want:
                    raise _bad(plan, f"upstream vouches {algo} {have}, the record says {want}")
                if have is not None:
                    vouched[algo] = have
        length = resp.content_length
        if resp.status == 206:  # a resumed download: the total is after the slash
            tail = resp.headers.get("Content-Range", "").rpartition("/")[2]
            length = int(tail) if tail.isdigit() else None
        if total is None:
            total = length
        elif length is not None and length != total:
            raise _bad(plan, f"upstream length {length} differs from the "
                                                   f"index's {total}")
        if total is not None:
            self._ensure_room(total)
        fetch.head.set_result(FetchHead(total, expected_sha))
        return expected_sha, vouched, total

    async def _download(self, fetch: Fetch, partial: PartialWriter, client: HttpClient,
                        lock: _KeyLock) -> tuple[str | None, dict[str, str]]:
        """Stream the upstream body into the partial; resume with Range after a break."""
        plan = fetch.plan
        settings = client.settings
        expected_sha = plan.expected_sha256
        vouched: dict[str, str] = {}
        total: int | None = plan.expected_size
        failures = 0
        writer = _BatchWriter(fetch, partial)
        while True:
            headers = dict(plan.headers)
            if partial.size:
                headers["Range"] = f"bytes={partial.size}-"
            try:
                async with client.open(plan.url, headers, retries=0) as resp:
                    skip = 0
                    if resp.status == 206 and partial.size:
                        if not resp.headers.get("Content-Range", "").startswith(
                                f"bytes {partial.size}-"):
                            raise _bad(plan, "bad Content-Range on resume")
                    elif resp.status == 200:
                        skip = partial.size  # upstream ignored Range: drop what we have
                    else:
                        raise UpstreamUnavailable(plan.url, f"answered {resp.status} {resp.reason}")
                    if not fetch.head.done():
                        expected_sha, vouched, total = self._accept_head(fetch, resp, total)
                        if vouched and not partial.size:
                            partial.drop_digests(tuple(vouched))
                        else:
                            vouched = {}  # resumed bytes were hashed with every digest
                        lock.write_head(plan, fetch.head.result())
                    elif expected_sha is None and fetch.head.result().sha256 is not None:
                        expected_sha = fetch.head.result().sha256
                    async for chunk in resp.content.iter_chunked(READ_CHUNK):
                        client.count_bytes(len(chunk))
                        if fetch.limiter is not None:
                            await fetch.limiter.take(len(chunk))
                        if skip:
                            drop = min(skip, len(chunk))
                            chunk = chunk[drop:]
                            skip -= drop
                            if not chunk:
                                continue
                        await writer.add(chunk)
                        if total is not None and writer.received > total:
                            raise _bad(plan, f"more than {total} bytes")
                    await writer.flush()
                if total is not None and partial.size < total:
                    raise UpstreamUnavailable(
                        plan.url, f"body ended after {partial.size} of {total} bytes")
                return expected_sha, vouched
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                    aiohttp.ClientConnectionError) as exc:
                error: UpstreamError = UpstreamUnavailable(plan.url, f"body interrupted: {exc}")
            except TimeoutError:
                error = UpstreamTimeout(plan.url, f"body stalled for {settings.read_timeout}s")
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                error = exc
            await writer.flush()  # keep what arrived: the retry resumes after it
            failures += 1
            if failures > settings.retries:
                raise error
            log.warning("%s; resuming at byte %d (attempt %d)", error, partial.size, failures + 1)
            await asyncio.sleep(settings.backoff * (2 ** (failures - 1)))


class _BatchWriter:
    """Writes (and hashes) received chunks in a worker thread, one batch at a time, while the
    loop keeps receiving: whatever arrived during one write is the next batch, so a fast
    upstream gets large batches and a slow one has each chunk on disk (and streamed to the
    clients following the file) as soon as it arrives."""

    def __init__(self, fetch: Fetch, partial: PartialWriter) -> None:
        self.fetch = fetch
        self.partial = partial
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.received = partial.size
        self._job: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    async def add(self, chunk: bytes) -> None:
        self._raise()
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        self.received += len(chunk)
        if self._job is None:
            self._kick()
        elif self.pending_size >= BATCH:
            await asyncio.wait([self._job])  # backpressure: one batch in the thread, one here
            self._raise()

    def _kick(self) -> None:
        if not self.pending or self._job is not None or self._error is not None:
            return
        chunks, self.pending, size = self.pending, [], self.pending_size
        self.pending_size = 0
        if size < INLINE_WRITE:
            self.partial.write_chunks(chunks)  # small: no thread hop
            self._published()
            return
        job = asyncio.ensure_future(asyncio.to_thread(self.partial.write_chunks, chunks))
        job.add_done_callback(self._done)
        self._job = job

    def _done(self, job: asyncio.Future[None]) -> None:
        self._job = None
        if job.cancelled():
            self._error = asyncio.CancelledError()
            return
        error = job.exception()
        if error is not None:
            self._error = error
            return
        self._published()
        self._kick()

    def _published(self) -> None:
        self.fetch.written = self.partial.size
        self.fetch.notify()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    async def flush(self) -> None:
        """Until everything received is on disk (raises what a write raised)."""
        while True:
            self._raise()
            if self._job is not None:
                await asyncio.wait([self._job])
            elif self.pending:
                self._kick()
            else:
                break
        self.received = self.partial.size


def _check_others(plan: FetchPlan, partial: PartialWriter, vouched: Mapping[str, str]) -> None:
    """Every non-sha256 digest the plan names: computed here, or vouched for by the upstream
    tier (and then covered by its sha-256, which the store checks)."""
    computed = partial.hexdigests()
    for algo, want in plan.expected_others:
        have = vouched.get(algo) or computed.get(algo)
        if have is None:
            raise IntegrityError(f"{algo} was neither computed nor vouched for")
        if have != want:
            raise IntegrityError(f"{algo} mismatch: expected {want}, got {have}")


class _KeyLock:
    """The lock file of one key in `<store>/locks/`: held by the worker process that
    downloads the key; beside it the `.head` the followers need and a `.failed` note that
    stops other workers from retrying a failure at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.head_path = path.with_suffix(".head")
        self.failed_path = path.with_suffix(".failed")
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write_head(self, plan: FetchPlan, head: FetchHead) -> None:
        _write_json(self.head_path, {"url": plan.url, "size": head.size, "sha256": head.sha256})

    def read_head(self) -> FetchHead | None:
        doc = _read_json(self.head_path)
        if doc is None:
            return None
        size, sha256 = doc.get("size"), doc.get("sha256")
        return FetchHead(size if isinstance(size, int) else None,
                         sha256 if isinstance(sha256, str) else None)

    def head_matches(self, plan: FetchPlan) -> bool:
        doc = _read_json(self.head_path)
        return doc is not None and doc.get("url") == plan.url and (
            plan.expected_sha256 is None or doc.get("sha256") == plan.expected_sha256)

    def record_failure(self, failure: FetchFailed) -> None:
        _write_json(self.failed_path, {"message": str(failure), "status": failure.http_status,
                                       "at": time.time()})

    def failure_since(self, since: float) -> FetchFailed | None:
        """The failure the leader recorded while we followed it, if any."""
        doc = _read_json(self.failed_path)
        if doc is None or float(doc.get("at", 0)) < since:
            return None
        return FetchFailed(str(doc.get("message", "failed in another worker")),
                           int(doc.get("status", 502)))

    def clear_failure(self) -> None:
        self.failed_path.unlink(missing_ok=True)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _settle(fetch: Fetch, ref: BlobRef) -> None:
    """A fetch another worker completed: the blob is the answer."""
    if not fetch.head.done():
        fetch.head.set_result(FetchHead(ref.size, ref.digest))
    fetch.written = ref.size
    fetch.partial_path = fetch.blob_path(ref.digest)
    if not fetch.done.done():
        fetch.done.set_result(ref)


def _bad(plan: FetchPlan, problem: str) -> IntegrityError:
    return IntegrityError(f"upstream {plan.url}: {problem}")


def _fail(fetch: Fetch, exc: FetchFailed) -> None:
    if not fetch.head.done():
        fetch.head.set_exception(exc)
    if not fetch.done.done():
        fetch.done.set_exception(exc)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


async def stream_fetch(fetch: Fetch, write: Callable[[bytes], Awaitable[None]],
                       start: int = 0, end: int | None = None,
                       send_range: Callable[[int, int, int], Awaitable[bool]] | None = None,
                       ) -> int:
    """Feed bytes [start, end) of the growing file to the client; return the offset reached.

    The last byte of the span is sent only once the whole download verified. With
    `send_range(fd, offset, count)` (sendfile from the file to the socket; it returns False
    when the transport cannot sendfile) the bytes never pass through Python.

    Raises `FetchFailed` if the shared download fails or does not verify; the caller must
    then abort its response so the client sees an error, not a complete wrong body.
    """
    offset = start
    fd = _open_partial(fetch)
    while fd is None:  # not created yet (the leader is starting), or renamed into the store
        if fetch.done.done():
            ref = fetch.done.result()  # raises FetchFailed
            fd = os.open(fetch.blob_path(ref.digest), os.O_RDONLY)
            break
        await fetch.wait_beyond(fetch.written)
        fd = _open_partial(fetch)
    try:
        while True:
            verified = fetch.verified
            if fetch.done.done() and not verified:
                fetch.done.result()  # raises FetchFailed
            stop = fetch.written if end is None else min(end, fetch.written)
            if not verified:
                held = (end if end is not None else fetch.written) - 1
                stop = max(offset, min(stop, held))
            if offset < stop and send_range is not None:
                if await send_range(fd, offset, stop - offset):
                    offset = stop
                    continue
                send_range = None  # transport cannot sendfile: copy through Python
            if offset < stop:
                chunk = os.pread(fd, min(READ_CHUNK, stop - offset), offset)
                if not chunk:
                    raise FetchFailed("partial file shrank while streaming", 500)
                await write(chunk)
                offset += len(chunk)
                continue
            if verified:
                return offset
            await fetch.wait_beyond(max(offset, fetch.written))
            # Let a fast download get ahead a little: fewer, larger sends cost less CPU; a
            # slow one is never waited for longer than STREAM_PATIENCE.
            if not fetch.done.done() and fetch.written - offset < STREAM_BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(fetch.wait_beyond(offset + STREAM_BATCH),
                                           STREAM_PATIENCE)
    finally:
        os.close(fd)


def _open_partial(fetch: Fetch) -> int | None:
    try:
        return os.open(fetch.partial_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
