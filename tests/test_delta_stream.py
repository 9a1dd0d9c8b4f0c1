"""Rebuilding while the delta downloads, resuming into a sink, and `auto` choosing by offer.

A `GatedProxy` forwards the first bytes of each response and holds the rest until the test
opens its gate: a client that streams must have written target bytes by then; one that waits
for the whole delta never would (the test would hang, and its guard timeout fails it).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import cache_node.delta_service as delta_service
import syncer.delta_patch as delta_patch
from syncer.delta_client import (
    DeltaClient,
    DeltaTransferError,
    Offer,
    WholeIsBetter,
    choose_path,
)
from tests.test_delta_e2e import DeltaServer, mutate, random_bytes, start_server
from tests.test_delta_faults import CutProxy

GUARD = 60  # seconds: a hang guard, not a timing assertion


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[DeltaServer]:
    srv = await start_server(tmp_path / "srv")
    yield srv
    await srv.service.close()
    await srv.runner.cleanup()
    srv.store.close()


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segmented patches on small files: many frames, each applied as it arrives."""
    monkeypatch.setattr(delta_patch, "SINGLE_LIMIT", 64 << 10)
    monkeypatch.setattr(delta_patch, "SEGMENT", 128 << 10)
    monkeypatch.setattr(delta_patch, "FIRST_SEGMENT", 32 << 10)


