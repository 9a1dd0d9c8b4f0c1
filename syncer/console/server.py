"""`distro-sync console`: the live web console of a fleet (aiohttp, no CDN).

A collector polls every node of the inventory each `interval` seconds (bounded concurrency
over the fleet client's one session) and feeds `FleetState`; the page (`static/index.html`)
loads summaries and pages of details from the JSON API and follows every round over
server-sent events (`/api/events`), so it is live without reloading. The inventory file is
read again when it changes (a moved region shows up in the next round, and so in the
bootstrap scripts the console serves). Routes:

    /                                  the page; /static/...: its assets (uPlot vendored)
    /api/overview                      totals and one row per region (also each SSE event)
    /api/history[?region=R]            chart series: WAN and LAN bytes/s, plan progress
    /api/nodes?region=&state=&q=&page= one page of nodes with health, store, plans, failures
    /api/sites?region=&state=&q=&page= one page of sites: profile downloaded, state, onboarding
    /api/sites/<site>                  one site
    /api/clients?page=                 client addresses that match no site
    /sites/<site>/bootstrap.sh         the site's bootstrap script (see syncer.onboarding;
                                       Bearer onboarding token when the inventory has one)
    POST /api/sites/<site>/report      a bootstrapped site reports (Bearer onboarding token)
    POST /login                        the sign-in form (with a viewer token: see .access)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from distro.errors import EdgedepotError
from syncer.console.access import ConsoleAccess, access_middleware, bearer_matches, login
from syncer.console.reports import ReportError, SiteReports, parse_report
from syncer.console.state import FleetState
from syncer.fleet import FleetClient, NodeObservation
from syncer.inventory import Inventory, InventoryError, load_inventory
from syncer.onboarding import OnboardingError, pinned_fingerprint, render_bootstrap, site_config
from syncer.planner import PlanningError, plan_regions, profile_totals

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
PLAN_RETRY = 60.0


class Console:
    """The collector and the state behind the routes."""

    def __init__(self, inventory_path: Path, interval: float = 5.0,
                 state_dir: Path | None = None, connections: int = 32) -> None:
        self.inventory_path = inventory_path
        self.interval = interval
        self.connections = connections
        self.inventory = load_inventory(inventory_path, os.environ)
        self._mtime = inventory_path.stat().st_mtime_ns
        self.state = FleetState(self.inventory)
        self.reports = SiteReports(state_dir / "site-reports.json" if state_dir else None)
        self.state.set_reports(self.reports.reports)
        self.rounds = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._fingerprint: str | None = None
        self._planned_for: Inventory | None = None
        self._planned_at = 0.0

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._collect(), name="console collector"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the collector -------------------------------------------------------------------
    async def _collect(self) -> None:
        fleet: FleetClient | None = None
        fleet_for: Inventory | None = None
        try:
            while True:
                started = time.monotonic()
                self._maybe_reload()
                if fleet is None or fleet_for is not self.inventory:
                    if fleet is not None:
                        await fleet.__aexit__(None, None, None)
                    fleet = await FleetClient.for_inventory(self.inventory, timeout=
                                                            max(2.0, self.interval)).__aenter__()
                    fleet_for = self.inventory
                await self._round(fleet)
                await self._maybe_plan()
                async with self.rounds:
                    self.rounds.notify_all()
                await asyncio.sleep(max(0.2, self.interval - (time.monotonic() - started)))
        finally:
            if fleet is not None:
                await fleet.__aexit__(None, None, None)

    async def _round(self, fleet: FleetClient) -> None:
        gate = asyncio.Semaphore(self.connections)

        async def one(node: str) -> NodeObservation:
            async with gate:
                try:
                    return await fleet.observe(node)
                except Exception as exc:  # one odd node never stops the round
                    log.warning("observing %s: %s", node, exc)
                    return NodeObservation(node, False, f"{type(exc).__name__}: {exc}")

        observations = await asyncio.gather(*(one(url) for url in list(self.state.nodes)))
        self.state.update(list(observations))

    def _maybe_reload(self) -> None:
        try:
            mtime = self.inventory_path.stat().st_mtime_ns
            if mtime == self._mtime:
                return
            self._mtime = mtime
            self.inventory = load_inventory(self.inventory_path, os.environ)
        except (OSError, InventoryError) as exc:
            self.state.inventory_error = f"inventory not reloaded: {exc}"
            return
        log.info("inventory %s reloaded", self.inventory_path)
        self.state.inventory_error = ""
        self.state.set_inventory(self.inventory)
        self._fingerprint = None

    async def _maybe_plan(self) -> None:
        """Profile sizes and the regions' current plan ids, from the origin's indexes: once
        per inventory, again after a failure once `PLAN_RETRY` seconds passed."""
        if self._planned_for is self.inventory:
            return
        if self.state.planning_error and time.monotonic() - self._planned_at < PLAN_RETRY:
            return
        inventory = self.inventory
        self._planned_at = time.monotonic()

        def work() -> tuple[dict[str, int], dict[str, str]]:
            with tempfile.TemporaryDirectory(prefix="console-plan-") as tmp:
                settings = inventory.client_settings()
                sizes = profile_totals(inventory, Path(tmp), settings)
                plans = plan_regions(inventory, Path(tmp), settings=settings)
                return sizes, {p.region: p.spec.plan_id for p in plans}

        try:
            sizes, plan_ids = await asyncio.to_thread(work)
        except (PlanningError, InventoryError, EdgedepotError, OSError) as exc:
            self.state.planning_error = f"profile sizes unknown: {exc}"
            return
        self.state.profile_bytes, self.state.region_plan_ids = sizes, plan_ids
        self.state.planning_error = ""
        self._planned_for = inventory

    async def fingerprint(self) -> str:
        if self._fingerprint is None:
            inventory = self.inventory
            self._fingerprint = await asyncio.to_thread(pinned_fingerprint, inventory)
        return self._fingerprint

    async def wait_round(self, timeout: float) -> bool:
        async with self.rounds:
            try:
                await asyncio.wait_for(self.rounds.wait(), timeout)
                return True
            except TimeoutError:
                return False


CONSOLE_KEY: web.AppKey[Console] = web.AppKey("console", Console)
ACCESS_KEY: web.AppKey[ConsoleAccess] = web.AppKey("console_access", ConsoleAccess)


def _int(request: web.Request, key: str, default: int) -> int:
    try:
        return int(request.query.get(key, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{key}: an integer") from None


def _json(doc: Any) -> web.Response:
    return web.json_response(doc, headers={"Cache-Control": "no-store"})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def overview(request: web.Request) -> web.Response:
    return _json(request.app[CONSOLE_KEY].state.overview())


async def history(request: web.Request) -> web.Response:
    state = request.app[CONSOLE_KEY].state
    region = request.query.get("region") or None
    if region is not None and region not in state.regions:
        raise web.HTTPNotFound(text=f"no region {region!r}")
    return _json(state.history(region))


async def nodes(request: web.Request) -> web.Response:
    q = request.query
    return _json(request.app[CONSOLE_KEY].state.nodes_page(
        q.get("region") or None, q.get("state") or None, q.get("q", ""),
        _int(request, "page", 1), _int(request, "per_page", 50)))


async def sites(request: web.Request) -> web.Response:
    q = request.query
    return _json(request.app[CONSOLE_KEY].state.sites_page(
        q.get("region") or None, q.get("state") or None, q.get("q", ""),
        _int(request, "page", 1), _int(request, "per_page", 50)))


async def site(request: web.Request) -> web.Response:
    detail = request.app[CONSOLE_KEY].state.site_detail(request.match_info["site"])
    if detail is None:
        raise web.HTTPNotFound(text="no such site")
    return _json(detail)


async def clients(request: web.Request) -> web.Response:
    return _json(request.app[CONSOLE_KEY].state.unattributed_page(
        _int(request, "page", 1), _int(request, "per_page", 50)))


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the overview after every round (and a comment as keep-alive)."""
    console = request.app[CONSOLE_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await response.write(_event(console.state.overview()))
        while True:
            if await console.wait_round(15.0):
                await response.write(_event(console.state.overview()))
            else:
                await response.write(b": keep-alive\n\n")
    return response


def _event(doc: Any) -> bytes:
    return f"event: overview\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n".encode()


async def bootstrap(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    token = console.inventory.onboarding.token
    access = request.app[ACCESS_KEY]
    signed_in = access.token is not None and access.viewer(request)  # not just "open"
    if token is not None and not bearer_matches(request, token) and not signed_in:
        return web.json_response({"error": "forbidden" if "Authorization" in request.headers
                                  else "unauthorized",
                                  "message": "the bootstrap script needs the onboarding token "
                                  "(Authorization: Bearer)"},
                                 status=403 if "Authorization" in request.headers else 401)
    name = request.match_info["site"]
    if name not in console.inventory.sites:
        raise web.HTTPNotFound(text=f"no site {name!r} in the inventory\n")
    try:
        fingerprint = await console.fingerprint()
    except OnboardingError as exc:
        raise web.HTTPServiceUnavailable(text=f"{exc}\n") from None
    console_url = console.inventory.onboarding.console_url or \
        f"{request.scheme}://{request.host}"
    script = render_bootstrap(site_config(console.inventory, name, fingerprint, console_url))
    return web.Response(text=script, content_type="text/x-shellscript",
                        headers={"Cache-Control": "no-store"})


async def report(request: web.Request) -> web.Response:
    console = request.app[CONSOLE_KEY]
    token = console.inventory.onboarding.token
    if token is not None and not bearer_matches(request, token):
        return web.json_response({"error": "forbidden",
                                  "message": "a valid onboarding token is required"},
                                 status=403)
    try:
        doc = await request.json()
        accepted = console.reports.add(parse_report(request.match_info["site"], doc,
                                                    request.remote))
    except (ValueError, ReportError) as exc:
        return web.json_response({"error": "bad_report", "message": str(exc)}, status=400)
    known = accepted.site in console.inventory.sites
    log.info("site %s reported (%s)", accepted.site, "known" if known else "unknown")
    return web.json_response({"site": accepted.site, "known": known,
                              "count": accepted.count})


def _site_route(path: str) -> bool:
    """The routes a site uses (each checks the onboarding token itself)."""
    parts = path.split("/")
    return (len(parts) == 4 and parts[1] == "sites" and parts[3] == "bootstrap.sh") or \
        (len(parts) == 5 and parts[1:3] == ["api", "sites"] and parts[4] == "report")


def build_console_app(console: Console, access: ConsoleAccess | None = None
                      ) -> web.Application:
    access = access or ConsoleAccess()
    app = web.Application(middlewares=[access_middleware(access, _site_route)])
    app[CONSOLE_KEY] = console
    app[ACCESS_KEY] = access

    async def sign_in(request: web.Request) -> web.StreamResponse:
        return await login(request, access)

    async def lifecycle(_: web.Application) -> AsyncIterator[None]:
        await console.start()
        yield
        await console.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", index)
    app.router.add_post("/login", sign_in)
    app.router.add_get("/api/overview", overview)
    app.router.add_get("/api/history", history)
    app.router.add_get("/api/nodes", nodes)
    app.router.add_get("/api/sites", sites)
    app.router.add_get("/api/sites/{site}", site)
    app.router.add_post("/api/sites/{site}/report", report)
    app.router.add_get("/api/clients", clients)
    app.router.add_get("/api/events", events)
    app.router.add_get("/sites/{site}/bootstrap.sh", bootstrap)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
