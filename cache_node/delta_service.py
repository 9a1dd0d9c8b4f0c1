"""The origin side of the delta engine, without HTTP: signatures, patches and range payloads.

Signatures (per blob and block size) and patches (per target and basis) are computed once, in a
worker thread, single-flight per key (concurrent requests await the same computation), and kept
in the store under the namespaces ``delta-signature`` and ``delta-patch``; an evicted one is
simply computed again. They can also be prepared ahead (`prepare`: when a new version of an
image family appears), in the background, one pair at a time; a request for a pair being
prepared joins that computation. An offer (`offer`) tells a client, without waiting, what is
ready: the patch (its size), or how soon it will be, and the signature; asking for an offer
starts the patch's computation when the node holds both blobs. Range payloads and sub-block
hashes are per request: the requested ranges of the blob, concatenated and zstd-compressed into
a spool file under ``work_dir``, or hashed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backports import zstd

from cache_node.answers import BadRequest, NotFound
from cache_node.metrics import Metrics
from cache_node.single_flight import Call, SingleFlight, run_once
from cache_node.store import BlobRef, BlobStore
from syncer.delta_patch import SINGLE_LIMIT, make_patch
from syncer.delta_signature import (
    MAX_BLOCK,
    MAX_SUB_HASHES,
    MIN_BLOCK,
    MIN_SUB_BLOCK,
    SignatureError,
    compute_signature,
    compute_sub_hashes,
    decode_signature,
    encode_signature,
    encode_sub_hashes,
    sub_block_count,
)
from syncer.delta_wire import decode_ranges

log = logging.getLogger(__name__)

SIGNATURE_NAMESPACE = "delta-signature"
PATCH_NAMESPACE = "delta-patch"
RANGES_LEVEL = 3  # per request, so cheap
RANGES_MIN_MATCHES = (0, 7)  # 0: the level's default
_COPY = 1 << 20



class UnknownBlob(NotFound):
    """The node has no verified copy of this blob (target or basis)."""

    code = "unknown_blob"


@dataclass(frozen=True)
class ServedFile:
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class RangesPayload:
    """A compressed range payload in a spool file; the caller streams it, then ``release``s it."""

    path: Path
    compressed_size: int
    payload_size: int
    payload_sha256: str
    ranges: int

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


# Patch computation rate for an offer's estimate of how soon a patch is ready (measured on
# 2 cores: 1 GiB image pairs ~500 MB/s of basis + target in segments, one-segment pairs such as
# a 50 MB index at level 12 ~150 MB/s).
PATCH_RATE_SEGMENTED = 400e6
PATCH_RATE_SINGLE = 120e6


@dataclass(frozen=True)
class Offer:
    """What this node can serve for a target against a basis, right now."""

    size: int
    patch: str  # "ready", "computing", "unavailable" (no basis here)
    patch_size: int | None
    patch_eta: float | None
    signature: str  # "ready", "computing", "absent"
    signature_size: int | None

    def to_json(self) -> dict[str, object]:
        patch: dict[str, object] = {"state": self.patch}
        if self.patch_size is not None:
            patch["size"] = self.patch_size
        if self.patch_eta is not None:
            patch["eta"] = round(self.patch_eta, 2)
        signature: dict[str, object] = {"state": self.signature}
        if self.signature_size is not None:
            signature["size"] = self.signature_size
        return {"size": self.size, "patch": patch, "signature": signature}


class DeltaService:
    def __init__(self, store: BlobStore, locate: Callable[[str], Path | None],
                 work_dir: Path, metrics: Metrics | None = None) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.locate = locate
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        cleanup_work_dir(work_dir)  # spool files of an earlier run
        self._flights: SingleFlight[Call[BlobRef]] = SingleFlight()
        self._started: dict[str, float] = {}  # flight key -> when its computation started
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._preparer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.computed_signatures = 0
        self.computed_patches = 0

    # -- blobs -----------------------------------------------------------------------------
    def blob(self, sha256: str) -> ServedFile:
        path = self.locate(sha256)
        if path is None or not path.exists():
            raise UnknownBlob(f"this node has no blob {sha256}")
        return ServedFile(path, path.stat().st_size, sha256)

    # -- signatures ------------------------------------------------------------------------
    async def signature(self, sha256: str, block_size: int | None = None) -> ServedFile:
        """The encoded signature of a blob (computed once, then served from the store)."""
        if block_size is not None and not MIN_BLOCK <= block_size <= MAX_BLOCK:
            raise BadRequest(f"block_size must be within {MIN_BLOCK}..{MAX_BLOCK}",
                             code="bad_block_size")
        target = self.blob(sha256)
        name = f"{sha256}/{block_size or 'auto'}"

        def compute() -> BlobRef:
            sig = compute_signature(target.path, block_size, sha256_hex=sha256)
            partial = self.store.new_partial()
            partial.write(encode_signature(sig))
            return self.store.commit_file(partial, None)

        try:
            ref = await self._once(SIGNATURE_NAMESPACE, name, compute)
        except SignatureError as exc:  # the located file does not hash to its name
            log.error("not serving a signature of %s: %s", sha256[:12], exc)
            raise UnknownBlob(f"this node has no verified blob {sha256}") from exc
        return ServedFile(self.store.blob_path(ref.digest), ref.size, ref.digest)

    # -- offers and preparing ahead --------------------------------------------------------
    def offer(self, target_sha256: str, basis_sha256: str) -> Offer:
        """What is ready for this pair (never waits). When the node holds both blobs and the
        patch is neither stored nor being computed, its computation starts now, so a client
        that does not wait for it leaves it ready for the next."""
        target = self.blob(target_sha256)
        has_basis = self._has(basis_sha256)
        name = f"{target_sha256}/{basis_sha256}"
        patch, psize, eta = "unavailable", None, None
        ref = self.store.lookup(PATCH_NAMESPACE, name)
        if ref is not None:
            patch, psize = "ready", ref.size
        elif has_basis:
            patch = "computing"
            if f"{PATCH_NAMESPACE}/{name}" not in self._flights:
                self._spawn(self.patch(target_sha256, basis_sha256))
            eta = self._eta(f"{PATCH_NAMESPACE}/{name}", target.size,
                            self.blob(basis_sha256).size)
        sig_ref = self.store.lookup(SIGNATURE_NAMESPACE, f"{target_sha256}/auto")
        if sig_ref is not None:
            signature, ssize = "ready", sig_ref.size
        elif f"{SIGNATURE_NAMESPACE}/{target_sha256}/auto" in self._flights:
            signature, ssize = "computing", None
        else:
            signature, ssize = "absent", None
        return Offer(target.size, patch, psize, eta, signature, ssize)

    def ready_patch(self, target_sha256: str, basis_sha256: str) -> ServedFile | None:
        """The stored patch for this pair, or None (also when the basis is unknown here: the
        offer says so); 404 `unknown_blob` for an unknown target."""
        self.blob(target_sha256)
        if not self._has(basis_sha256):
            return None
        ref = self.store.lookup(PATCH_NAMESPACE, f"{target_sha256}/{basis_sha256}")
        if ref is None:
            return None
        return ServedFile(self.store.blob_path(ref.digest), ref.size, ref.digest)

    def _has(self, sha256: str) -> bool:
        path = self.locate(sha256)
        return path is not None and path.exists()

    def _eta(self, key: str, target_size: int, basis_size: int) -> float:
        total = target_size + basis_size
        rate = PATCH_RATE_SINGLE if total <= SINGLE_LIMIT else PATCH_RATE_SEGMENTED
        started = self._started.get(key, time.monotonic())
        return max(0.0, total / rate - (time.monotonic() - started))

    def prepare(self, target_sha256: str, basis_sha256: str) -> None:
        """Compute the target's signature and its patch from ``basis`` in the background
        (queued: one pair at a time, so preparing never takes more than one core)."""
        if self._closed:
            return
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._preparer = asyncio.get_running_loop().create_task(self._prepare_loop(),
                                                                    name="delta prepare")
        self._queue.put_nowait((target_sha256, basis_sha256))

    async def _prepare_loop(self) -> None:
        assert self._queue is not None
        while True:
            target, basis = await self._queue.get()
            try:
                await self.signature(target)
                await self.patch(target, basis)
                log.info("prepared the patch %s <- %s", target[:12], basis[:12])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a blob gone meanwhile, a disk error: logged only
                log.warning("could not prepare the patch %s <- %s: %s", target[:12],
                            basis[:12], exc)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        async def run() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("background delta computation failed: %s", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- patches ---------------------------------------------------------------------------
    async def patch(self, target_sha256: str, basis_sha256: str) -> ServedFile:
        """A patch from ``basis`` to ``target`` (computed once per pair, kept in the store)."""
        target = self.blob(target_sha256)
        basis = self.blob(basis_sha256)
        name = f"{target_sha256}/{basis_sha256}"
        sig_ref = self.store.lookup(SIGNATURE_NAMESPACE, f"{target_sha256}/auto")

        def compute() -> BlobRef:
            sig = None
            if sig_ref is not None:
                try:
                    sig = decode_signature(self.store.read_bytes(sig_ref.digest), target_sha256)
                except (OSError, ValueError):
                    sig = None
            out = self.work_dir / f"patch-{os.getpid()}-{uuid.uuid4().hex}"
            info = make_patch(basis.path, target.path, out, basis_sha256=basis_sha256,
                              target_sig=sig)
            try:
                if info.target_sha256 != target_sha256:
                    raise UnknownBlob(f"file for {target_sha256} hashed to {info.target_sha256}")
                partial = self.store.new_partial()
                with open(out, "rb") as fh:
                    while chunk := fh.read(_COPY):
                        partial.write(chunk)
                return self.store.commit_file(partial, None)
            finally:
                out.unlink(missing_ok=True)

        ref = await self._once(PATCH_NAMESPACE, name, compute)
        return ServedFile(self.store.blob_path(ref.digest), ref.size, ref.digest)

    # -- sub-block hashes (the finer round) ------------------------------------------------
    async def sub_hashes(self, sha256: str, body: bytes, sub_block: int) -> bytes:
        """Hashes of every full sub-block of the requested ranges (per request: a few
        kilobytes of the blob are read for each range)."""
        if not MIN_SUB_BLOCK <= sub_block <= MAX_BLOCK:
            raise BadRequest(f"block_size must be within {MIN_SUB_BLOCK}..{MAX_BLOCK}",
                             code="bad_block_size")
        target = self.blob(sha256)
        try:
            ranges = decode_ranges(body, target.size)
        except ValueError as exc:
            raise BadRequest(str(exc), code="bad_ranges") from exc
        if sub_block_count(ranges, sub_block) > MAX_SUB_HASHES:
            raise BadRequest(f"more than {MAX_SUB_HASHES} sub-blocks asked for",
                             code="bad_ranges")
        try:
            sub = await asyncio.to_thread(compute_sub_hashes, target.path, ranges, sub_block,
                                          sha256)
        except SignatureError as exc:
            raise UnknownBlob(f"this node has no complete blob {sha256}: {exc}") from exc
        return encode_sub_hashes(sub)

    # -- ranges ----------------------------------------------------------------------------
    async def ranges(self, sha256: str, body: bytes) -> RangesPayload:
        """Compress the requested ranges of a blob into a spool file (per request)."""
        target = self.blob(sha256)
        try:
            ranges = decode_ranges(body, target.size)
        except ValueError as exc:
            raise BadRequest(str(exc), code="bad_ranges") from exc
        return await asyncio.to_thread(self._compress_ranges, target.path, ranges)

    def _compress_ranges(self, path: Path, ranges: tuple[tuple[int, int], ...]
                         ) -> RangesPayload:
        """Stream the ranges through one zstd compressor into a spool file.

        The minimum match length is picked on the first MiB: literal-heavy payloads gain ~9%
        from long minimum matches, binary ones lose ~3%."""
        spool = self.work_dir / f"ranges-{os.getpid()}-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        total = 0
        written = 0
        comp: zstd.ZstdCompressor | None = None
        pending: list[bytes] = []
        held = 0
        try:
            with open(path, "rb") as src, open(spool, "xb") as out:
                for off, length in ranges:
                    src.seek(off)
                    left = length
                    while left:
                        chunk = src.read(min(left, _COPY))
                        if not chunk:
                            raise UnknownBlob(f"blob file {path} is shorter than its ranges")
                        digest.update(chunk)
                        left -= len(chunk)
                        total += len(chunk)
                        if comp is None:  # still sampling
                            pending.append(chunk)
                            held += len(chunk)
                            if held < _COPY:
                                continue
                            chunk = b"".join(pending)
                            pending.clear()
                            comp = _ranges_compressor(_pick_min_match(chunk[:_COPY]))
                        data = comp.compress(chunk)
                        out.write(data)
                        written += len(data)
                if comp is None:
                    sample = b"".join(pending)
                    comp = _ranges_compressor(_pick_min_match(sample) if sample else 0)
                    data = comp.compress(sample)
                    out.write(data)
                    written += len(data)
                data = comp.flush()
                out.write(data)
                written += len(data)
        except BaseException:
            spool.unlink(missing_ok=True)
            raise
        return RangesPayload(spool, written, total, digest.hexdigest(), len(ranges))

    # -- single flight ---------------------------------------------------------------------
    async def _once(self, namespace: str, name: str, compute: Callable[[], BlobRef]) -> BlobRef:
        """The blob stored under (namespace, name), computed once however many ask.

        ``compute`` (in a worker thread) writes the blob into the store's files; it is then
        registered and bound here, on the thread that owns the store."""
        ref = self.store.lookup(namespace, name)
        if ref is not None:
            return ref

        key = f"{namespace}/{name}"

        async def run() -> BlobRef:
            self._started[key] = time.monotonic()
            try:
                ref = await asyncio.to_thread(compute)
            finally:
                self._started.pop(key, None)
            self.store.register(ref)
            self.store.bind(namespace, name, ref.digest)
            if namespace == SIGNATURE_NAMESPACE:
                self.computed_signatures += 1
            else:
                self.computed_patches += 1
            self.metrics.delta_computed.inc(namespace)
            log.info("computed %s %s (%d bytes)", namespace, name[:40], ref.size)
            return ref

        return await run_once(self._flights, key, run)

    async def close(self) -> None:
        self._closed = True
        tasks = [t for t in (self._preparer, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._flights.close()


def _ranges_compressor(min_match: int) -> zstd.ZstdCompressor:
    return zstd.ZstdCompressor(options={
        zstd.CompressionParameter.compression_level: RANGES_LEVEL,
        zstd.CompressionParameter.min_match: min_match,
        zstd.CompressionParameter.checksum_flag: 1})


def _pick_min_match(sample: bytes) -> int:
    """The level's default unless a long minimum match is clearly (5%) better on the sample."""
    sizes = {mm: len(zstd.compress(sample, options={
        zstd.CompressionParameter.compression_level: RANGES_LEVEL,
        zstd.CompressionParameter.min_match: mm})) for mm in RANGES_MIN_MATCHES}
    default, long = RANGES_MIN_MATCHES
    return long if sizes[long] < 0.95 * sizes[default] else default


def cleanup_work_dir(work_dir: Path) -> None:
    """Remove spool files left by processes that are gone (call at start). The files of the
    node's other, live worker processes are theirs: their names carry the writer's pid."""
    if not work_dir.exists():
        return
    for stale in work_dir.iterdir():
        kind, _, rest = stale.name.partition("-")
        if kind not in ("ranges", "patch"):
            continue
        pid_text = rest.partition("-")[0]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
