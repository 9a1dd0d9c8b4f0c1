"""`/healthz` and the node summary of the status page: liveness, store, repository key, and
whether the upstream answers.

A cache's upstream is probed (`GET {upstream}healthz`, short timeouts, no retries) at start and
then at most once per `PROBE_INTERVAL` seconds, and only when someone asks: `/healthz` answers at
once from the latest finished probe and starts the next one in the background when it is due, so
load balancers polling every second cost the upstream one request per interval, and a slow
upstream never makes `/healthz` slow.

An unreachable upstream makes the status `degraded`, still with HTTP 200: a degraded cache
keeps serving everything it holds (stale snapshots included), so a load balancer must not take
it out of rotation; when the WAN breaks, every cache of a region would otherwise go at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import html
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from cache_node.config import NodeConfig, client_settings
from cache_node.key_routes import key_service
from cache_node.keys import format_fingerprint
from cache_node.node import Node
from cache_node.node_facts import node_facts
from syncer.http_client import ClientSettings, HttpClient, describe_client_error

log = logging.getLogger(__name__)

PROBE_INTERVAL = 10.0
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class UpstreamHealth:
    """The latest probe of the upstream; `reachable` None: not probed yet."""

    url: str
    reachable: bool | None = None
    error: str = ""
    checked_at: float | None = None  # time.monotonic()
    latency: float | None = None

    def to_json(self) -> dict[str, Any]:
        ago = None if self.checked_at is None else round(time.monotonic() - self.checked_at, 1)
        return {"url": self.url, "reachable": self.reachable, "error": self.error,
                "checked_seconds_ago": ago,
                "latency_seconds": None if self.latency is None else round(self.latency, 4)}


class UpstreamProbe:
    """Cached reachability of a cache's upstream (see the module docstring)."""

    def __init__(self, config: NodeConfig, interval: float = PROBE_INTERVAL,
                 timeout: float = PROBE_TIMEOUT) -> None:
        self.url = config.upstream
        self.interval = interval
        self.timeout = timeout
        self._client = HttpClient("health", self._settings(config))
        self._last = UpstreamHealth(self.url or "")
        self._probe: asyncio.Task[UpstreamHealth] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def _settings(self, config: NodeConfig) -> ClientSettings:
        return dataclasses.replace(client_settings(config), connect_timeout=self.timeout,
                                   read_timeout=self.timeout, total_timeout=self.timeout,
                                   retries=0, connections=2, connections_per_host=2)

    async def reconfigure(self, old: NodeConfig, new: NodeConfig) -> None:
        """A reload listener: probe the (possibly moved) upstream with the new TLS settings;
        a probe running now finishes on the old client, which is closed after it."""
        if self.url is None or new.upstream is None:
            return
        fresh = HttpClient("health", self._settings(new))
        await fresh.__aenter__()
        stale, self._client = self._client, fresh
        running = self._probe
        if running is not None and not running.done():
            running.add_done_callback(lambda _: self._close_later(stale))
        else:
            await stale.__aexit__(None, None, None)
        if new.upstream != self.url:
            self.url, self._last = new.upstream, UpstreamHealth(new.upstream)
            self._probe = None
            self._kick()

    def _close_later(self, client: HttpClient) -> None:
        task = asyncio.get_running_loop().create_task(client.__aexit__(None, None, None))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def start(self) -> None:
        if self.url is None:
            return
        await self._client.__aenter__()
        self._kick()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._client.__aexit__(None, None, None)

    async def current(self) -> UpstreamHealth | None:
        """The latest finished probe (None: no upstream); waits only for the very first."""
        if self.url is None:
            return None
        due = self._last.checked_at is None or \
            time.monotonic() - self._last.checked_at >= self.interval
        if due:
            self._kick()
        if self._last.checked_at is None and self._probe is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._probe)
        return self._last

    def _kick(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._run(), name="upstream probe")

    async def _run(self) -> UpstreamHealth:
        assert self.url is not None
        url = f"{self.url}healthz"
        started = time.monotonic()
        error = ""
        try:  # the session itself: no retries, and no warning line per failed probe
            async with self._client.session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    error = f"{url} answered {resp.status} {resp.reason}"
        except TimeoutError:
            error = f"{url}: no answer within {self._client.settings.connect_timeout:g}s"
        except aiohttp.ClientError as exc:
            error = f"{url}: {describe_client_error(url, exc)}"
        now = time.monotonic()
        if bool(error) != (self._last.reachable is False):
            log.log(logging.WARNING if error else logging.INFO, "upstream %s: %s", self.url,
                    error or "reachable again")
        self._last = UpstreamHealth(self.url, not error, error, now, now - started)
        return self._last


PROBE_KEY: web.AppKey[UpstreamProbe] = web.AppKey("upstream_probe", UpstreamProbe)


async def health_document(app: web.Application, node: Node) -> dict[str, Any]:
    """What `/healthz` answers: status ok|degraded with the reasons, store, key, upstream."""
    stats = node.store.stats()
    upstream = await app[PROBE_KEY].current()
    reasons = []
    if upstream is not None and upstream.reachable is False:
        reasons.append(f"upstream unreachable: {upstream.error}")
    return {"status": "degraded" if reasons else "ok", "reasons": reasons,
            "role": node.config.role, "blobs": stats.blob_count,
            "store_bytes": stats.total_bytes, "inflight": node.fetches.inflight_count,
            "uptime_seconds": round(time.time() - node.started_at, 1),
            "key_fingerprint": key_service(app).fingerprint,
            "upstream": upstream.to_json() if upstream is not None else None,
            **node_facts(node)}


async def summary_html(app: web.Application, node: Node) -> str:
    """The status page's first lines: role, upstream and its health, the key to pin."""
    doc = await health_document(app, node)
    fp = doc["key_fingerprint"]
    if fp:
        key = (f"<code>{html.escape(format_fingerprint(fp))}</code> "
               f"(<a href=\"/keys/repository.gpg\">repository.gpg</a>; sites pin this "
               f"fingerprint)")
    elif node.config.role == "origin":
        key = "none (this origin signs nothing)"
    else:
        key = "not fetched from the upstream yet"
    up = doc["upstream"]
    if up is None:
        upstream = "none (origin)"
    else:
        state = {True: "reachable", False: "UNREACHABLE", None: "not probed yet"}[up["reachable"]]
        detail = f": {html.escape(up['error'])}" if up["error"] else ""
        upstream = f"{html.escape(up['url'])} &middot; {state}{detail}"
    return (f"<p>status: <b>{html.escape(doc['status'])}</b> &middot; role: "
            f"{html.escape(node.config.role)}</p>\n<p>upstream: {upstream}</p>\n"
            f"<p>repository signing key: {key}</p>")


def add_health_routes(app: web.Application, node: Node) -> None:
    """Register `/healthz`; the upstream probe starts and stops with the app and follows
    reloads."""
    probe = UpstreamProbe(node.config)
    app[PROBE_KEY] = probe
    node.reload_listeners.append(probe.reconfigure)

    async def start(_: web.Application) -> None:
        await probe.start()

    async def stop(_: web.Application) -> None:
        await probe.close()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response(await health_document(request.app, node),
                                 headers={"Cache-Control": "no-store"})

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/healthz", healthz)
