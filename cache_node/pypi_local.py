"""A PEP 503/691 index served by the origin from a directory of wheels and sdists.

URL layout under `/pypi/<name>/`: `simple/` (project list), `simple/<project>/` (project page,
HTML or JSON by content negotiation), `files/<project>/<filename>` and
`files/<project>/<filename>.metadata` (PEP 658). Pages link files relatively, so every tier that
re-serves a page keeps pointing clients at itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from cache_node.answers import (
    Answer,
    BlobAnswer,
    BytesAnswer,
    NotFound,
    RedirectAnswer,
    content_type_for,
)
from cache_node.config import NodeConfig, RepoSource
from cache_node.repository import RepoKind, RepoSummary
from distro.pypi_index import (
    METADATA_SUFFIX,
    IndexFormat,
    LocalDist,
    choose_format,
    normalize_project_name,
    project_page_from_local,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
    scan_distribution_dir,
)
from distro.pypi_index import (
    content_type_for as index_content_type,
)
from distro.wire import RefreshReport

log = logging.getLogger(__name__)

RESCAN_INTERVAL = 2.0


def render_page(fmt: IndexFormat, body_html: str | None = None, body_json: bytes | None = None
                ) -> BytesAnswer:
    data = body_json if fmt == "json" else (body_html or "").encode("utf-8")
    assert data is not None
    return BytesAnswer(data, index_content_type(fmt), hashlib.sha256(data).hexdigest())


class PypiPaths:
    """The URL layout of a pip index under `/pypi/<name>/`, shared by local and remote
    indexes: `answer(path)` maps a path onto the index's pages and files."""

    kind: RepoKind = "pypi"
    name: str
    namespace: str

    async def root_page(self, fmt: IndexFormat) -> Answer:
        raise NotImplementedError

    async def project_page(self, project: str, fmt: IndexFormat) -> Answer:
        raise NotImplementedError

    async def file(self, project: str, filename: str) -> Answer:
        raise NotImplementedError

    async def answer(self, path: str, accept: str | None = None) -> Answer:
        parts = path.split("/")
        if parts[0] == "simple":
            fmt = choose_format(accept)
            if parts[1:] in ([], [""]):
                return await self.root_page(fmt)
            if len(parts) == 2:
                return RedirectAnswer(f"{quote(parts[1])}/")
            if len(parts) == 3 and parts[2] == "":
                return await self.project_page(parts[1], fmt)
        if parts[0] == "files" and len(parts) == 3 and parts[1] and parts[2]:
            return await self.file(parts[1], parts[2])
        raise NotFound(f"{self.namespace}: no such path {path}")


def files_base(project: str) -> str:
    """Relative URL from `simple/<project>/` to that project's files directory."""
    return f"../../files/{quote(project)}/"


class LocalPypiIndex(PypiPaths):
    def __init__(self, source: RepoSource) -> None:
        self.name = source.name
        self.root = source.path
        self.namespace = f"pypi/{source.name}"
        self._projects: dict[str, list[LocalDist]] = {}
        self._by_digest: dict[str, Path] = {}
        self._fingerprint: tuple[tuple[str, int, int], ...] | None = None
        self._last_scan = 0.0
        self._lock = asyncio.Lock()

    def _scan_fingerprint(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for path in sorted(self.root.rglob("*")):
            if path.is_file():
                st = path.stat()
                out.append((str(path), st.st_size, st.st_mtime_ns))
        return tuple(out)

    def prepare(self) -> None:
        fingerprint = self._scan_fingerprint()
        if fingerprint != self._fingerprint:
            self._projects = scan_distribution_dir(self.root)
            self._by_digest = {d.sha256: d.path for ds in self._projects.values() for d in ds}
            self._fingerprint = fingerprint
            log.info("%s: %d projects", self.namespace, len(self._projects))
        self._last_scan = time.monotonic()

    async def _maybe_rescan(self) -> None:
        if time.monotonic() - self._last_scan < RESCAN_INTERVAL:
            return
        async with self._lock:
            if time.monotonic() - self._last_scan >= RESCAN_INTERVAL:
                await asyncio.to_thread(self.prepare)

    def locate(self, sha256: str) -> Path | None:
        path = self._by_digest.get(sha256)
        return path if path is not None and path.is_file() else None

    def unchanged_while(self, path: str) -> Callable[[], bool] | None:
        return None  # not repeated by the hot path (see `Repository.unchanged_while`)

    def summary(self) -> RepoSummary:
        return RepoSummary("pypi", self.name, str(self.root), ())

    def reconfigure(self, config: NodeConfig) -> None:
        """Served from a directory read at start: a reload changes nothing here (another
        directory needs a restart, which `plan_reload` reports)."""

    async def refresh(self) -> list[RefreshReport]:
        return []

    def projects(self) -> list[str]:
        return sorted(self._projects)

    async def root_page(self, fmt: IndexFormat) -> Answer:
        await self._maybe_rescan()
        names = self.projects()
        return render_page(fmt, render_root_html(names), render_root_json(names))

    async def project_page(self, project: str, fmt: IndexFormat) -> Answer:
        normalized = normalize_project_name(project)
        if normalized != project:
            return RedirectAnswer(f"../{quote(normalized)}/")
        await self._maybe_rescan()
        dists = self._projects.get(normalized)
        if not dists:
            raise NotFound(f"{self.namespace}: no project {project!r}")
        page = project_page_from_local(normalized, dists, base_url=files_base(normalized))
        return render_page(fmt, render_project_html(page), render_project_json(page))

    def _find(self, project: str, filename: str) -> LocalDist:
        for dist in self._projects.get(normalize_project_name(project), []):
            if dist.filename == filename:
                return dist
        raise NotFound(f"{self.namespace}: no file {filename!r} in project {project!r}")

    async def file(self, project: str, filename: str) -> Answer:
        await self._maybe_rescan()
        if filename.endswith(METADATA_SUFFIX):
            dist = self._find(project, filename[: -len(METADATA_SUFFIX)])
            if dist.metadata is None:
                raise NotFound(f"{self.namespace}: {dist.filename} has no metadata file")
            return BytesAnswer(dist.metadata, content_type_for(filename),
                               hashlib.sha256(dist.metadata).hexdigest(), immutable=True)
        dist = self._find(project, filename)
        path: Path = dist.path
        if not path.is_file():
            raise NotFound(f"{self.namespace}: {filename} vanished from disk")
        return BlobAnswer(path, dist.size, dist.sha256, content_type_for(filename),
                          immutable=True)
