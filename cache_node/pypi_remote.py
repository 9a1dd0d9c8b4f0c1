"""A PEP 503/691 index mirrored from an upstream simple-index URL.

Project pages are fetched from upstream (JSON preferred, HTML accepted), revalidated after the
TTL, kept in the store so a restarted node serves them while upstream is down (flagged stale),
and re-rendered with file links pointing at this node. A file is served only as listed on the
page: its bytes are verified against the page's sha256 (PEP 658 metadata against the page's
metadata hash) before they are kept.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

from cache_node.answers import (
    Answer,
    BlobAnswer,
    BytesAnswer,
    NotFound,
    RedirectAnswer,
    ServiceError,
    StreamAnswer,
    content_type_for,
)
from cache_node.config import NodeConfig
from cache_node.fetch import FetchCoordinator, FetchPlan
from cache_node.metrics import Metrics
from cache_node.pypi_local import PypiPaths, files_base, render_page
from cache_node.repository import RepoSummary
from cache_node.revalidation import freshness, mark_due, mark_failed
from cache_node.single_flight import Call, SingleFlight, run_once
from cache_node.store import BlobStore
from distro.debian_repo import MalformedIndexError
from distro.pypi_index import (
    JSON_CONTENT_TYPE,
    METADATA_SUFFIX,
    DistFile,
    IndexFormat,
    ProjectPage,
    normalize_project_name,
    parse_project_page,
    parse_root_page,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
)
from distro.wire import RefreshReport
from syncer.http_client import HttpClient, UpstreamError, UpstreamNotFound

log = logging.getLogger(__name__)

PAGE_PREFIX = "pypi-page:"

UPSTREAM_ACCEPT = (f"{JSON_CONTENT_TYPE}, application/vnd.pypi.simple.v1+html;q=0.2, "
                   "text/html;q=0.01")
ROOT_KEY = "\0root"


@dataclass
class _Cached:
    page: ProjectPage | None  # None for the root list
    projects: tuple[str, ...]
    validated_at: float
    failed_at: float | None = None


class RemotePypiIndex(PypiPaths):
    def __init__(self, name: str, simple_url: str, store: BlobStore, fetches: FetchCoordinator,
                 client: HttpClient, metrics: Metrics, index_ttl: float) -> None:
        self.name = name
        self.simple_url = simple_url if simple_url.endswith("/") else simple_url + "/"
        self.store = store
        self.fetches = fetches
        self.client = client
        self.metrics = metrics
        self.index_ttl = index_ttl
        self.namespace = f"pypi/{name}"
        self._ns_page = f"{PAGE_PREFIX}{name}"
        self._ns_file = f"pypi-file:{name}"
        self._pages: dict[str, _Cached] = {}
        self._forced: set[str] = set()
        self._refreshing: SingleFlight[Call[_Cached]] = SingleFlight()

    def unchanged_while(self, path: str) -> Callable[[], bool] | None:
        """A file (or its metadata) once stored is the verified bytes its name was bound to
        and never changes; pages depend on `Accept` and on revalidation, so never."""
        parts = path.split("/")
        if parts[0] == "files" and len(parts) == 3 and parts[1] and parts[2]:
            return _always
        return None

    def summary(self) -> RepoSummary:
        return RepoSummary("pypi", self.name, self.simple_url, ())

    def locate(self, sha256: str) -> Path | None:
        return None  # what it mirrors lives in the store

    def reconfigure(self, config: NodeConfig) -> None:
        """Follow the upstream to a new URL: stored files are served from the store, pages
        revalidate against the new upstream on their next request."""
        self.index_ttl = config.index_ttl
        source = config.repo_source("pypi", self.name)
        if source is None or not source.is_url:
            return
        simple_url = source.source if source.source.endswith("/") else source.source + "/"
        if simple_url == self.simple_url:
            return
        log.info("%s: upstream moves from %s to %s", self.namespace, self.simple_url, simple_url)
        self.simple_url = simple_url
        for key, cached in self._pages.items():
            mark_due(cached)
            self._forced.add(key)  # the new upstream is asked, whatever others stored

    @staticmethod
    def persisted_names(store: BlobStore) -> list[str]:
        """Names of the pip indexes whose pages a restarted cache kept."""
        return [ns.partition(":")[2] for ns in store.namespaces() if ns.startswith(PAGE_PREFIX)]

    def load_persisted(self) -> None:
        for project, digest in list(self.store.names(self._ns_page)):
            cached = self._load_page(project, digest)
            if cached is not None:
                self._pages[project] = cached

    def _load_page(self, project: str, digest: str,
                   validated_at: float = float("-inf")) -> _Cached | None:
        try:
            body = self.store.read_bytes(digest)
            if project == ROOT_KEY:
                names = tuple(parse_root_page(body, JSON_CONTENT_TYPE, page_url=self.simple_url,
                                              source="stored root page"))
                return _Cached(None, names, validated_at)
            page = parse_project_page(body, JSON_CONTENT_TYPE,
                                      page_url=f"{self.simple_url}{project}/",
                                      source=f"stored page {project}")
            return _Cached(page, (), validated_at)
        except (OSError, MalformedIndexError) as exc:
            log.error("%s: stored page %s unusable: %s", self.namespace, project, exc)
            return None

    def _shared_key(self, key: str) -> str:
        return f"pypi-page/{self.name}/{key}"

    def _recent_from_other_worker(self, key: str) -> _Cached | None:
        """The page another worker process of this node validated within the TTL."""
        doc = self.store.shared_get(self._shared_key(key))
        if doc is None or not isinstance(doc.get("validated_at"), (int, float)):
            return None
        age = time.time() - float(doc["validated_at"])
        digest = self.store.bound_digest(self._ns_page, key)
        if age >= self.index_ttl or digest != doc.get("digest") or digest is None:
            return None
        cached = self._load_page(key, digest, time.monotonic() - age)
        if cached is not None:
            self._pages[key] = cached
        return cached

    async def refresh(self) -> list[RefreshReport]:
        """Revalidate every cached project page now and report what moved."""
        reports = []
        for key, cached in sorted(self._pages.items()):
            before_page = cached.page
            before = self.metrics.upstream_bytes.get(self.namespace)
            mark_due(cached)
            self._forced.add(key)  # a forced refresh asks the upstream, whatever others did
            error = ""
            try:
                new, stale = await self._cached(key)
            except ServiceError as exc:
                new, stale, error = cached, True, str(exc)
            moved = self.metrics.upstream_bytes.get(self.namespace) - before
            name = "(project list)" if key == ROOT_KEY else key
            reports.append(RefreshReport("pypi", self.name, name, new.page != before_page,
                                         stale, moved, moved, error))
        return reports

    # -- pages -----------------------------------------------------------------------------
    async def _cached(self, key: str) -> tuple[_Cached, bool]:
        cached = self._pages.get(key)
        if cached is not None:
            state = freshness(cached, self.index_ttl)
            if state == "fresh":
                return cached, False
            if state == "backing-off":
                self.metrics.stale_serves.inc(self.namespace)
                return cached, True
        try:
            return await run_once(self._refreshing, key, lambda: self._refresh(key)), False
        except UpstreamNotFound:
            raise NotFound(f"{self.namespace}: upstream has no project {key!r}") from None
        except (UpstreamError, MalformedIndexError) as exc:
            if isinstance(exc, MalformedIndexError):
                self.metrics.index_errors.inc(self.namespace)
            if cached is None:
                raise ServiceError(f"{self.namespace}: upstream failed: {exc}",
                                   getattr(exc, "http_status", 502)) from None
            mark_failed(cached)
            self.metrics.stale_serves.inc(self.namespace)
            log.warning("%s: serving stale page %r: %s", self.namespace, key, exc)
            return cached, True

    async def _refresh(self, key: str) -> _Cached:
        """One upstream request per page and TTL for the whole node: under the page's lock,
        a page another worker just validated is taken from the store instead."""
        lock = self.store.lock(f"pypi-{self.name}-{hashlib.sha256(key.encode()).hexdigest()[:32]}")
        async with lock:
            forced = key in self._forced
            self._forced.discard(key)
            recent = None if forced else self._recent_from_other_worker(key)
            if recent is not None:
                return recent
            return await self._refresh_from_upstream(key)

    async def _refresh_from_upstream(self, key: str) -> _Cached:
        url = self.simple_url if key == ROOT_KEY else f"{self.simple_url}{quote(key)}/"
        reply = await self.client.fetch_small(url, {"Accept": UPSTREAM_ACCEPT})
        content_type = reply.headers.get("Content-Type", "text/html")
        if key == ROOT_KEY:
            names = tuple(parse_root_page(reply.body, content_type, page_url=reply.url,
                                          source=url))
            cached = _Cached(None, names, time.monotonic())
            stored = render_root_json(list(names))
        else:
            page = parse_project_page(reply.body, content_type, page_url=reply.url, source=url)
            cached = _Cached(page, (), time.monotonic())
            stored = render_project_json(page)
        ref = self.store.put_bytes(stored)
        self.store.bind(self._ns_page, key, ref.digest)
        self.store.shared_put(self._shared_key(key), {"digest": ref.digest,
                                                      "validated_at": time.time()})
        self._pages[key] = cached
        return cached

    async def root_page(self, fmt: IndexFormat) -> Answer:
        cached, stale = await self._cached(ROOT_KEY)
        names = list(cached.projects)
        answer = render_page(fmt, render_root_html(names), render_root_json(names))
        return replace(answer, stale=stale)

    async def project_page(self, project: str, fmt: IndexFormat) -> Answer:
        normalized = normalize_project_name(project)
        if normalized != project:
            return RedirectAnswer(f"../{quote(normalized)}/")
        cached, stale = await self._cached(normalized)
        assert cached.page is not None
        local = ProjectPage(cached.page.name, tuple(
            replace(f, url=files_base(normalized) + quote(f.filename)) for f in cached.page.files))
        answer = render_page(fmt, render_project_html(local), render_project_json(local))
        return replace(answer, stale=stale)

    # -- files -----------------------------------------------------------------------------
    async def _dist(self, project: str, filename: str) -> DistFile:
        cached, _ = await self._cached(normalize_project_name(project))
        assert cached.page is not None
        for dist in cached.page.files:
            if dist.filename == filename:
                return dist
        raise NotFound(f"{self.namespace}: {filename!r} is not listed for {project!r}")

    async def file(self, project: str, filename: str) -> Answer:
        project = normalize_project_name(project)
        name = f"{project}/{filename}"
        ref = self.store.lookup(self._ns_file, name)
        if ref is not None:
            self.metrics.hits.inc(self.namespace)
            return BlobAnswer(self.store.blob_path(ref.digest), ref.size, ref.digest,
                              content_type_for(filename), immutable=True)
        if filename.endswith(METADATA_SUFFIX):
            dist = await self._dist(project, filename[: -len(METADATA_SUFFIX)])
            if not dist.has_metadata or dist.metadata_url is None:
                raise NotFound(f"{self.namespace}: {dist.filename} has no metadata file")
            url, sha256, size = dist.metadata_url, dist.metadata_sha256, None
        else:
            dist = await self._dist(project, filename)
            url, sha256, size = dist.url, dist.sha256, dist.size
        if sha256 is not None:
            blob = self.store.get(sha256)
            if blob is not None:
                self.store.bind(self._ns_file, name, sha256)
                self.metrics.hits.inc(self.namespace)
                return BlobAnswer(self.store.blob_path(sha256), blob.size, sha256,
                                  content_type_for(filename), immutable=True)
        plan = FetchPlan(key=f"sha256:{sha256}" if sha256 else f"{self._ns_file}:{name}",
                         url=url, namespace=self.namespace, expected_sha256=sha256,
                         expected_size=size, binds=((self._ns_file, name),))
        self.metrics.misses.inc(self.namespace)
        fetch, joined = self.fetches.join(plan, self.client)
        return StreamAnswer(fetch, content_type_for(filename), coalesced=joined)


def _always() -> bool:
    return True


__all__ = ["RemotePypiIndex", "BytesAnswer"]
