"""Per-client counters: what each client address downloaded, for `GET /admin/clients`.

The console attributes downloads to sites by address (the inventory lists a site's addresses,
or a site reports them when it onboards), so it can say which sites are installing, done or
silent. The counters are fed by the same middleware, with the same values, as the access log
(`access_log.py`), whether or not the log itself is on. Only content counts (apt, pip, images,
keys, delta), never the node's own pages or admin calls, so the console polling a node does not
show up as a client. The table is bounded: when full, the least recently seen client is
forgotten (and counted in `dropped`), so a scan from many addresses cannot grow memory.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

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

    def record(self, client: str, path: str, status: int, sent: int, cache: str) -> None:
        """Count one answered request (called once per request, after it was answered)."""
        if not path.startswith(CONTENT_PREFIXES):
            return
        now = time.time()
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
        return ClientsReport(self.since, tuple(
            ClientUsage(addr, c.requests, c.bytes, c.artifact_bytes, c.hits, c.misses, c.errors,
                        round(c.first_seen, 3), round(c.last_seen, 3))
            for addr, c in self._clients.items()), self.dropped)

    def __len__(self) -> int:
        return len(self._clients)


CLIENTS_KEY: web.AppKey[ClientStats] = web.AppKey("client_stats", ClientStats)


def client_stats(app: web.Application) -> ClientStats:
    """The app's counters, created on first use."""
    stats = app.get(CLIENTS_KEY)
    if stats is None:
        stats = app[CLIENTS_KEY] = ClientStats()
    return stats


def add_client_routes(app: web.Application) -> None:
    """`GET /admin/clients` (admin: it names client addresses)."""
    stats = client_stats(app)

    async def clients(_: web.Request) -> web.Response:
        return web.json_response(stats.report().to_json(),
                                 headers={"Cache-Control": "no-store"})

    app.router.add_get("/admin/clients", clients)
