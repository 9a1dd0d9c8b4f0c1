"""Prefetch plans: an ordered list of artifacts a node pulls from its upstream, in order.

A plan is pushed by `distro-sync push` (or a parent node) and kept in the node's SQLite
database with per-artifact progress, so a restarted node resumes where it stopped. Artifacts are
fetched through the node's own repository cores, so every byte is verified exactly as a client
request would verify it and a concurrent client miss shares the same upstream fetch. Artifacts
of an active plan are pinned against eviction; deleting the plan unpins them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from cache_node.answers import Answer, BlobAnswer, BytesAnswer, ServiceError, StreamAnswer
from cache_node.fetch import Fetch, FetchFailed
from cache_node.rate_limit import PLAN_LIMITER, TokenBucket
from cache_node.store import BlobStore
from distro.wire import ItemStatus, PlanArtifact, PlanSpec, PlanStatus
from syncer.http_client import UpstreamError

log = logging.getLogger(__name__)

ItemState = Literal["pending", "fetching", "done", "failed"]
MAX_ATTEMPTS = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plans (
    plan_id TEXT PRIMARY KEY, created REAL NOT NULL, concurrency INTEGER NOT NULL,
    bandwidth INTEGER, state TEXT NOT NULL, started REAL, finished REAL
);
CREATE TABLE IF NOT EXISTS plan_items (
    plan_id TEXT NOT NULL, idx INTEGER NOT NULL, kind TEXT NOT NULL, repo TEXT NOT NULL,
    path TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, done_at REAL, pinned INTEGER DEFAULT 0,
    PRIMARY KEY (plan_id, idx)
);
"""
# Bytes already downloaded of items still fetching, written by the executing worker so any
# worker answering a status request can report byte-level progress.
_PROGRESS_COLUMN = "ALTER TABLE plan_items ADD COLUMN progress INTEGER NOT NULL DEFAULT 0"
SUPERVISE_EVERY = 0.5


Resolver = Callable[[PlanArtifact], Awaitable[Answer]]