class MemorySink:
    """A sink that keeps what it is given and can hold it across calls (a node's partial)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.first_write = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, data: bytes | memoryview) -> None:
        self.data += data
        self.loop.call_soon_threadsafe(self.first_write.set)


class GatedProxy(CutProxy):
    """Forwards ``budget`` response bytes per connection, then waits for ``gate``."""

    def __init__(self, upstream_port: int, budget: int) -> None:
        super().__init__(upstream_port, budget)
        self.gate = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_w.write(data)
                await up_w.drain()

        async def downstream() -> None:
            sent = 0
            while data := await up_r.read(4096):
                if sent >= self.budget:
                    await self.gate.wait()
                writer.write(data)
                await writer.drain()
                sent += len(data)

        up = asyncio.ensure_future(upstream())
        try:
            await downstream()
        finally:
            up.cancel()
            for w in (writer, up_w):
                w.close()


def big_pair() -> tuple[bytes, bytes]:
    basis = random_bytes(1_500_000, 31)
    target = bytearray(basis)
    for at in range(50_000, len(target), 97_000):  # changes all along, so every segment counts
        target[at:at + 300] = random_bytes(300, at)
    target[700_000:700_000] = random_bytes(5000, 32)
    return basis, bytes(target)


@pytest.mark.parametrize("mode", ["patch", "blocks"])
async def test_target_bytes_reach_the_sink_before_the_delta_ends(
        server: DeltaServer, tmp_path: Path, small_segments: None, mode: str) -> None:
    basis, target = big_pair()
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    bsha = server.add(basis)
    sha = server.add(target)
    await server.service.signature(sha)
    patch = await server.service.patch(sha, bsha)
    # the gate holds all but the first part of the delta (patch, or ranges payload)
    budget = patch.size // 3 if mode == "patch" else 20_000
    proxy = GatedProxy(server.port, budget)
    await proxy.start()
    sink = MemorySink()
    try:
        async with DeltaClient() as client:
            task = asyncio.ensure_future(client.fetch_into(
                server.url(sha, proxy.port), basis_path, sink, tmp_path / "state",
                path=mode, basis_sha256=bsha))  # type: ignore[arg-type]
            await asyncio.wait_for(sink.first_write.wait(), GUARD)
            assert 0 < sink.size < len(target)
            assert not task.done()
            proxy.gate.set()
            result = await asyncio.wait_for(task, GUARD)
    finally:
        proxy.gate.set()
        await proxy.stop()
    assert bytes(sink.data) == target
    assert result.method == mode and result.sha256 == sha
    assert not list(tmp_path.glob("state.delta-*"))


@pytest.mark.parametrize("mode", ["patch", "blocks"])
async def test_an_interrupted_rebuild_resumes_where_the_sink_stands(
        server: DeltaServer, tmp_path: Path, small_segments: None, mode: str) -> None:
    basis, target = big_pair()
    target = target + random_bytes(400_000, 33)  # a payload worth cutting for blocks too
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    bsha = server.add(basis)
    sha = server.add(target)
    await server.service.signature(sha)
    patch = await server.service.patch(sha, bsha)
    async with DeltaClient() as client:
        full = await client.fetch_into(server.url(sha), basis_path, MemorySink(),
                                       tmp_path / "warm", path=mode,  # type: ignore[arg-type]
                                       basis_sha256=bsha)
    budget = patch.size // 2 if mode == "patch" else full.bytes_received // 2
    proxy = await CutProxy(server.port, budget).start()
    sink = MemorySink()
    try:
        async with DeltaClient() as client:
            with pytest.raises(DeltaTransferError, match="resume"):
                await client.fetch_into(server.url(sha, proxy.port), basis_path, sink,
                                        tmp_path / "state", path=mode,  # type: ignore[arg-type]
                                        basis_sha256=bsha)
    finally:
        await proxy.stop()
    kept = sink.size
    assert kept > 0 and bytes(sink.data) == target[:kept]  # only verified bytes were given
    assert (tmp_path / "state.delta-spool").stat().st_size > 0
    async with DeltaClient() as client:
        resumed = await client.fetch_into(server.url(sha), basis_path, sink,
                                          tmp_path / "state", path=mode,  # type: ignore[arg-type]
                                          basis_sha256=bsha)
    assert bytes(sink.data) == target
    assert resumed.resumed_bytes > 0
    assert resumed.bytes_received < full.bytes_received
    assert not list(tmp_path.glob("state.delta-*"))


def test_choose_path_by_expected_bytes() -> None:
    size = 100 << 20
    ready = Offer(size, "ready", patch_size=2 << 20)
    assert choose_path(ready, size, 0.5, 3.0) == "patch"
    huge_patch = Offer(size, "ready", patch_size=60 << 20)  # worse than the whole (50 MiB)
    assert choose_path(huge_patch, size, 0.5, 3.0) == "whole"
    soon = Offer(size, "computing", patch_eta=1.0)
    later = Offer(size, "computing", patch_eta=30.0)
    assert choose_path(soon, size, 0.5, 3.0) == "patch"
    assert choose_path(later, size, 0.5, 3.0) == "blocks"
    assert choose_path(Offer(size, "unavailable"), size, 0.5, 3.0) == "blocks"
    # a basis far smaller than the target cannot save more than the signature costs
    assert choose_path(Offer(size, "unavailable"), 1 << 20, 0.01, 3.0) == "whole"
    # a tiny blob: the signature alone would cost more than the compressed whole
    assert choose_path(Offer(300, "unavailable"), 300, 0.3, 3.0) == "whole"


async def test_offer_starts_the_patch_and_auto_follows_it(
        server: DeltaServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    basis = random_bytes(300_000, 41)
    target = mutate(basis, 42)
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(basis)
    bsha = server.add(basis)
    sha = server.add(target)
    other = hashlib.sha256(b"a basis this node does not have").hexdigest()
    assert server.service.offer(sha, other).patch == "unavailable"
    # The node estimates the patch far away (a slow rate): auto does not wait for it...
    monkeypatch.setattr(delta_service, "PATCH_RATE_SINGLE", 1.0)
    # (and the patch, which really takes milliseconds, is held until that fetch is done, so
    # a busy machine cannot finish it before the client asks)
    fetched = threading.Event()
    make_patch = delta_patch.make_patch

    def held_make_patch(*args: Any, **kwargs: Any) -> Any:
        fetched.wait(GUARD)
        return make_patch(*args, **kwargs)

    monkeypatch.setattr(delta_service, "make_patch", held_make_patch)
    first = server.service.offer(sha, bsha)
    assert first.patch == "computing" and first.patch_eta is not None
    async with DeltaClient(patch_wait=5.0) as client:
        blocks = await client.fetch(server.url(sha), basis_path, tmp_path / "a.bin")
    fetched.set()
    assert blocks.method == "blocks" and (tmp_path / "a.bin").read_bytes() == target
    # ...but the offer started it, and once it is ready the next client takes it.
    await asyncio.wait_for(server.service.patch(sha, bsha), GUARD)
    ready = server.service.offer(sha, bsha)
    assert ready.patch == "ready" and ready.patch_size is not None
    async with DeltaClient() as client:
        patched = await client.fetch(server.url(sha), basis_path, tmp_path / "b.bin")
    assert patched.method == "patch" and (tmp_path / "b.bin").read_bytes() == target
    assert patched.bytes_received < blocks.bytes_received
    assert server.service.computed_patches == 1


async def test_fetch_into_leaves_a_whole_fetch_to_the_caller(server: DeltaServer,
                                                            tmp_path: Path) -> None:
    basis_path = tmp_path / "basis.bin"
    basis_path.write_bytes(random_bytes(100, 51))
    sha = server.add(random_bytes(20_000, 52))  # the basis cannot hold what the target adds
    async with DeltaClient() as client:
        with pytest.raises(WholeIsBetter):
            await client.fetch_into(server.url(sha), basis_path, MemorySink(),
                                    tmp_path / "state")
        result = await client.fetch(server.url(sha), basis_path, tmp_path / "out.bin")
    assert result.method == "whole"
