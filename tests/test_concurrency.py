"""50 concurrent HTTP clients on a cold cache: one upstream request per artifact."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from distro.debian_repo import parse_packages, parse_release
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

CLIENTS = 50


async def _client(session: aiohttp.ClientSession, base: str, paths: list[str],
                  expected: dict[str, str], order: int) -> int:
    verified = 0
    rotated = paths[order % len(paths):] + paths[:order % len(paths)] if order % 2 else paths
    for path in rotated:
        async with session.get(base + path) as resp:
            assert resp.status == 200, (path, resp.status)
            body = await resp.read()
        assert hashlib.sha256(body).hexdigest() == expected[path], path
        verified += 1
    return verified


async def _run(cache: NodeProcess, origin: NodeProcess) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{origin.url}/apt/main/dists/stable/InRelease") as resp:
            release = parse_release(await resp.read(), "InRelease")
        async with session.get(f"{origin.url}/apt/main/dists/stable/main/binary-amd64/Packages") as r:
            pool = parse_packages(await r.read(), "Packages")
    expected = {f"dists/stable/{rel}": e.sha256 for rel, e in release.files.items()}
    expected.update({p.filename: p.sha256 for p in pool})
    paths = ["dists/stable/main/binary-amd64/Packages.xz"] + [p.filename for p in pool]
    before = origin.served()  # the test's own reads above
    base = f"{cache.url}/apt/main/"
    # Every client first asks for InRelease, as apt does, all at the same moment.
    sessions = [aiohttp.ClientSession() for _ in range(CLIENTS)]
    try:
        await asyncio.gather(*(s.get(base + "dists/stable/InRelease") for s in sessions))
        counts = await asyncio.gather(*(
            _client(s, base, paths, expected, i) for i, s in enumerate(sessions)))
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    assert counts == [len(paths)] * CLIENTS
    return before


def test_fifty_concurrent_clients_cold_cache(origin: NodeProcess, cache: NodeProcess) -> None:
    before = asyncio.run(_run(cache, origin))
    served = {p: n - before.get(p, 0) for p, n in origin.served().items()}
    artifacts = {p: n for p, n in served.items() if "/pool/" in p or "/by-hash/" in p}
    assert artifacts, served
    assert all(n == 1 for n in artifacts.values()), \
        {p: n for p, n in artifacts.items() if n != 1}
    assert served["/apt/main/dists/stable/InRelease"] == 1
    m = cache.metrics()
    assert m[("edgedepot_coalesced_total", "apt/main")] > 0
    assert m.get(("edgedepot_verify_failures_total", "apt/main"), 0) == 0
