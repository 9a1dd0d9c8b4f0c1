"""The delta client against DeltaService + delta routes on loopback: paths, resume, faults."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from cache_node.delta_routes import add_delta_routes
from cache_node.delta_service import DeltaService
from cache_node.responses import error_middleware
from cache_node.store import BlobStore
from distro.errors import IntegrityError
from syncer.delta_client import DeltaClient, DeltaUnavailable


@dataclass
class DeltaServer:
    store: BlobStore
    service: DeltaService
    runner: web.AppRunner
    port: int
    files: dict[str, Path]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, sha: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/delta/v1/blobs/{sha}"

    def add(self, data: bytes) -> str:
        ref = self.store.put_bytes(data)
        return ref.digest

    def add_file(self, path: Path) -> str:
        """A file of the origin's own repository (served in place, not copied to the store)."""
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        self.files[sha] = path
        return sha


async def start_server(root: Path) -> DeltaServer:
    store = BlobStore(root / "store")
    store.open()
    files: dict[str, Path] = {}

    def locate(sha: str) -> Path | None:
        if sha in files:
            return files[sha]
        return store.blob_path(sha) if store.has(sha) else None

    service = DeltaService(store, locate, root / "work")
    app = web.Application(middlewares=[error_middleware()])
    add_delta_routes(app, lambda request: service)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    return DeltaServer(store, service, runner, port, files)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DeltaServer]:
    srv = await start_server(tmp_path)
    yield srv
    await srv.runner.cleanup()
    srv.store.close()


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def mutate(data: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for _ in range(5):
        o = int(rng.integers(0, max(1, len(out) - 100)))
        out[o:o + 100] = random_bytes(100, int(rng.integers(1 << 30)))
    o = int(rng.integers(0, len(out)))
    out[o:o] = random_bytes(3000, seed + 1)
    o = int(rng.integers(0, len(out)))
    del out[o:o + 2000]
    return bytes(out)


@pytest.fixture
def pair(tmp_path: Path) -> Callable[[bytes, bytes], tuple[Path, bytes]]:
    def make(basis: bytes, target: bytes) -> tuple[Path, bytes]:
        p = tmp_path / "basis.bin"
        p.write_bytes(basis)
        return p, target
    return make


@pytest.mark.parametrize("mode", ["auto", "patch", "blocks"])
async def test_paths_reproduce_target(server: DeltaServer, tmp_path: Path, mode: str) -> None:
    basis = random_bytes(300_000, 1) + bytes(100_000)
    target = mutate(basis, 2)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    server.add(basis)
    sha = server.add(target)
    out = tmp_path / "out.bin"
    async with DeltaClient() as client:
        result = await client.fetch(server.url(sha), basis_path, out, path=mode)  # type: ignore[arg-type]
    assert out.read_bytes() == target
    assert result.method == ("blocks" if mode == "blocks" else "patch")
    assert result.sha256 == sha
    assert result.bytes_received < len(target) // 5
    assert not list(tmp_path.glob("out.bin.delta-*"))


async def test_auto_falls_back_to_blocks_when_origin_lacks_basis(
        server: DeltaServer, tmp_path: Path) -> None:
    basis = random_bytes(200_000, 3)
    target = mutate(basis, 4)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)  # not on the server
    sha = server.add(target)
    async with DeltaClient() as client:
        with pytest.raises(DeltaUnavailable):
            await client.fetch(server.url(sha), basis_path, tmp_path / "p.bin", path="patch")
        result = await client.fetch(server.url(sha), basis_path, tmp_path / "o.bin")
    assert result.method == "blocks"
    assert (tmp_path / "o.bin").read_bytes() == target
    assert not (tmp_path / "p.bin").exists()


