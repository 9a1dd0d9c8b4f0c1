"""Fetch a blob from a node as a delta against a basis file the caller already has.

Paths:

* ``patch`` — a patch against the basis's sha256 (404 when the node lacks that basis);
* ``blocks`` — the blob's signature, its blocks found in the basis (anywhere, at any offset),
  a second, finer round for the blocks at the edges of each changed run, and the missing bytes
  in one ranges request with a zstd-compressed body;
* ``auto`` asks the node what it has (``/offer``: is the patch ready, how large, or how soon;
  the signature's size) and takes what is expected to move the fewest bytes: a ready patch (or
  one about to be), else the blocks, else the whole blob. A node that does not answer offers
  gets the old order: patch, then blocks.

With no usable basis the whole blob is fetched as one compressed range. ``fetch`` builds the
result in ``<out>.delta-partial`` (never in place), verifies it against the blob's sha256 and
renames it to ``out``; ``fetch_into`` writes the target into a caller's `Sink` (the node's
partial file that clients stream from) while the delta still downloads: a patch is applied
segment by segment as it arrives, blocks are assembled as the payload arrives, and the sink
receives only bytes that verified on the way (a segment's frame checksum, a block's strong
hash). Transfer state is kept next to the output (``.delta-state``, ``.delta-spool``,
``.delta-sig``, ``.delta-hashes``): after an interruption the same call resumes, fetches only
what it does not have yet, and rebuilds from where the sink stands.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
import numpy as np
from backports import zstd

from distro.digests import file_sha256, parse_repr_digest
from distro.errors import EdgedepotError, IntegrityError
from syncer.delta_io import FileSink, GrowingFile, Sink, StreamReader, TransferBroken
from syncer.delta_match import (
    BlockMismatch,
    BlockPlan,
    EdgeBlocks,
    MatchResult,
    Recipe,
    edge_blocks,
    make_recipe,
    match_basis,
    plan_blocks,
    refine,
    write_target,
)
from syncer.delta_patch import PatchError, apply_patch_stream
from syncer.delta_signature import (
    Signature,
    SignatureError,
    SubHashes,
    choose_block_size,
    choose_hash_len,
    choose_strong_len,
    decode_signature,
    decode_sub_hashes,
)
from syncer.delta_wire import (
    PAYLOAD_SHA256_HEADER,
    RANGES_TYPE,
    BlobUrl,
    encode_ranges,
    parse_blob_url,
)
from syncer.http_client import ClientSettings, HttpClient, UpstreamError

log = logging.getLogger(__name__)
T = TypeVar("T")
DeltaPath = Literal["auto", "patch", "blocks"]
Method = Literal["patch", "blocks", "whole", "identical"]
STATE_VERSION = 1
CHUNK = 1 << 16


class DeltaError(EdgedepotError):
    """Base of the delta client's errors (bytes that fail verification raise the one
    `IntegrityError` instead; nothing is stored and transfer state is discarded)."""


class DeltaTransferError(DeltaError):
    """The transfer broke off (connection lost, server stopped); calling again resumes it."""


class DeltaUnavailable(DeltaError):
    """The node cannot serve this path (e.g. no patch: it lacks the basis) or the blob."""


class WholeIsBetter(DeltaUnavailable):
    """``auto`` expects the whole blob to move fewer bytes than any delta (``fetch_into``
    raises it: the caller fetches the blob its own way)."""


class PatchNotReady(DeltaUnavailable):
    """The node has no patch ready for this pair (yet): its offer says what it has."""

    def __init__(self, offer: Offer | None) -> None:
        super().__init__("the node has no patch ready")
        self.offer = offer


class RebuildMismatch(IntegrityError):
    """What was rebuilt from basis blocks did not verify (a false block match, a basis that
    changed); nothing of it was kept. ``auto`` then fetches the whole blob."""


@dataclass(frozen=True)
class Offer:
    """What the node has for a target and basis (``GET …/offer?basis=``)."""

    size: int
    patch: str  # "ready", "computing", "unavailable" (the node lacks the basis)
    patch_size: int | None = None
    patch_eta: float | None = None  # seconds, while computing
    signature_size: int | None = None  # when computed

    @staticmethod
    def from_json(doc: object) -> Offer:
        if not isinstance(doc, dict):
            raise ValueError("offer is not an object")
        patch = doc.get("patch") if isinstance(doc.get("patch"), dict) else {}
        sig = doc.get("signature") if isinstance(doc.get("signature"), dict) else {}
        assert isinstance(patch, dict) and isinstance(sig, dict)
        size = doc.get("size")
        state = patch.get("state")
        if not isinstance(size, int) or state not in ("ready", "computing", "unavailable"):
            raise ValueError("offer lacks size or patch state")

        def num(value: object) -> float | None:
            return float(value) if isinstance(value, (int, float)) and \
                not isinstance(value, bool) else None

        psize, eta, ssize = num(patch.get("size")), num(patch.get("eta")), num(sig.get("size"))
        return Offer(size, str(state), int(psize) if psize is not None else None, eta,
                     int(ssize) if ssize is not None and sig.get("state") == "ready" else None)


def expected_signature_size(size: int) -> int:
    """Bytes of the default signature of a blob of this size (weak + strong per block)."""
    block = choose_block_size(size)
    n = size // block
    return 64 + n * (4 + choose_strong_len(size, n))


REQUEST_BYTES = 500  # a request and its answer's header lines, roughly


def choose_path(offer: Offer, basis_size: int, ratio: float, patch_wait: float
                ) -> Literal["patch", "blocks", "whole"]:
    """``auto``'s choice by expected bytes: the whole blob costs its compressed size and one
    request; a ready patch its size and one request (a patch still computing is waited for
    when it is due within ``patch_wait`` seconds); the block path at least two requests, its
    signature, and the compressed bytes the basis cannot hold (what the target has more)."""
    whole = offer.size * ratio + REQUEST_BYTES
    if offer.patch == "ready" and offer.patch_size is not None:
        return "patch" if offer.patch_size + REQUEST_BYTES < whole else "whole"
    if offer.patch == "computing" and offer.patch_eta is not None \
            and offer.patch_eta <= patch_wait:
        return "patch"
    signature = offer.signature_size if offer.signature_size is not None \
        else expected_signature_size(offer.size)
    blocks = 2 * REQUEST_BYTES + signature + max(0, offer.size - basis_size) * ratio
    return "blocks" if blocks < whole else "whole"


def compressed_ratio(path: Path, samples: int = 8, sample: int = 128 << 10) -> float:
    """How well a file compresses (zstd -3, compressed / raw), from a few samples spread over
    it: the basis stands for the target, its family's next version."""
    size = path.stat().st_size
    if size == 0:
        return 1.0
    raw = 0
    packed = 0
    with open(path, "rb") as fh:
        for at in np.linspace(0, max(0, size - sample), num=min(samples, 1 + size // sample),
                              dtype=np.int64).tolist():
            fh.seek(at)
            data = fh.read(sample)
            raw += len(data)
            packed += len(zstd.compress(data, 3))
    return max(0.01, min(1.0, packed / max(raw, 1)))


@dataclass(frozen=True)
class DeltaResult:
    path: Path
    sha256: str
    size: int
    method: Method
    bytes_received: int  # response bytes (bodies plus header lines), this call
    bytes_sent: int  # request bytes (bodies plus request and header lines), this call
    requests: int
    reused_bytes: int  # target bytes taken from the basis
    resumed_bytes: int  # bytes a previous, interrupted call had already fetched
    seconds: float

    @property
    def wire_bytes(self) -> int:
        return self.bytes_received + self.bytes_sent


@dataclass(frozen=True)
class _Files:
    out: Path

    def _sibling(self, suffix: str) -> Path:
        return self.out.with_name(self.out.name + suffix)

    @property
    def state(self) -> Path:
        return self._sibling(".delta-state")

    @property
    def spool(self) -> Path:
        return self._sibling(".delta-spool")

    @property
    def sig(self) -> Path:
        return self._sibling(".delta-sig")

    @property
    def partial(self) -> Path:
        return self._sibling(".delta-partial")

    @property
    def hashes(self) -> Path:
        return self._sibling(".delta-hashes")

    def discard(self) -> None:
        """The transfer's state goes (over, or not to be trusted); the output stays."""
        for p in (self.state, self.spool, self.sig, self.hashes):
            p.unlink(missing_ok=True)

    def load_state(self) -> dict[str, str]:
        try:
            raw = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            return {}
        return {str(k): str(v) for k, v in raw.items()}

    def begin(self, target: str, mode: str, key: str) -> int:
        """Resume if the saved state is for this very transfer; bytes already spooled."""
        st = self.load_state()
        if st.get("target") == target and st.get("mode") == mode and st.get("key") == key \
                and self.spool.exists():
            return self.spool.stat().st_size
        self.spool.unlink(missing_ok=True)
        keep: dict[str, str] = {k: st[k] for k in ("sig", "hashes") if k in st} \
            if st.get("target") == target else {}
        self.save_state({**keep, "target": target, "mode": mode, "key": key})
        return 0

    def save_state(self, state: dict[str, str]) -> None:
        tmp = self._sibling(".delta-state.tmp")
        tmp.write_text(json.dumps({**state, "version": STATE_VERSION}))
        os.replace(tmp, self.state)


def _worth_refining(edges: EdgeBlocks) -> bool:
    """A sub-block round pays when the bytes it may save (about a quarter of each edge block,
    compressed) exceed its hashes and the extra request."""
    cost = edges.count * choose_hash_len(edges.count) + 800
    return len(edges.blocks) * edges.block_size // 4 > cost


def _trim(ranges: tuple[tuple[int, int], ...], skip: int) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for off, length in ranges:
        if skip >= length:
            skip -= length
            continue
        out.append((off + skip, length - skip))
        skip = 0
    return tuple(out)


class DeltaClient:
    """An async context manager for delta fetches over the one HTTP client wrapper: a shared
    `HttpClient` (the node's) or one of its own. ``patch_wait``: how long ``auto`` waits for a
    patch the node is still computing rather than take the block path."""

    def __init__(self, http: HttpClient | None = None, *,
                 settings: ClientSettings | None = None,
                 headers: dict[str, str] | None = None, patch_wait: float = 3.0) -> None:
        self._own = http is None
        self.http = http or HttpClient("delta", settings or ClientSettings(
            connect_timeout=30, read_timeout=600, retries=0), headers=headers)
        self.patch_wait = patch_wait
        self._received = 0
        self._sent = 0
        self._requests = 0

    @property
    def received(self) -> int:
        """Response bytes of the current (or last) call so far."""
        return self._received

    async def __aenter__(self) -> DeltaClient:
        if self._own:
            await self.http.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._own:
            await self.http.__aexit__(exc_type, exc, tb)

    # -- entry points ----------------------------------------------------------------------
    async def fetch(self, url: str, basis: Path | None, out: Path, *, path: DeltaPath = "auto",
                    block_size: int | None = None,
                    basis_sha256: str | None = None) -> DeltaResult:
        """Make ``out`` the blob at ``url`` (``…/delta/v1/blobs/<sha256>``), using ``basis``."""
        blob = parse_blob_url(url)
        files = _Files(out)
        self._received = self._sent = self._requests = 0
        started = time.monotonic()
        basis_size = basis.stat().st_size if basis is not None and basis.exists() else 0
        if basis is None or basis_size == 0:
            if path == "patch":
                raise DeltaUnavailable("the patch path needs a non-empty basis file")
            return await self._whole(blob, files, started)
        if basis_sha256 is None:
            basis_sha256 = await asyncio.to_thread(file_sha256, basis)
        if basis_sha256 == blob.sha256:
            await asyncio.to_thread(self._copy_into_place, basis, files)
            return self._result(files, blob.sha256, "identical", basis_size, 0, started)
        try:
            return await self._rebuild_file(blob, basis, basis_sha256, files, path,
                                            block_size, started)
        except RebuildMismatch:
            if path != "auto":
                raise
            log.warning("delta of %s did not verify; fetching it whole", blob.sha256[:12])
        except WholeIsBetter:
            pass
        return await self._whole(blob, files, started)

    async def fetch_into(self, url: str, basis: Path, sink: Sink, state: Path, *,
                         path: DeltaPath = "auto", block_size: int | None = None,
                         basis_sha256: str | None = None) -> DeltaResult:
        """Write the blob at ``url`` into ``sink`` (from ``sink.size`` on) as a delta against
        ``basis``; transfer state lives next to ``state``. The sink receives verified pieces
        only (see the module docstring); the caller checks the whole against the sha256.
        Raises `WholeIsBetter` when ``auto`` expects a whole fetch to move less."""
        blob = parse_blob_url(url)
        files = _Files(state)
        self._received = self._sent = self._requests = 0
        started = time.monotonic()
        if basis_sha256 is None:
            basis_sha256 = await asyncio.to_thread(file_sha256, basis)
        if basis_sha256 == blob.sha256:
            size = basis.stat().st_size
            await asyncio.to_thread(_copy_to_sink, basis, sink)
            return self._result(files, blob.sha256, "identical", size, 0, started, reused=size)
        return await self._rebuild(blob, basis, basis_sha256, sink, files, path, block_size,
                                   started)

    # -- choosing --------------------------------------------------------------------------
    async def _rebuild_file(self, blob: BlobUrl, basis: Path, basis_sha: str, files: _Files,
                            path: DeltaPath, block_size: int | None,
                            started: float) -> DeltaResult:
        sink = FileSink(self._fresh_partial(files))
        try:
            result = await self._rebuild(blob, basis, basis_sha, sink, files, path, block_size,
                                         started)
        except BaseException:
            sink.close()
            files.partial.unlink(missing_ok=True)
            raise
        sink.close()
        if sink.hexdigest() != blob.sha256:
            files.discard()
            files.partial.unlink(missing_ok=True)
            raise RebuildMismatch(f"the file rebuilt from basis blocks did not hash to "
                                  f"{blob.sha256}; discarded")
        os.replace(files.partial, files.out)
        files.discard()
        return result

    async def _rebuild(self, blob: BlobUrl, basis: Path, basis_sha: str, sink: Sink,
                       files: _Files, path: DeltaPath, block_size: int | None,
                       started: float) -> DeltaResult:
        if path == "patch":
            return await self._via_patch(blob, basis, basis_sha, sink, files, started)
        if path == "blocks":
            return await self._via_blocks(blob, basis, sink, files, block_size, started)
        # auto: one request in the common case, the patch the node has ready; else its offer
        offer: Offer | None = None
        try:
            return await self._via_patch(blob, basis, basis_sha, sink, files, started,
                                         only_ready=True)
        except PatchNotReady as exc:
            offer = exc.offer
        except DeltaUnavailable:
            pass  # the node lacks the basis: the block path
        if offer is not None:
            ratio = await asyncio.to_thread(compressed_ratio, basis)
            choice = choose_path(offer, basis.stat().st_size, ratio, self.patch_wait)
            if choice == "whole":
                raise WholeIsBetter(f"a whole fetch of {blob.sha256[:12]} is expected to move "
                                    "fewer bytes than a delta")
            if choice == "patch":
                return await self._via_patch(blob, basis, basis_sha, sink, files, started)
        return await self._via_blocks(blob, basis, sink, files, block_size, started)

    # -- paths -----------------------------------------------------------------------------
    async def _via_patch(self, blob: BlobUrl, basis: Path, basis_sha: str, sink: Sink,
                         files: _Files, started: float, only_ready: bool = False
                         ) -> DeltaResult:
        """The patch, applied segment by segment while it downloads. ``only_ready``: if the
        node has it ready; else `PatchNotReady` with the node's offer (a node without offers
        computes it, as for a plain request)."""
        have = files.begin(blob.sha256, "patch", basis_sha)
        headers = {"Range": f"bytes={have}-"} if have else {}
        skip = sink.size
        params = {"basis": basis_sha, **({"wait": "0"} if only_ready else {})}
        async with self._request("GET", blob.patch, params=params, headers=headers) as resp:
            if resp.status == 409 and only_ready:
                try:
                    offer: Offer | None = Offer.from_json(
                        json.loads(await self._read_body(resp)))
                except ValueError:
                    offer = None
                raise PatchNotReady(offer)
            if resp.status == 404:
                files.discard()
                raise DeltaUnavailable(f"node has no patch from {basis_sha[:12]} to "
                                       f"{blob.sha256[:12]}")
            if resp.status not in (200, 206, 416):
                raise DeltaUnavailable(f"patch request failed: HTTP {resp.status}")
            if resp.status == 200:
                have = 0
                files.spool.write_bytes(b"")
            patch_sha = parse_repr_digest(resp.headers.get("Repr-Digest", ""))
            spool = GrowingFile(files.spool, size=have, complete=resp.status == 416)
            reader = StreamReader(spool)

            def apply() -> int:
                info = apply_patch_stream(basis, reader, sink, skip=skip,
                                          expected_target=blob.sha256,
                                          expected_basis=basis_sha, at_end=reader.at_end)
                return info.target_size

            try:
                size = await self._while_downloading(
                    apply, None if resp.status == 416 else
                    self._spool_body(resp, files.spool, spool), spool)
            except PatchError as exc:
                files.discard()
                raise IntegrityError(f"patch rejected: {exc}") from exc
            finally:
                spool.close()
        if patch_sha is not None and await asyncio.to_thread(file_sha256, files.spool) \
                != patch_sha:
            files.discard()
            raise IntegrityError("patch bytes do not match the node's Repr-Digest; "
                                 "discarded, run again")
        files.discard()
        return self._result(files, blob.sha256, "patch", size, have, started, reused=size)

    async def _via_blocks(self, blob: BlobUrl, basis: Path, sink: Sink, files: _Files,
                          block_size: int | None, started: float) -> DeltaResult:
        """The blob rebuilt from basis blocks and the missing ranges, assembled while the
        ranges download; every block checked against the signature before the sink gets it."""
        sig = await self._signature(blob, files, block_size)
        match: MatchResult = await asyncio.to_thread(match_basis, sig, basis)
        plan = plan_blocks(sig, match)
        recipe = await self._refined(blob, sig, match, plan, basis, files)
        payload_key = hashlib.sha256(encode_ranges(recipe.ranges)).hexdigest()
        have = files.begin(blob.sha256, "blocks", payload_key)
        if have > recipe.payload_size:  # cannot be ours: start over
            files.spool.unlink(missing_ok=True)
            have = 0
        files.spool.touch()
        skip = sink.size
        spool = GrowingFile(files.spool, size=have, complete=have == recipe.payload_size)

        def assemble() -> None:
            write_target(recipe, basis, spool, sink, skip=skip, verify=sig)

        try:
            await self._while_downloading(
                assemble, self._fetch_ranges(blob, _trim(recipe.ranges, have), files, spool),
                spool)
        except BlockMismatch as exc:
            files.discard()
            raise RebuildMismatch(f"{exc}: discarded") from exc
        finally:
            spool.close()
        files.discard()
        return self._result(files, blob.sha256, "blocks", sig.target_size, have, started,
                            reused=recipe.reused_bytes)

    async def _while_downloading(self, work: Callable[[], T],
                                 download: Coroutine[Any, Any, None] | None,
                                 spool: GrowingFile) -> T:
        """Run ``work`` in a thread while ``download`` fills the spool it reads. Whichever
        fails first stops the other; the reader's own error (a bad patch, a block that does
        not verify) wins over the download's, which wins over the reader's "no more bytes"."""
        worker = asyncio.ensure_future(asyncio.to_thread(work))
        if download is None:
            return await worker
        fetcher = asyncio.ensure_future(download)
        try:
            await asyncio.wait([worker, fetcher], return_when=asyncio.FIRST_COMPLETED)
            if not fetcher.done() and worker.exception() is None:
                await asyncio.wait([fetcher])  # the reader needed no more: let it end
            if not fetcher.done():  # the reader failed first
                fetcher.cancel()
                spool.fail(RuntimeError("the rebuild stopped"))
            elif fetcher.cancelled() or fetcher.exception() is not None:
                spool.fail(RuntimeError("download failed"))
            else:
                spool.finish()
            await asyncio.wait([worker, fetcher])
        except BaseException:
            fetcher.cancel()
            spool.fail(RuntimeError("the transfer stopped"))
            await asyncio.gather(fetcher, worker, return_exceptions=True)
            raise
        failed = worker.exception()
        if failed is not None and not isinstance(failed, TransferBroken):
            raise failed
        if not fetcher.cancelled() and fetcher.exception() is not None:
            fetcher.result()  # raises the download's error
        return worker.result()

    async def _whole(self, blob: BlobUrl, files: _Files, started: float) -> DeltaResult:
        async with self._request("HEAD", blob.blob) as resp:
            if resp.status != 200:
                raise DeltaUnavailable(f"node has no blob {blob.sha256}: HTTP {resp.status}")
            size = int(resp.headers.get("Content-Length", "0"))
        ranges = ((0, size),) if size else ()
        have = files.begin(blob.sha256, "whole", str(size))
        files.spool.touch()
        await self._fetch_ranges(blob, _trim(ranges, have), files, None)
        digest = await asyncio.to_thread(file_sha256, files.spool)
        if digest != blob.sha256:
            files.discard()
            raise IntegrityError(f"fetched file hashed to {digest}, expected "
                                 f"{blob.sha256}; discarded")
        os.replace(files.spool, files.out)
        files.discard()
        return self._result(files, blob.sha256, "whole", size, have, started)

    # -- pieces ----------------------------------------------------------------------------
    async def _signature(self, blob: BlobUrl, files: _Files,
                         block_size: int | None) -> Signature:
        key = f"{blob.sha256}/{block_size or 'auto'}"
        st = files.load_state()
        if files.sig.exists() and st.get("sig") == key:
            data = files.sig.read_bytes()
        else:
            params = {"block_size": str(block_size)} if block_size else {}
            async with self._request("GET", blob.signature, params=params) as resp:
                if resp.status != 200:
                    raise DeltaUnavailable(f"signature request failed: HTTP {resp.status}")
                data = await self._read_body(resp)
        try:
            sig = decode_signature(data, expected_sha256=blob.sha256)
        except SignatureError as exc:
            files.discard()
            raise IntegrityError(f"bad signature from node: {exc}") from exc
        if block_size is not None and sig.block_size != block_size:
            files.discard()
            raise IntegrityError(f"signature has block size {sig.block_size}, "
                                 f"asked for {block_size}")
        if st.get("sig") != key:
            files.sig.write_bytes(data)
            keep = st if st.get("target") == blob.sha256 else {}
            files.save_state({**keep, "target": blob.sha256, "sig": key})
        return sig

    async def _refined(self, blob: BlobUrl, sig: Signature, match: MatchResult,
                       plan: BlockPlan, basis: Path, files: _Files) -> Recipe:
        """The recipe after the second, finer round: sub-block hashes of the blocks at the
        edges of each run of missing blocks, when they are expected to save more than they
        cost (an older node without the endpoint: the blocks are fetched whole)."""
        edges = edge_blocks(sig, match, plan)
        if not edges.blocks or not _worth_refining(edges):
            return make_recipe(sig, match, plan)
        sub = await self._sub_hashes(blob, edges, files)
        if sub is None:
            return make_recipe(sig, match, plan)
        found = await asyncio.to_thread(refine, edges, sub, basis)
        return make_recipe(sig, match, plan, found, edges.sub_block)

    async def _sub_hashes(self, blob: BlobUrl, edges: EdgeBlocks,
                          files: _Files) -> SubHashes | None:
        body = encode_ranges(edges.ranges)
        key = f"{edges.sub_block}/{hashlib.sha256(body).hexdigest()}"
        st = files.load_state()
        data: bytes | None = None
        if st.get("hashes") == key and files.hashes.exists():
            data = files.hashes.read_bytes()
        else:
            async with self._request("POST", blob.hashes, data=body,
                                     params={"block_size": str(edges.sub_block)},
                                     headers={"Content-Type": RANGES_TYPE}) as resp:
                if resp.status != 200:
                    return None
                data = await self._read_body(resp)
        try:
            sub = decode_sub_hashes(data, blob.sha256, edges.sub_block, edges.count)
        except SignatureError as exc:
            files.discard()
            raise IntegrityError(f"bad sub-block hashes from node: {exc}") from exc
        if st.get("hashes") != key:
            files.hashes.write_bytes(data)
            st = files.load_state()
            keep = st if st.get("target") == blob.sha256 else {}
            files.save_state({**keep, "target": blob.sha256, "hashes": key})
        return sub

    async def _fetch_ranges(self, blob: BlobUrl, ranges: tuple[tuple[int, int], ...],
                            files: _Files, spool: GrowingFile | None) -> None:
        """Append the ranges' bytes to the spool (decompressed), telling ``spool`` (the
        reader's view of it) as they land."""
        if not ranges:
            return
        body = encode_ranges(ranges)
        async with self._request("POST", blob.ranges, data=body,
                                 headers={"Content-Type": RANGES_TYPE}) as resp:
            if resp.status != 200:
                raise DeltaUnavailable(f"ranges request failed: HTTP {resp.status}")
            want_sha = resp.headers.get(PAYLOAD_SHA256_HEADER, "")
            want_len = sum(length for _, length in ranges)
            dec = zstd.ZstdDecompressor()
            digest = hashlib.sha256()
            got = 0
            with open(files.spool, "ab") as fh:
                start = fh.tell()
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        self._received += len(chunk)
                        data = dec.decompress(chunk)
                        got += len(data)
                        if got > want_len:
                            raise IntegrityError("ranges payload is longer than asked")
                        digest.update(data)
                        fh.write(data)
                        if spool is not None and data:
                            fh.flush()
                            spool.grow(start + got)
                except zstd.ZstdError as exc:
                    fh.close()
                    files.discard()
                    raise IntegrityError(f"ranges payload is corrupt: {exc}") from exc
                except IntegrityError:
                    fh.close()
                    files.discard()
                    raise
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                    raise DeltaTransferError(
                        f"ranges transfer broke off after {got} of {want_len} bytes ({exc!r}); "
                        "call again to resume") from exc
        if not dec.eof or got != want_len:
            raise DeltaTransferError(f"ranges transfer ended early ({got} of {want_len} bytes); "
                                     "call again to resume")
        if digest.hexdigest() != want_sha:
            files.discard()
            raise IntegrityError("ranges payload does not match its "
                                 f"{PAYLOAD_SHA256_HEADER}; discarded, run again")

    @staticmethod
    def _fresh_partial(files: _Files) -> Path:
        files.partial.unlink(missing_ok=True)
        return files.partial

    def _copy_into_place(self, basis: Path, files: _Files) -> None:
        partial = self._fresh_partial(files)
        shutil.copyfile(basis, partial)
        os.replace(partial, files.out)
        files.discard()

    # -- HTTP with byte counting -----------------------------------------------------------
    def _request(self, method: str, url: str, *, params: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None,
                 data: bytes | None = None) -> _CountedRequest:
        return _CountedRequest(self, method, url, params, headers, data)

    async def _spool_body(self, resp: aiohttp.ClientResponse, path: Path,
                          spool: GrowingFile) -> None:
        with open(path, "ab") as fh:
            def sink(chunk: bytes) -> None:
                fh.write(chunk)
                fh.flush()
                spool.grow(fh.tell())

            await self._pump(resp, sink)

    async def _read_body(self, resp: aiohttp.ClientResponse) -> bytes:
        parts: list[bytes] = []
        await self._pump(resp, parts.append)
        return b"".join(parts)

    async def _pump(self, resp: aiohttp.ClientResponse,
                    sink: Callable[[bytes], object]) -> None:
        got = 0
        try:
            async for chunk in resp.content.iter_chunked(CHUNK):
                self._received += len(chunk)
                got += len(chunk)
                sink(chunk)
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise DeltaTransferError(f"transfer broke off after {got} bytes ({exc!r}); "
                                     "call again to resume") from exc
        if resp.content_length is not None and got < resp.content_length:
            raise DeltaTransferError(f"transfer ended after {got} of {resp.content_length} "
                                     "bytes; call again to resume")

    def _result(self, files: _Files, sha: str, method: Method, size: int, resumed: int,
                started: float, reused: int = 0) -> DeltaResult:
        return DeltaResult(files.out, sha, size, method, self._received, self._sent,
                           self._requests, reused, resumed, time.monotonic() - started)


def _copy_to_sink(path: Path, sink: Sink) -> None:
    with open(path, "rb") as fh:
        fh.seek(sink.size)
        while chunk := fh.read(1 << 20):
            sink.write(chunk)


class _CountedRequest:
    """``async with`` one request; counts request and response bytes (header lines included)."""

    def __init__(self, client: DeltaClient, method: str, url: str,
                 params: dict[str, str] | None, headers: dict[str, str] | None,
                 data: bytes | None) -> None:
        self.client = client
        self.args = (method, url, params, headers, data)
        self.opened: AbstractAsyncContextManager[aiohttp.ClientResponse] | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        method, url, params, headers, data = self.args
        c = self.client
        c._requests += 1
        c._sent += len(method) + len(url) + 64 + sum(len(k) + len(v) + 4 for k, v in
                                                       (headers or {}).items())
        c._sent += len(data) if data else 0
        self.opened = c.http.open(url, headers, method, retries=0, params=params, data=data,
                                  statuses="any")
        try:
            resp = await self.opened.__aenter__()
        except UpstreamError as exc:
            self.opened = None
            raise DeltaTransferError(f"{method} {url}: {exc}; call again to resume") from exc
        c._received += 17 + sum(len(k) + len(v) + 4 for k, v in resp.raw_headers)
        return resp

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.opened is not None:
            await self.opened.__aexit__(exc_type, exc, tb)
