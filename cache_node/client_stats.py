"""Per-client counters: what each client address downloaded, for `GET /admin/clients`.

The console attributes downloads to sites by address (the inventory lists a site's addresses,
or a site reports them when it onboards), so it can say which sites are installing, done or
silent. The counters are fed by the same middleware, with the same values, as the access log
(`access_log.py`), whether or not the log itself is on. Only content counts (apt, pip, images,
keys, delta), never the node's own pages or admin calls, so the console polling a node does not
show up as a client. The table is bounded: when full, the least recently seen client is
forgotten (and counted in `dropped`), so a scan from many addresses cannot grow memory.

With several worker processes (`--workers`), each worker counts its own requests and writes
them to `<store>/clients/worker-<n>.json` whenever it publishes its metrics (when they
changed); the worker that answers `/admin/clients` first asks the others to publish (as
`/metrics` does), then adds their files to its own live counts. A worker that replaces a dead
one continues from its file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from cache_node.metrics import Metrics
from distro.wire import ClientsReport, ClientUsage

MAX_CLIENTS = 20_000
CONTENT_PREFIXES = ("/apt/", "/pypi/", "/glance/", "/keys/", "/delta/")
# Immutable artifacts: what a site's profile is made of (not indexes or pages).
_ARTIFACT = re.compile(r"^/(apt/[^/]+/pool/|pypi/[^/]+/files/|glance/v2/images/[^/]+/file$)")
_HITS = frozenset({"hit", "coalesced", "stale", "delta"})


@dataclass
class _Counts:
    first_seen: float
    last_seen: float
    requests: int = 0
    bytes: int = 0
    artifact_bytes: int = 0
    hits: int = 0
    misses: int = 0
    errors: int = 0


class ClientStats:
    """Counters per client address (see the module docstring)."""

    def __init__(self, max_clients: int = MAX_CLIENTS) -> None:
        self.since = time.time()
        self.max_clients = max_clients
        self.dropped = 0
        self._clients: OrderedDict[str, _Counts] = OrderedDict()  # least recently seen first
        self._dirty = False

    def record(self, client: str, path: str, status: int, sent: int, cache: str) -> None:
        """Count one answered request (called once per request, after it was answered)."""
        if not path.startswith(CONTENT_PREFIXES):
            return
        now = time.time()
        self._dirty = True
        counts = self._clients.get(client)
        if counts is None:
            if len(self._clients) >= self.max_clients:
                self._clients.popitem(last=False)
                self.dropped += 1
            counts = self._clients[client] = _Counts(now, now)
        else:
            self._clients.move_to_end(client)
            counts.last_seen = now
        counts.requests += 1
        counts.bytes += sent
        if status >= 400:
            counts.errors += 1
            return
        if _ARTIFACT.match(path):
            counts.artifact_bytes += sent
        if cache == "miss":
            counts.misses += 1
        elif cache in _HITS:
            counts.hits += 1

    def report(self) -> ClientsReport:
        """This process's counts plus, with workers, what the others last published."""
        merged: dict[str, _Counts] = {a: _Counts(**asdict(c)) for a, c in self._clients.items()}
        dropped = self.dropped
        for doc in self._peers():
            dropped += int(doc.get("dropped", 0) or 0)
            for addr, raw in (doc.get("clients") or {}).items():
                try:
                    other = _Counts(**raw)
                except TypeError:
                    continue
                mine = merged.get(addr)
                merged[addr] = other if mine is None else _Counts(
                    min(mine.first_seen, other.first_seen), max(mine.last_seen, other.last_seen),
                    *(getattr(mine, f) + getattr(other, f) for f in _SUMMED))
        return ClientsReport(self.since, tuple(
            ClientUsage(addr, c.requests, c.bytes, c.artifact_bytes, c.hits, c.misses, c.errors,
                        round(c.first_seen, 3), round(c.last_seen, 3))
            for addr, c in sorted(merged.items(), key=lambda kv: kv[1].last_seen)), dropped)

    # -- several worker processes -----------------------------------------------------------
    _dir: Path | None = None
    _worker = 0

    def share(self, directory: Path, worker: int) -> None:
        """Take part in a node of several workers (see the module docstring)."""
        self._dir, self._worker = directory, worker
        directory.mkdir(parents=True, exist_ok=True)
        doc = _read(self._file(worker))
        for addr, raw in ((doc or {}).get("clients") or {}).items():
            with contextlib.suppress(TypeError):
                self._clients[addr] = _Counts(**raw)
        self.dropped += int((doc or {}).get("dropped", 0) or 0)

    def _file(self, worker: int) -> Path:
        assert self._dir is not None
        return self._dir / f"worker-{worker}.json"

    def publish(self) -> None:
        """Write this worker's counts for the others (atomically), when they changed."""
        if self._dir is None or not self._dirty:
            return
        self._dirty = False
        path = self._file(self._worker)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"dropped": self.dropped, "clients": {
            a: asdict(c) for a, c in self._clients.items()}}))
        os.replace(tmp, path)

    def _peers(self) -> list[dict[str, Any]]:
        if self._dir is None:
            return []
        return [doc for path in sorted(self._dir.glob("worker-*.json"))
                if path != self._file(self._worker) and (doc := _read(path)) is not None]

    def __len__(self) -> int:
        return len(self._clients)


_SUMMED = ("requests", "bytes", "artifact_bytes", "hits", "misses", "errors")


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


CLIENTS_KEY: web.AppKey[ClientStats] = web.AppKey("client_stats", ClientStats)


def client_stats(app: web.Application) -> ClientStats:
    """The app's counters, created on first use."""
    stats = app.get(CLIENTS_KEY)
    if stats is None:
        stats = app[CLIENTS_KEY] = ClientStats()
    return stats


def add_client_routes(app: web.Application, metrics: Metrics,
                      shared: tuple[Path, int] | None = None) -> None:
    """`GET /admin/clients` (admin: it names client addresses); `shared`: the directory and
    this worker's index when the node runs several workers. The counts are published with
    the worker's metrics (and so asked for fresh by `refresh_peers`, as `/metrics` does)."""
    stats = client_stats(app)
    if shared is not None:
        stats.share(*shared)
        metrics.publish_hooks.append(stats.publish)

    async def clients(_: web.Request) -> web.Response:
        await metrics.refresh_peers()
        return web.json_response(stats.report().to_json(),
                                 headers={"Cache-Control": "no-store"})

    app.router.add_get("/admin/clients", clients)
