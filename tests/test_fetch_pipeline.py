"""The one fetch pipeline: every digest a plan names is checked in the writing pass, an
edgedepot upstream's vouched digests stand for themselves, and followers stream the growing
file with the last byte held back until the whole download verified."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from cache_node.fetch import FetchCoordinator, FetchFailed, FetchPlan, stream_fetch
from cache_node.metrics import Metrics
from cache_node.store import BlobStore
from distro.digests import format_repr_digests
from syncer.http_client import ClientSettings, HttpClient

DATA = os.urandom(3 << 20) + b"tail"
SHA256 = hashlib.sha256(DATA).hexdigest()
MD5 = hashlib.md5(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()


@dataclass
class Upstream:
    """Serves DATA at /blob with whatever `Repr-Digest` the test sets; counts requests."""

    url: str = ""
    repr_digest: str | None = None
    requests: int = 0
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    slow: bool = False


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    state = Upstream()

    async def blob(request: web.Request) -> web.StreamResponse:
        state.requests += 1
        resp = web.StreamResponse()
        resp.content_length = len(DATA)
        if state.repr_digest:
            resp.headers["Repr-Digest"] = state.repr_digest
        await resp.prepare(request)
        half = len(DATA) // 2
        await resp.write(DATA[:half])
        if state.slow:
            await state.gate.wait()
        await resp.write(DATA[half:])
        return resp

    app = web.Application()
    app.router.add_get("/blob", blob)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/blob"
    yield state
    await runner.cleanup()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[FetchCoordinator, HttpClient]]:
    store = BlobStore(tmp_path / "store")
    store.open()
    coordinator = FetchCoordinator(store, Metrics())
    async with HttpClient("test", ClientSettings(retries=0)) as client:
        yield coordinator, client
    await coordinator.close()
    store.close()


def plan(url: str, others: tuple[tuple[str, str], ...], *, vouched: bool,
         sha256: str | None = None) -> FetchPlan:
    return FetchPlan(key="k", url=url, namespace="t", expected_sha256=sha256,
                     expected_size=len(DATA), require_digest=False, expected_others=others,
                     binds=(("t", "name"),), accept_vouched=vouched)


async def test_every_named_digest_is_checked_in_one_pass(
        upstream: Upstream, node: tuple[FetchCoordinator, HttpClient]) -> None:
    coordinator, client = node
    fetch = coordinator.start(plan(upstream.url, (("md5", MD5), ("sha512", SHA512)),
                                   vouched=False), client)
    ref = await fetch.done
    assert ref.digest == SHA256 and coordinator.store.lookup("t", "name") == ref
    assert coordinator.store.read_bytes(SHA256) == DATA


@pytest.mark.parametrize("wrong", ["md5", "sha512"])
async def test_a_wrong_digest_is_never_stored(
        upstream: Upstream, node: tuple[FetchCoordinator, HttpClient], wrong: str) -> None:
    coordinator, client = node
    others = (("md5", MD5 if wrong != "md5" else "0" * 32),
              ("sha512", SHA512 if wrong != "sha512" else "0" * 128))
    fetch = coordinator.start(plan(upstream.url, others, vouched=False), client)
    with pytest.raises(FetchFailed, match=f"{wrong} mismatch"):
        await fetch.done
    assert not coordinator.store.has(SHA256)
    assert not list(coordinator.store.partial_dir.iterdir())
    assert coordinator.metrics.verify_failures.get("t") == 1


async def test_vouched_digests_stand_for_themselves(
        upstream: Upstream, node: tuple[FetchCoordinator, HttpClient]) -> None:
    """An edgedepot upstream vouches md5 and sha512 with its sha-256: this tier checks only
    the sha-256. Proof that md5 is not recomputed: the record's md5 is deliberately not the
    bytes' md5, yet the upstream vouches exactly the record's values and the fetch passes,
    while the same plan without `accept_vouched` fails on md5."""
    coordinator, client = node
    record_md5 = "1" * 32  # what the record (and the vouching tier) say
    upstream.repr_digest = format_repr_digests({"sha256": SHA256, "md5": record_md5,
                                                "sha512": SHA512})
    trusting = plan(upstream.url, (("md5", record_md5), ("sha512", SHA512)), vouched=True)
    ref = await coordinator.start(trusting, client).done
    assert ref.digest == SHA256
    coordinator.store.remove(SHA256)
    checking = plan(upstream.url, (("md5", record_md5), ("sha512", SHA512)), vouched=False)
    with pytest.raises(FetchFailed, match="md5 mismatch"):
        await coordinator.start(checking, client).done


async def test_a_vouch_that_contradicts_the_record_is_refused(
        upstream: Upstream, node: tuple[FetchCoordinator, HttpClient]) -> None:
    coordinator, client = node
    upstream.repr_digest = format_repr_digests({"sha256": SHA256, "md5": MD5, "sha512": "2" * 128})
    fetch = coordinator.start(plan(upstream.url, (("md5", MD5), ("sha512", SHA512)),
                                   vouched=True), client)
    with pytest.raises(FetchFailed, match="vouches sha512"):
        await fetch.done
    assert not coordinator.store.has(SHA256)


async def test_a_vouched_sha256_must_match_the_bytes(
        upstream: Upstream, node: tuple[FetchCoordinator, HttpClient]) -> None:
    coordinator, client = node
    lie = hashlib.sha256(b"something else").hexdigest()
    upstream.repr_digest = format_repr_digests({"sha256": lie, "md5": MD5, "sha512": SHA512})
    fetch = coordinator.start(plan(upstream.url, (("md5", MD5), ("sha512", SHA512)),
                                   vouched=True), client)
    with pytest.raises(FetchFailed, match="sha256 mismatch"):
        await fetch.done
    assert not coordinator.store.has(lie) and not coordinator.store.has(SHA256)


async def test_followers_share_one_fetch_and_wait_for_verification(
        upstream: Upstream, node: tuple[FetchCoordinator, HttpClient]) -> None:
    """Two clients of one key: one upstream request; both stream the growing file, with the
    last byte of their span held back until the download verified; a range follower too."""
    coordinator, client = node
    upstream.slow = True
    p = plan(upstream.url, (("md5", MD5),), vouched=False)
    first = coordinator.start(p, client)
    second = coordinator.start(p, client)
    assert first is second
    received: list[bytearray] = [bytearray(), bytearray()]

    async def follow(i: int, start: int, end: int | None) -> int:
        async def write(chunk: bytes) -> None:
            received[i].extend(chunk)
        return await stream_fetch(first, write, start, end)

    whole = asyncio.ensure_future(follow(0, 0, None))
    span = asyncio.ensure_future(follow(1, 1000, 2000))
    for _ in range(200):
        if len(received[0]) >= len(DATA) // 2 - 1:
            break
        await asyncio.sleep(0.01)
    assert len(received[0]) == len(DATA) // 2 - 1  # everything written but the last byte
    assert len(received[1]) == 999  # the range's last byte waits for verification too
    upstream.gate.set()
    assert await whole == len(DATA) and bytes(received[0]) == DATA
    assert await span == 2000 and bytes(received[1]) == DATA[1000:2000]
    assert upstream.requests == 1
    assert coordinator.metrics.coalesced.get("t") == 1