class PlanRunner:
    """Runs every active plan of one node; state lives in the store's SQLite database.

    With several worker processes, any of them accepts plans and answers their status; one
    of them executes them: the one holding the plans lock, which another worker takes over
    (resuming from the database) when that one dies."""

    def __init__(self, store: BlobStore, resolve: Resolver) -> None:
        self.store = store
        self.resolve = resolve
        self.db: sqlite3.Connection = store.db
        self.db.executescript(_SCHEMA)
        columns = {str(r[1]) for r in self.db.execute("PRAGMA table_info(plan_items)")}
        if "progress" not in columns:
            with contextlib.suppress(sqlite3.OperationalError):  # added by another worker
                self.db.execute(_PROGRESS_COLUMN)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fetching: dict[tuple[str, int], Fetch] = {}  # items downloading now
        self._executor_lock = store.lock("plans")
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def executing(self) -> bool:
        """Whether this worker process is the node's plan executor."""
        return self._executor_lock.held

    def resume_all(self) -> None:
        """Become the executor if no other worker is, restart the plans that were active when
        the node stopped, and keep watching (take over, pick up plans other workers took)."""
        self._try_to_execute()
        self._supervisor = asyncio.create_task(self._supervise(), name="plan supervisor")

    def _try_to_execute(self) -> None:
        if self.executing or not self._executor_lock.try_acquire():
            return
        self.db.execute("UPDATE plan_items SET state='pending', progress=0 "
                        "WHERE state='fetching'")
        self._sync_tasks()

    def _sync_tasks(self) -> None:
        """Run exactly the plans the database says are active."""
        active = {str(r[0]) for r in self.db.execute("SELECT plan_id FROM plans WHERE "
                                                      "state='active'")}
        for plan_id in sorted(active):
            self._start(plan_id)
        for plan_id, task in list(self._tasks.items()):
            if plan_id not in active and not task.done():
                task.cancel()  # deleted through another worker

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            try:
                self._try_to_execute()
                if self.executing:
                    self._sync_tasks()
                    self.db.executemany(
                        "UPDATE plan_items SET progress=? WHERE plan_id=? AND idx=?",
                        [(fetch.written, pid, idx)
                         for (pid, idx), fetch in list(self._fetching.items())])
            except sqlite3.Error as exc:
                log.warning("plan supervisor: %s", exc)

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._executor_lock.release()

    def submit(self, spec: PlanSpec) -> PlanStatus:
        """Accept a plan (idempotent: the same plan_id again only resumes what is missing)."""
        row = self.db.execute("SELECT plan_id FROM plans WHERE plan_id=?",
                              (spec.plan_id,)).fetchone()
        if row is None:
            self.db.execute("INSERT INTO plans(plan_id, created, concurrency, bandwidth, state) "
                            "VALUES (?,?,?,?, 'active')",
                            (spec.plan_id, time.time(), spec.concurrency, spec.bandwidth))
            self.db.executemany(
                "INSERT INTO plan_items(plan_id, idx, kind, repo, path, sha256, size, state) "
                "VALUES (?,?,?,?,?,?,?, 'pending')",
                [(spec.plan_id, i, a.kind, a.repo, a.path, a.sha256, a.size)
                 for i, a in enumerate(spec.artifacts)])
        else:
            self.db.execute("UPDATE plans SET state='active', concurrency=?, bandwidth=?, "
                            "finished=NULL WHERE plan_id=?",
                            (spec.concurrency, spec.bandwidth, spec.plan_id))
            self.db.execute("UPDATE plan_items SET state='pending', attempts=0, error=NULL "
                            "WHERE plan_id=? AND state='failed'", (spec.plan_id,))
        self._start(spec.plan_id)
        status = self.status(spec.plan_id)
        assert status is not None
        return status

    def delete(self, plan_id: str) -> bool:
        task = self._tasks.pop(plan_id, None)
        if task is not None:
            task.cancel()
        for (sha256,) in self.db.execute(
                "SELECT sha256 FROM plan_items WHERE plan_id=? AND pinned=1", (plan_id,)).fetchall():
            self.store.unpin(str(sha256))
        self.db.execute("DELETE FROM plan_items WHERE plan_id=?", (plan_id,))
        cur = self.db.execute("DELETE FROM plans WHERE plan_id=?", (plan_id,))
        return cur.rowcount > 0

    def plan_ids(self) -> list[str]:
        return [str(r[0]) for r in self.db.execute("SELECT plan_id FROM plans ORDER BY created")]

    def status(self, plan_id: str) -> PlanStatus | None:
        plan = self.db.execute("SELECT state, started, finished FROM plans WHERE plan_id=?",
                               (plan_id,)).fetchone()
        if plan is None:
            return None
        rows = self.db.execute(
            "SELECT idx, kind, repo, path, size, state, attempts, error, progress "
            "FROM plan_items WHERE plan_id=? ORDER BY idx", (plan_id,)).fetchall()
        items = [ItemStatus(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), str(r[5]),
                            int(r[6]), r[7]) for r in rows]
        done = [i for i in items if i.state == "done"]
        failed = tuple(i for i in items if i.state == "failed")
        bytes_total = sum(i.size for i in items)
        # Items still downloading count their bytes so far: live here, or as the executing
        # worker last wrote them.
        live = {idx: fetch.written for (pid, idx), fetch in self._fetching.items()
                if pid == plan_id}
        bytes_done = sum(i.size for i in done) + sum(
            live.get(int(r[0]), int(r[8] or 0)) for r in rows if str(r[5]) == "fetching")
        started, finished = plan[1], plan[2]
        elapsed = ((finished or time.time()) - started) if started else 0.0
        rate = bytes_done / elapsed if elapsed > 0 else 0.0
        left = bytes_total - bytes_done
        eta = left / rate if rate > 0 and str(plan[0]) == "active" else None
        return PlanStatus(plan_id, str(plan[0]), len(items), len(done), len(failed), bytes_total,
                          bytes_done, rate, eta, failed)

    # -- execution -------------------------------------------------------------------------
    def _start(self, plan_id: str) -> None:
        if not self.executing:
            return  # the executing worker picks it up from the database
        task = self._tasks.get(plan_id)
        if task is not None and not task.done():
            return
        self._tasks[plan_id] = asyncio.create_task(self._run(plan_id), name=f"plan {plan_id}")

    async def _run(self, plan_id: str) -> None:
        row = self.db.execute("SELECT concurrency, bandwidth FROM plans WHERE plan_id=?",
                              (plan_id,)).fetchone()
        concurrency, bandwidth = int(row[0]), row[1]
        self.db.execute("UPDATE plans SET started=COALESCE(started, ?) WHERE plan_id=?",
                        (time.time(), plan_id))
        pending = [
            (int(r[0]), PlanArtifact(r[1], r[2], r[3], r[4], int(r[5])))
            for r in self.db.execute(
                "SELECT idx, kind, repo, path, sha256, size FROM plan_items WHERE plan_id=? "
                "AND state != 'done' ORDER BY idx", (plan_id,)).fetchall()]
        queue: asyncio.Queue[tuple[int, PlanArtifact]] = asyncio.Queue()
        for entry in pending:
            queue.put_nowait(entry)
        bucket = TokenBucket(bandwidth) if bandwidth else None

        async def worker() -> None:
            PLAN_LIMITER.set(bucket)  # every fetch this worker starts is capped by the plan
            while not queue.empty():
                idx, artifact = queue.get_nowait()
                await self._fetch_item(plan_id, idx, artifact)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, max(1, len(pending))))))
        failed = self.db.execute("SELECT COUNT(*) FROM plan_items WHERE plan_id=? AND "
                                 "state='failed'", (plan_id,)).fetchone()[0]
        state = "failed" if failed else "complete"
        self.db.execute("UPDATE plans SET state=?, finished=? WHERE plan_id=?",
                        (state, time.time(), plan_id))
        log.info("plan %s %s (%d failed)", plan_id, state, failed)

    def _mark(self, plan_id: str, idx: int, state: ItemState, error: str | None = None) -> None:
        self.db.execute("UPDATE plan_items SET state=?, error=?, attempts=attempts+?, done_at=? "
                        "WHERE plan_id=? AND idx=?",
                        (state, error, 1 if state in ("done", "failed") else 0,
                         time.time() if state == "done" else None, plan_id, idx))

    async def _fetch_item(self, plan_id: str, idx: int, artifact: PlanArtifact) -> None:
        self._mark(plan_id, idx, "fetching")
        error = "unknown"
        for attempt in range(MAX_ATTEMPTS):
            if attempt:
                await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt))
            try:
                digest = await self._materialize(plan_id, idx, artifact)
            except (ServiceError, FetchFailed, UpstreamError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                if getattr(exc, "status", getattr(exc, "http_status", 0)) == 404:
                    break  # not there upstream: retrying will not help
                continue
            if digest != artifact.sha256:
                error = f"got sha256 {digest}, the plan says {artifact.sha256}"
                continue
            pinned = self.db.execute("SELECT pinned FROM plan_items WHERE plan_id=? AND idx=?",
                                     (plan_id, idx)).fetchone()
            if pinned is not None and not pinned[0]:
                self.store.pin(digest)
                self.db.execute("UPDATE plan_items SET pinned=1 WHERE plan_id=? AND idx=?",
                                (plan_id, idx))
            self._mark(plan_id, idx, "done")
            return
        log.warning("plan %s: %s/%s failed: %s", plan_id, artifact.repo, artifact.path, error)
        self._mark(plan_id, idx, "failed", error)

    async def _materialize(self, plan_id: str, idx: int, artifact: PlanArtifact) -> str:
        # Stored already (another plan, a client, a previous run) answers as a hit.
        answer = await self.resolve(artifact)
        if isinstance(answer, StreamAnswer):
            self._fetching[(plan_id, idx)] = answer.fetch  # progress by bytes meanwhile
            try:
                ref = await answer.fetch.done
            finally:
                self._fetching.pop((plan_id, idx), None)
            return ref.digest
        if isinstance(answer, BlobAnswer) and answer.sha256:
            return answer.sha256
        if isinstance(answer, BytesAnswer):
            return answer.sha256
        raise ServiceError(f"unexpected answer for {artifact.path}", 500)
