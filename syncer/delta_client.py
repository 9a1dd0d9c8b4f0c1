"""Fetch a blob from a node as a delta against a basis file the caller already has.

Paths (``auto`` tries them in this order):

* ``patch`` — ask for a patch against the basis's sha256; the node answers 404 when it lacks
  that basis, then ``auto`` falls back to
* ``blocks`` — fetch the blob's signature, find its blocks in the basis (anywhere, at any
  offset), and fetch the missing ones in one ranges request with a zstd-compressed body.

With no usable basis the whole blob is fetched as one compressed range. The result is built in
``<out>.delta-partial`` (never in place), verified against the blob's sha256, then renamed to
``out``. Transfer state is kept next to it (``.delta-state``, ``.delta-spool``, ``.delta-sig``):
after an interruption the same call resumes and fetches only what it does not have yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiohttp
from backports import zstd

from distro.digests import file_sha256, parse_repr_digest
from distro.errors import EdgedepotError, IntegrityError
from syncer.delta_match import BlockPlan, MatchResult, assemble, match_basis, plan_blocks
from syncer.delta_patch import PatchError, apply_patch
from syncer.delta_signature import Signature, SignatureError, decode_signature
from syncer.delta_wire import (
    PAYLOAD_SHA256_HEADER,
    RANGES_TYPE,
    BlobUrl,
    encode_ranges,
    parse_blob_url,
)
from syncer.http_client import ClientSettings, HttpClient, UpstreamError

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

    def discard(self) -> None:
        for p in (self.state, self.spool, self.sig, self.partial):
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
        keep = {"sig": st["sig"]} if st.get("target") == target and "sig" in st else {}
        self.save_state({**keep, "target": target, "mode": mode, "key": key})
        return 0

    def save_state(self, state: dict[str, str]) -> None:
        tmp = self._sibling(".delta-state.tmp")
        tmp.write_text(json.dumps({**state, "version": STATE_VERSION}))
        os.replace(tmp, self.state)


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
    `HttpClient` (the node's) or one of its own."""

    def __init__(self, http: HttpClient | None = None, *,
                 settings: ClientSettings | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self._own = http is None
        self.http = http or HttpClient("delta", settings or ClientSettings(
            connect_timeout=30, read_timeout=600, retries=0), headers=headers)
        self._received = 0
        self._sent = 0
        self._requests = 0

    async def __aenter__(self) -> DeltaClient:
        if self._own:
            await self.http.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._own:
            await self.http.__aexit__(exc_type, exc, tb)

    # -- the one entry point ---------------------------------------------------------------
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
        if path in ("auto", "patch"):
            try:
                return await self._via_patch(blob, basis, basis_sha256, files, started)
            except DeltaUnavailable:
                if path == "patch":
                    raise
        result = await self._via_blocks(blob, basis, files, block_size, started)
        if result is not None:
            return result
        if path != "auto":
            raise IntegrityError(f"the file rebuilt from basis blocks did not hash to "
                                 f"{blob.sha256}; discarded")
        return await self._whole(blob, files, started)  # a (very unlikely) false block match

    # -- paths -----------------------------------------------------------------------------
    async def _via_patch(self, blob: BlobUrl, basis: Path, basis_sha: str, files: _Files,
                         started: float) -> DeltaResult:
        have = files.begin(blob.sha256, "patch", basis_sha)
        headers = {"Range": f"bytes={have}-"} if have else {}
        async with self._request("GET", blob.patch, params={"basis": basis_sha},
                                 headers=headers) as resp:
            if resp.status == 404:
                files.discard()
                raise DeltaUnavailable(f"node has no patch from {basis_sha[:12]} to "
                                       f"{blob.sha256[:12]}")
            if resp.status == 416:
                pass  # we have all of it
            elif resp.status == 200:
                have = 0
                await self._spool_body(resp, files.spool, append=False)
            elif resp.status == 206:
                await self._spool_body(resp, files.spool, append=True)
            else:
                raise DeltaUnavailable(f"patch request failed: HTTP {resp.status}")
            patch_sha = parse_repr_digest(resp.headers.get("Repr-Digest", ""))
        if patch_sha is not None and await asyncio.to_thread(file_sha256, files.spool) \
                != patch_sha:
            files.discard()
            raise IntegrityError("patch bytes do not match the node's Repr-Digest; "
                                      "discarded, run again")
        try:
            info = await asyncio.to_thread(
                apply_patch, basis, files.spool, self._fresh_partial(files),
                expected_target=blob.sha256, expected_basis=basis_sha)
        except PatchError as exc:
            files.discard()
            raise IntegrityError(f"patch rejected: {exc}") from exc
        os.replace(files.partial, files.out)
        files.discard()
        return self._result(files, blob.sha256, "patch", info.target_size, have, started,
                            reused=info.target_size)

    async def _via_blocks(self, blob: BlobUrl, basis: Path, files: _Files,
                          block_size: int | None, started: float) -> DeltaResult | None:
        """The blob rebuilt from basis blocks and the missing ranges; None when the rebuilt
        file does not hash to the target (a false block match: nothing kept)."""
        sig = await self._signature(blob, files, block_size)
        match: MatchResult = await asyncio.to_thread(match_basis, sig, basis)
        plan = plan_blocks(sig, match)
        payload_key = hashlib.sha256(encode_ranges(plan.ranges)).hexdigest()
        have = files.begin(blob.sha256, "blocks", payload_key)
        if have > plan.payload_size:  # cannot be ours: start over
            files.spool.unlink(missing_ok=True)
            have = 0
        await self._fetch_ranges(blob, _trim(plan.ranges, have), files)
        digest = await asyncio.to_thread(self._assemble, sig, match, plan, basis, files)
        if digest != blob.sha256:
            files.discard()
            return None
        os.replace(files.partial, files.out)
        files.discard()
        return self._result(files, blob.sha256, "blocks", sig.target_size, have, started,
                            reused=plan.reused_bytes)

    async def _whole(self, blob: BlobUrl, files: _Files, started: float) -> DeltaResult:
        async with self._request("HEAD", blob.blob) as resp:
            if resp.status != 200:
                raise DeltaUnavailable(f"node has no blob {blob.sha256}: HTTP {resp.status}")
            size = int(resp.headers.get("Content-Length", "0"))
        ranges = ((0, size),) if size else ()
        have = files.begin(blob.sha256, "whole", str(size))
        await self._fetch_ranges(blob, _trim(ranges, have), files)
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

    async def _fetch_ranges(self, blob: BlobUrl, ranges: tuple[tuple[int, int], ...],
                            files: _Files) -> None:
        files.spool.touch()
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
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        self._received += len(chunk)
                        data = dec.decompress(chunk)
                        got += len(data)
                        if got > want_len:
                            raise IntegrityError("ranges payload is longer than asked")
                        digest.update(data)
                        fh.write(data)
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

    def _assemble(self, sig: Signature, match: MatchResult, plan: BlockPlan, basis: Path,
                  files: _Files) -> str:
        return assemble(sig, match, plan, basis, files.spool, self._fresh_partial(files))

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

    async def _spool_body(self, resp: aiohttp.ClientResponse, spool: Path,
                          append: bool) -> None:
        with open(spool, "ab" if append else "wb") as fh:
            await self._pump(resp, fh.write)

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
