"""Faults: corrupt patches and range payloads, wrong signatures, a server that stops mid-way.

Each is detected, leaves nothing wrong behind (no output file, nothing stored), raises a clear
error, and an interrupted transfer resumes without fetching again what it already has.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from cache_node.delta_service import DeltaService, RangesPayload, ServedFile
from distro.errors import IntegrityError
from syncer.delta_client import DeltaClient, DeltaTransferError
from syncer.delta_patch import PatchError, apply_patch, make_patch
from syncer.delta_signature import (
    SignatureError,
    compute_signature,
    decode_signature,
    encode_signature,
)
from tests.test_delta_e2e import DeltaServer, mutate, random_bytes, start_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DeltaServer]:
    srv = await start_server(tmp_path / "srv")
    yield srv
    await srv.runner.cleanup()
    srv.store.close()


class CutProxy:
    """A loopback TCP proxy that closes each connection after ``budget`` response bytes."""

    def __init__(self, upstream_port: int, budget: int) -> None:
        self.upstream_port = upstream_port
        self.budget = budget
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> CutProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_w.write(data)
                await up_w.drain()

        async def downstream() -> None:
            left = self.budget
            while left > 0 and (data := await up_r.read(min(65536, left))):
                writer.write(data)
                await writer.drain()
                left -= len(data)

        up = asyncio.ensure_future(upstream())
        try:
            await downstream()
        finally:
            up.cancel()
            for w in (writer, up_w):
                w.close()


def leftovers(directory: Path, name: str) -> list[str]:
    return sorted(p.name for p in directory.glob(name + "*"))


def big_change_pair() -> tuple[bytes, bytes]:
    basis = random_bytes(400_000, 11)
    target = basis[:100_000] + random_bytes(1_500_000, 12) + basis[100_000:]
    return basis, target


@pytest.mark.parametrize("mode", ["blocks", "patch"])
async def test_server_stopping_mid_transfer_is_resumable(server: DeltaServer, tmp_path: Path,
                                                         mode: str) -> None:
    basis, target = big_change_pair()
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    server.add(basis)
    sha = server.add(target)
    out = tmp_path / "out.bin"
    # warm the origin (signature, patch), so the cut falls in the payload
    async with DeltaClient() as client:
        full = await client.fetch(server.url(sha), basis_path, tmp_path / "full.bin",
                                  path=mode)  # type: ignore[arg-type]
    proxy = await CutProxy(server.port, budget=600_000).start()
    try:
        async with DeltaClient() as client:
            with pytest.raises(DeltaTransferError, match="resume"):
                await client.fetch(server.url(sha, proxy.port), basis_path, out,
                                   path=mode)  # type: ignore[arg-type]
    finally:
        await proxy.stop()
    assert not out.exists()
    assert (tmp_path / "out.bin.delta-spool").stat().st_size > 100_000
    async with DeltaClient() as client:
        resumed = await client.fetch(server.url(sha), basis_path, out,
                                     path=mode)  # type: ignore[arg-type]
    assert out.read_bytes() == target
    assert resumed.resumed_bytes > 100_000
    assert resumed.requests == 1  # the signature was kept: only the rest of the payload
    assert resumed.bytes_received < full.bytes_received - 300_000
    assert leftovers(tmp_path, "out.bin.") == []


async def test_corrupt_stored_patch_is_rejected(server: DeltaServer, tmp_path: Path) -> None:
    basis = random_bytes(200_000, 13)
    target = mutate(basis, 14)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    bsha = server.add(basis)
    sha = server.add(target)
    served = await server.service.patch(sha, bsha)
    data = bytearray(served.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    served.path.chmod(0o644)
    served.path.write_bytes(bytes(data))
    out = tmp_path / "out.bin"
    async with DeltaClient() as client:
        with pytest.raises(IntegrityError, match="Repr-Digest|corrupt"):
            await client.fetch(server.url(sha), basis_path, out, path="patch")
    assert not out.exists() and leftovers(tmp_path, "out.bin.") == []


async def test_corrupt_range_payload_is_rejected(server: DeltaServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    basis = random_bytes(200_000, 15)
    target = mutate(basis, 16)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    sha = server.add(target)
    original = DeltaService._compress_ranges

    def flip(self: DeltaService, path: Path, ranges: tuple[tuple[int, int], ...]
             ) -> RangesPayload:
        payload = original(self, path, ranges)
        raw = bytearray(payload.path.read_bytes())
        raw[len(raw) // 2] ^= 0x55
        payload.path.write_bytes(bytes(raw))
        return payload

    def lie(self: DeltaService, path: Path, ranges: tuple[tuple[int, int], ...]
            ) -> RangesPayload:
        p = original(self, path, ranges)
        return RangesPayload(p.path, p.compressed_size, p.payload_size, "0" * 64, p.ranges)

    out = tmp_path / "out.bin"
    for fault, message in ((flip, "corrupt|does not match"), (lie, "does not match")):
        monkeypatch.setattr(DeltaService, "_compress_ranges", fault)
        async with DeltaClient() as client:
            with pytest.raises(IntegrityError, match=message):
                await client.fetch(server.url(sha), basis_path, out, path="blocks")
        assert not out.exists() and leftovers(tmp_path, "out.bin.") == []
    monkeypatch.setattr(DeltaService, "_compress_ranges", original)
    async with DeltaClient() as client:
        await client.fetch(server.url(sha), basis_path, out, path="blocks")
    assert out.read_bytes() == target


async def test_signature_of_wrong_blob_is_rejected(server: DeltaServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    basis = random_bytes(100_000, 17)
    other = server.add(mutate(basis, 18))
    sha = server.add(mutate(basis, 19))
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    original = DeltaService.signature

    async def wrong(self: DeltaService, sha256: str, block_size: int | None = None
                    ) -> ServedFile:
        return await original(self, other, block_size)

    monkeypatch.setattr(DeltaService, "signature", wrong)
    out = tmp_path / "out.bin"
    async with DeltaClient() as client:
        with pytest.raises(IntegrityError, match="signature is of blob"):
            await client.fetch(server.url(sha), basis_path, out, path="blocks")
    assert not out.exists() and leftovers(tmp_path, "out.bin.") == []


def test_signature_format_checks(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(random_bytes(50_000, 20))
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    enc = encode_signature(compute_signature(path))
    assert decode_signature(enc, sha).target_size == 50_000
    newer = enc[:5] + struct.pack("<H", 2) + enc[7:]
    with pytest.raises(SignatureError, match="version 2"):
        decode_signature(newer, sha)
    with pytest.raises(SignatureError, match="not an edgedepot signature"):
        decode_signature(b"X" + enc[1:], sha)
    with pytest.raises(SignatureError, match="is of blob"):
        decode_signature(enc, "1" * 64)
    with pytest.raises(SignatureError):
        decode_signature(enc[:-5], sha)
    with pytest.raises(SignatureError):
        decode_signature(enc[:20], sha)


def test_patch_container_checks(tmp_path: Path) -> None:
    basis = random_bytes(100_000, 21)
    target = mutate(basis, 22)
    (tmp_path / "b").write_bytes(basis)
    (tmp_path / "t").write_bytes(target)
    info = make_patch(tmp_path / "b", tmp_path / "t", tmp_path / "p")
    good = (tmp_path / "p").read_bytes()
    cases = {
        "flipped": good[:-40] + bytes([good[-40] ^ 1]) + good[-39:],
        "truncated": good[:-10],
        "trailing": good + b"x",
        "version": good[:5] + struct.pack("<H", 9) + good[7:],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PatchError):
            apply_patch(tmp_path / "b", tmp_path / name, tmp_path / f"out-{name}")
        assert not (tmp_path / f"out-{name}").exists(), name
    (tmp_path / "b2").write_bytes(random_bytes(100_000, 23))
    with pytest.raises(PatchError, match="basis"):
        apply_patch(tmp_path / "b2", tmp_path / "p", tmp_path / "out-b2",
                    expected_basis=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(PatchError):  # right size, wrong content: decodes to the wrong bytes
        apply_patch(tmp_path / "b2", tmp_path / "p", tmp_path / "out-b3")
    assert not (tmp_path / "out-b3").exists()
    apply_patch(tmp_path / "b", tmp_path / "p", tmp_path / "ok",
                expected_target=info.target_sha256)
    assert (tmp_path / "ok").read_bytes() == target


async def test_false_block_match_falls_back_to_whole(server: DeltaServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A block "found" in the basis whose bytes are not the target's (a false match) is caught
    by the rebuild's per-block check before anything is written; auto refetches whole."""
    import syncer.delta_client as dc
    from syncer.delta_match import MatchResult, match_basis

    basis = random_bytes(200_000, 24)
    target = mutate(basis, 25)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    sha = server.add(target)

    def false_match(sig: object, path: Path) -> MatchResult:
        real = match_basis(sig, path)  # type: ignore[arg-type]
        source = real.source.copy()
        found = int(np.flatnonzero(source >= 0)[0])
        source[found] += 1  # one byte off: the weak and strong hashes "matched" wrong bytes
        return MatchResult(source, real.basis_size)

    monkeypatch.setattr(dc, "match_basis", false_match)
    out = tmp_path / "out.bin"
    async with DeltaClient() as client:
        with pytest.raises(IntegrityError, match="rebuilt wrong"):
            await client.fetch(server.url(sha), basis_path, out, path="blocks")
        assert not out.exists() and leftovers(tmp_path, "out.bin.") == []
        result = await client.fetch(server.url(sha), basis_path, out, path="auto")
    assert result.method == "whole" and out.read_bytes() == target
    assert leftovers(tmp_path, "out.bin.") == []
