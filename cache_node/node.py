"""A running node: the store, the upstream clients and the repository cores, wired from config.

One program runs as origin (repositories from local directories or operator-given URLs) or as
cache (every repository mirrored from one upstream node, discovered by name on first request).

`node.config` is the configuration in effect, replaced as a whole (one attribute assignment)
when a reload is applied by `reconfigure`: code that reads `node.config` per request sees
either the old or the new configuration, never a mix. Parts that must act on a reload (reopen
a file, drop a cache) add a callback to `node.reload_listeners`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from cache_node.answers import Answer, NotFound
from cache_node.apt_local import LocalAptRepo
from cache_node.apt_remote import RemoteAptRepo
from cache_node.config import NodeConfig, RepoSource, client_settings, delta_client_settings
from cache_node.delta_service import DeltaService
from cache_node.fetch import FetchCoordinator
from cache_node.glance_core import GlanceService, make_glance_service
from cache_node.hot_blobs import HotBlobs
from cache_node.hot_path import HotAnswers
from cache_node.metrics import Metrics
from cache_node.plans import PlanRunner
from cache_node.pypi_local import LocalPypiIndex
from cache_node.pypi_remote import RemotePypiIndex
from cache_node.repository import Repository, RepoSummary
from cache_node.store import BlobStore
from distro.debian_repo import SigningKey
from distro.wire import PlanArtifact, RefreshReport
from syncer.http_client import HttpClient

log = logging.getLogger(__name__)

PUBLISH_EVERY = 0.3  # seconds between a worker's metric publications
# Called with (old, new) after a reload took effect; may be a coroutine function.
ReloadListener = Callable[[NodeConfig, NodeConfig], Awaitable[None] | None]


class Node:
    """One process's node. With `--workers N` the node is N of these over one store:
    `worker` is this one's index (None: the only process)."""

    def __init__(self, config: NodeConfig, worker: int | None = None,
                 replacement: bool = False) -> None:
        """`replacement`: a worker started in place of one that died (the node was running)."""
        self.config = config
        self.worker = worker
        self.replacement = replacement
        self.reload_listeners: list[ReloadListener] = []
        self._clients: list[HttpClient] = []
        self.metrics = Metrics()
        self.store = BlobStore(config.store_dir / "store", config.quota_bytes)
        self.fetches = FetchCoordinator(self.store, self.metrics)
        self.repos: dict[tuple[str, str], Repository] = {}  # (kind, name) -> repository
        self.started_at = time.time()
        self._exit = AsyncExitStack()
        self._lock = asyncio.Lock()
        self.plans: PlanRunner | None = None
        self.glance: GlanceService | None = None
        self.hot_blobs = HotBlobs()
        self.hot_answers = HotAnswers()  # answers the plain listener repeats (hot_path)
        self.delta = DeltaService(self.store, self.locate_blob, config.store_dir / "delta-work",
                                  self.metrics)
        self._housekeeping: asyncio.Task[None] | None = None

    @property
    def signing_key(self) -> SigningKey | None:
        s = self.config.signing
        if s.gnupg_home is None or not s.key_id:
            return None
        return SigningKey(s.gnupg_home, s.key_id)

    async def start(self) -> None:
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        self.store.open(clean_partials=not self.replacement)
        self.metrics.add_refresher(self._refresh_gauges)
        if self.worker is not None:
            self.metrics.share(self.config.store_dir / "metrics", self.worker)
            self.metrics.publish(paths=True)
            # Another worker answering /metrics asks this one to publish at once.
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGUSR1, lambda: self.metrics.publish(paths=True))
        for repo in self.config.apt:
            self.repos[("apt", repo.name)] = await self._make_apt(repo)
        for repo in self.config.pypi:
            self.repos[("pypi", repo.name)] = await self._make_pypi(repo)
        if self.config.role == "cache":
            await self._restore_cache_repos()
        # One worker prepares patches ahead (the others would only compute them again).
        prepare = self.delta.prepare if self.worker in (None, 0) else None
        self.glance = await make_glance_service(self.config, self.store, self.fetches,
                                                self.metrics, self._exit, self._client,
                                                prepare)
        self.plans = PlanRunner(self.store, self.resolve_artifact)
        self.plans.resume_all()
        self._housekeeping = asyncio.create_task(self._housekeep())

    async def _housekeep(self) -> None:
        """Batched LRU times to SQLite; with workers, this worker's counters for the others
        (counters often, the per-path counts now and then)."""
        ticks = 0
        while True:
            await asyncio.sleep(PUBLISH_EVERY if self.worker is not None else 10)
            ticks += 1
            if self.worker is not None:
                self.metrics.publish(paths=ticks % 10 == 0)
            if self.worker is None or ticks % 30 == 0:
                self.store.flush_access()

    async def stop(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        if self.worker is not None:
            self.metrics.publish(paths=True)
        if self.plans is not None:
            await self.plans.close()
        await self.fetches.close()
        await self.delta.close()
        await self._exit.aclose()
        self.store.close()

    def _refresh_gauges(self) -> None:
        stats = self.store.stats()
        self.metrics.store_bytes.set(stats.total_bytes)
        self.metrics.store_blobs.set(stats.blob_count)
        self.metrics.inflight.set(self.fetches.inflight_count)

    async def _client(self, namespace: str) -> HttpClient:
        """An upstream client with the node's settings; reconfigured on every reload."""
        client = HttpClient(
            namespace, client_settings(self.config),
            on_request=lambda: self.metrics.upstream_requests.inc(namespace),
            on_bytes=lambda n: self.metrics.upstream_bytes.inc(namespace, n))
        self._clients.append(client)
        return await self._exit.enter_async_context(client)

    async def reconfigure(self, config: NodeConfig) -> None:
        """Apply a reloaded configuration (restart-only settings already kept at their running
        values by `config.plan_reload`): upstream clients get new sessions (timeouts, trust,
        client certificate), repositories their new upstream URLs and TTLs, the store its
        quota; then the reload listeners run. What is stored stays."""
        old, self.config = self.config, config
        settings = client_settings(config)
        for client in self._clients:
            client.reconfigure(settings)
        for repo in self.all_repos():
            repo.reconfigure(config)
        self.store.quota_bytes = config.quota_bytes
        if config.quota_bytes is not None and (old.quota_bytes is None
                                               or config.quota_bytes < old.quota_bytes):
            evicted = self.store.evict_to_quota()
            if evicted:
                log.info("quota lowered to %d bytes: evicted %d blobs", config.quota_bytes,
                         evicted)
        for listener in list(self.reload_listeners):
            try:
                result = listener(old, config)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a reload listener failed")

    async def _make_apt(self, repo: RepoSource) -> Repository:
        if repo.is_url:
            # Only an edgedepot upstream (the cache role's origin or parent) has delta endpoints.
            remote = RemoteAptRepo(repo.name, repo.source, self.store, self.fetches,
                                   await self._client(f"apt/{repo.name}"), self.metrics,
                                   self.config.index_ttl, self.config.delta_url,
                                   self.config.store_dir / "delta-work" / f"apt-{repo.name}",
                                   delta_client_settings(self.config))
            remote.load_persisted()
            return remote
        local = LocalAptRepo(repo, self.config.store_dir / "built", self.signing_key)
        await asyncio.to_thread(local.prepare)
        return local

    async def _make_pypi(self, repo: RepoSource) -> Repository:
        if repo.is_url:
            remote = RemotePypiIndex(repo.name, repo.source, self.store, self.fetches,
                                     await self._client(f"pypi/{repo.name}"), self.metrics,
                                     self.config.index_ttl)
            remote.load_persisted()
            return remote
        local = LocalPypiIndex(repo)
        await asyncio.to_thread(local.prepare)
        return local

    async def _restore_cache_repos(self) -> None:
        """A restarted cache knows the repositories it served before, for stale serving."""
        for name in RemoteAptRepo.persisted_names(self.store):
            await self.repo("apt", name)
        for name in RemotePypiIndex.persisted_names(self.store):
            await self.repo("pypi", name)

    async def repo(self, kind: str, name: str) -> Repository:
        """The repository a request names; a cache mirrors any name its upstream serves."""
        if kind == "glance":
            if self.glance is None:
                raise NotFound("this node serves no images")
            return self.glance
        found = self.repos.get((kind, name))
        if found is not None:
            return found
        source = self.config.repo_source(kind, name)
        if kind not in ("apt", "pypi") or source is None:
            raise NotFound(f"no {kind} repository named {name!r}")
        async with self._lock:
            if (kind, name) not in self.repos:
                make = self._make_apt if kind == "apt" else self._make_pypi
                self.repos[(kind, name)] = await make(source)
        return self.repos[(kind, name)]

    def all_repos(self) -> list[Repository]:
        repos = [self.repos[key] for key in sorted(self.repos)]
        return repos + ([self.glance] if self.glance is not None else [])

    def locate_blob(self, digest: str) -> Path | None:
        """A verified file with this sha256 that the node can serve: a store blob or a file of
        the origin's own repositories (for the delta endpoints)."""
        if self.store.has(digest):
            return self.store.blob_path(digest)
        for repo in self.all_repos():
            path = repo.locate(digest)
            if path is not None:
                return path
        return None

    async def refresh_all(self) -> list[RefreshReport]:
        """Revalidate every index this node mirrors now; what moved per index."""
        reports: list[RefreshReport] = []
        for repo in self.all_repos():
            reports.extend(await repo.refresh())
        return reports

    async def resolve_artifact(self, artifact: PlanArtifact) -> Answer:
        """Answer a plan artifact exactly as the matching client request would be answered.
        (Plans pre-warm images anonymous callers may see: public and community.)"""
        path = f"files/{artifact.path}" if artifact.kind == "pypi" else artifact.path
        return await (await self.repo(artifact.kind, artifact.repo)).answer(path)

    def summaries(self) -> list[RepoSummary]:
        return [repo.summary() for repo in self.all_repos()]