async def test_whole_and_identical(server: DeltaServer, tmp_path: Path) -> None:
    target = random_bytes(50_000, 5)
    sha = server.add(target)
    async with DeltaClient() as client:
        whole = await client.fetch(server.url(sha), None, tmp_path / "w.bin")
        same = tmp_path / "same.bin"
        same.write_bytes(target)
        ident = await client.fetch(server.url(sha), same, tmp_path / "i.bin")
    assert whole.method == "whole" and (tmp_path / "w.bin").read_bytes() == target
    assert ident.method == "identical" and ident.bytes_received == 0
    assert (tmp_path / "i.bin").read_bytes() == target


async def test_origin_repository_file_and_block_size(server: DeltaServer, tmp_path: Path) -> None:
    repo_file = tmp_path / "repo-file.bin"
    target = bytes(64 * 1024) + random_bytes(10_000, 6)
    repo_file.write_bytes(target)
    sha = server.add_file(repo_file)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(bytes(80 * 1024))
    async with DeltaClient() as client:
        result = await client.fetch(server.url(sha), basis_path, tmp_path / "o.bin",
                                    path="blocks", block_size=1024)
    assert (tmp_path / "o.bin").read_bytes() == target
    assert result.reused_bytes >= 64 * 1024


async def test_signature_and_patch_computed_once(server: DeltaServer, tmp_path: Path) -> None:
    basis = random_bytes(100_000, 7)
    target = mutate(basis, 8)
    bsha = server.add(basis)
    tsha = server.add(target)
    sigs = await asyncio.gather(*(server.service.signature(tsha) for _ in range(5)))
    patches = await asyncio.gather(*(server.service.patch(tsha, bsha) for _ in range(5)))
    assert len({s.sha256 for s in sigs}) == 1 and len({p.sha256 for p in patches}) == 1
    await server.service.signature(tsha)
    assert server.service.computed_signatures == 1
    assert server.service.computed_patches == 1


async def test_unknown_blobs_are_404_json(server: DeltaServer) -> None:
    import aiohttp

    known = server.add(b"hello world")
    missing = "0" * 64
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{server.base}/delta/v1/blobs/{known}/patch",
                         params={"basis": missing}) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "unknown_blob"
        async with s.get(f"{server.base}/delta/v1/blobs/{missing}/signature") as r:
            assert r.status == 404
        async with s.get(f"{server.base}/delta/v1/blobs/{known}",
                         headers={"Range": "bytes=6-"}) as r:
            assert r.status == 206 and await r.read() == b"world"
            assert r.headers["Repr-Digest"].startswith("sha-256=:")
        async with s.post(f"{server.base}/delta/v1/blobs/{known}/ranges", data=b"junk") as r:
            assert r.status == 400


async def test_cancelled_caller_does_not_cancel_the_computation(server: DeltaServer) -> None:
    tsha = server.add(random_bytes(2_000_000, 30))
    first = asyncio.ensure_future(server.service.signature(tsha))
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(server.service.signature(tsha))
    await asyncio.sleep(0)
    first.cancel()
    served = await second
    assert served.size > 0
    assert server.service.computed_signatures == 1
    assert server.store.lookup("delta-signature", f"{tsha}/auto") is not None


async def test_a_located_file_that_does_not_verify_is_not_served(
        server: DeltaServer, tmp_path: Path) -> None:
    repo_file = tmp_path / "repo.bin"
    repo_file.write_bytes(b"original content" * 1000)
    sha = server.add_file(repo_file)
    repo_file.write_bytes(b"changed behind our back" * 1000)
    async with DeltaClient() as client:  # whole file: the client's own check catches it
        with pytest.raises(IntegrityError, match="hashed to"):
            await client.fetch(server.url(sha), tmp_path / "none", tmp_path / "o.bin")
    basis = tmp_path / "basis.bin"
    basis.write_bytes(b"original content" * 900)
    async with DeltaClient() as client:
        with pytest.raises(DeltaUnavailable, match="404"):
            await client.fetch(server.url(sha), basis, tmp_path / "o.bin", path="blocks")
    assert not (tmp_path / "o.bin").exists()
