"""Cold-cache load generator: N apt-like clients each fetch the whole repository.

Each client has its own ``aiohttp.ClientSession`` with one connection (like apt: one keep-alive
connection per host, files in sequence) and fetches the fetch list in order, hashing every body
and checking it against the size and sha256 the index promises. Clients are spread over several
worker processes (forked) so that the load generator is not limited to one core; each worker
reports its CPU time so a saturated load generator is visible in the results.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import resource
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier

import aiohttp

from benchmarks.dataset import RepoFile

MAX_SAMPLES = 8


@dataclass
class _Tally:
    requests: int = 0
    ok: int = 0
    bytes_received: int = 0
    failures: int = 0
    samples: list[str] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    def fail(self, kind: str, message: str, count: int = 1) -> None:
        self.failures += count
        self.kinds[kind] = self.kinds.get(kind, 0) + count
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(message)


def merge_kinds(parts: list[tuple[tuple[str, int], ...]]) -> tuple[tuple[str, int], ...]:
    merged: dict[str, int] = {}
    for part in parts:
        for kind, count in part:
            merged[kind] = merged.get(kind, 0) + count
    return tuple(sorted(merged.items()))


@dataclass(frozen=True)
class WorkerReport:
    clients: int
    start: float  # time.monotonic() (system-wide clock, comparable across processes)
    end: float
    cpu_s: float
    requests: int
    ok: int
    bytes_received: int
    failures: int
    samples: tuple[str, ...]
    failure_kinds: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ColdRun:
    """One cold fetch by ``concurrency`` clients, seen from the clients."""

    concurrency: int
    wall_s: float
    requests: int
    ok: int
    failures: int
    bytes_received: int
    failure_samples: tuple[str, ...]
    failure_kinds: tuple[tuple[str, int], ...]  # (kind, count), e.g. ("truncated", 3)
    loadgen_procs: int
    loadgen_cpu_s: float
    loadgen_max_util: float  # highest CPU time / wall time of one load-generator process
    machine_busy: float  # fraction of all CPUs busy (anyone's work) during the run


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def machine_busy_since(before: tuple[int, int]) -> float:
    busy, total = _cpu_times()
    return (busy - before[0]) / max(1, total - before[1])


async def _fetch_one(
    session: aiohttp.ClientSession, url: str, expected: RepoFile, tally: _Tally
) -> None:
    tally.requests += 1
    try:
        async with session.get(url) as resp:
            digest = hashlib.sha256()
            received = 0
            async for chunk in resp.content.iter_any():
                digest.update(chunk)
                received += len(chunk)
            tally.bytes_received += received
            if resp.status != 200:
                tally.fail(f"http {resp.status}", f"HTTP {resp.status} for {url} ({received} bytes)")
            elif received != expected.size:
                tally.fail("wrong size", f"wrong size {url}: {received} of {expected.size} bytes")
            elif digest.hexdigest() != expected.sha256:
                tally.fail("sha256 mismatch", f"sha256 mismatch for {url} ({received} bytes)")
            else:
                tally.ok += 1
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        kind = "truncated" if isinstance(exc, aiohttp.ClientPayloadError) else type(exc).__name__
        tally.fail(kind, f"{type(exc).__name__} for {url}: {exc}")


async def _client(
    session: aiohttp.ClientSession,
    base_url: str,
    files: tuple[RepoFile, ...],
    tally: _Tally,
    progress: list[int],
    slot: int,
) -> None:
    for item in files:
        await _fetch_one(session, base_url + item.path, item, tally)
        progress[slot] += 1


async def _run_clients(
    base_url: str,
    files: tuple[RepoFile, ...],
    n_clients: int,
    barrier: Barrier,
    timeout_s: float,
    read_timeout_s: float,
) -> WorkerReport:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout_s)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), timeout=timeout, auto_decompress=False
        )
        for _ in range(n_clients)
    ]
    tally = _Tally()
    progress = [0] * n_clients
    try:
        barrier.wait()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.monotonic()
        tasks = [
            asyncio.create_task(_client(s, base_url, files, tally, progress, i))
            for i, s in enumerate(sessions)
        ]
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            for slot, done in enumerate(progress):
                missing = len(files) - done
                if missing > 0:
                    tally.fail(
                        "run timeout",
                        f"client {slot}: run timeout after {timeout_s:.0f}s, stuck at "
                        f"{files[done].path} ({missing} files not fetched)",
                        missing,
                    )
        end = time.monotonic()
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for s in sessions:
            await s.close()
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return WorkerReport(
        n_clients, start, end, cpu, tally.requests, tally.ok, tally.bytes_received,
        tally.failures, tuple(tally.samples), tuple(sorted(tally.kinds.items())),
    )


def _worker(
    base_url: str,
    files: tuple[RepoFile, ...],
    n_clients: int,
    barrier: Barrier,
    queue: mp.Queue[WorkerReport],
    timeout_s: float,
    read_timeout_s: float,
) -> None:
    report = asyncio.run(
        _run_clients(base_url, files, n_clients, barrier, timeout_s, read_timeout_s)
    )
    queue.put(report)


def run_cold(
    base_url: str,
    files: tuple[RepoFile, ...],
    concurrency: int,
    procs: int = 2,
    timeout_s: float = 900.0,
    read_timeout_s: float = 120.0,
) -> ColdRun:
    """``concurrency`` clients fetch ``files`` from ``base_url`` at the same moment."""
    procs = max(1, min(procs, concurrency))
    shares = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(procs)
    queue: mp.Queue[WorkerReport] = ctx.Queue()
    workers = [
        ctx.Process(
            target=_worker,
            args=(base_url, files, share, barrier, queue, timeout_s, read_timeout_s),
            daemon=True,
        )
        for share in shares
    ]
    cpu_before = _cpu_times()
    for w in workers:
        w.start()
    reports: list[WorkerReport] = []
    try:
        for _ in workers:
            reports.append(queue.get(timeout=timeout_s + 120))
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
                w.join()
    start = min(r.start for r in reports)
    end = max(r.end for r in reports)
    samples: list[str] = []
    for r in reports:
        samples.extend(r.samples)
    return ColdRun(
        concurrency=concurrency,
        wall_s=end - start,
        requests=sum(r.requests for r in reports),
        ok=sum(r.ok for r in reports),
        failures=sum(r.failures for r in reports),
        bytes_received=sum(r.bytes_received for r in reports),
        failure_samples=tuple(samples[:MAX_SAMPLES]),
        failure_kinds=merge_kinds([r.failure_kinds for r in reports]),
        loadgen_procs=procs,
        loadgen_cpu_s=sum(r.cpu_s for r in reports),
        loadgen_max_util=max(r.cpu_s / max(r.end - r.start, 1e-9) for r in reports),
        machine_busy=machine_busy_since(cpu_before),
    )
