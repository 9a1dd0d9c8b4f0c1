"""Hundreds of lightweight fake nodes (and fronts) in one thread, speaking the node's real API.

Real node processes are too heavy for a 200-node fleet on a small machine, so `FakeFleet`
serves every node from one aiohttp loop, one loopback port each. What the scheduler sees is the
node API as the real node implements it: plans are validated with `distro.wire.parse_plan`
(400 on what the node would refuse, 202 with a `PlanStatus` document), progress is `PlanStatus`,
`/admin/has` answers which digests it holds, `/admin/refresh` answers `RefreshReport`s, and
`/healthz`, `/metrics` have the real shapes. Fronts answer `/_edgedepot/front` as the HAProxy
configuration from `lb-config` does. Every request waits `delay` seconds, so concurrent fan-out
is visible in `max_in_flight`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from distro.wire import PlanError, PlanSpec, PlanStatus, RefreshReport, parse_plan
from syncer.fleet import FRONT_STATUS_PATH


@dataclass
class FakePlan:
    spec: PlanSpec
    polls: int = 0

    def status(self) -> PlanStatus:
        """Active for the first poll, complete from the second on."""
        total = len(self.spec.artifacts)
        done = total if self.polls >= 2 else total // 2
        sizes = [a.size for a in self.spec.artifacts]
        return PlanStatus(self.spec.plan_id, "complete" if done == total else "active", total,
                          done, 0, sum(sizes), sum(sizes[:done]), 1e6,
                          None if done == total else 1.0, ())


@dataclass
class FakeNode:
    port: int
    plans: dict[str, FakePlan] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    refreshed: tuple[float, float] | None = None  # start, end of the last /admin/refresh

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def held(self) -> set[str]:
        return {a.sha256 for p in self.plans.values() if p.polls >= 2
                for a in p.spec.artifacts}


@dataclass
class FakeFront:
    port: int
    region: str
    siblings: dict[str, bool]  # name -> up

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeFleet:
    def __init__(self, nodes: int, delay: float = 0.02) -> None:
        self.delay = delay
        ports: list[int] = []
        while len(ports) < nodes:
            port = _free_port()
            if port not in ports:
                ports.append(port)
        self.nodes = {port: FakeNode(port) for port in ports}
        self.fronts: dict[int, FakeFront] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._sites: dict[int, web.TCPSite] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    # -- setup ----------------------------------------------------------------------------
    def add_front(self, region: str, siblings: dict[str, bool]) -> FakeFront:
        port = _free_port()
        while port in self.nodes or port in self.fronts:
            port = _free_port()
        front = FakeFront(port, region, siblings)
        self.fronts[front.port] = front
        return front

    def start(self) -> FakeFleet:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(60)
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for port in [*self.nodes, *self.fronts]:
            site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True,
                               backlog=512)
            await site.start()
            self._sites[port] = site

    def take_down(self, node: FakeNode) -> None:
        """Close the node's port: connections to it are refused from now on."""
        async def close() -> None:
            await self._sites.pop(node.port).stop()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)

    def stop(self) -> None:
        async def cleanup() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the node API ---------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        port = int(sockname[1]) if sockname else 0
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if port in self.fronts:
                return self._front(self.fronts[port], request)
            node = self.nodes[port]
            node.requests.append((request.method, request.path))
            return await self._node(node, request)
        finally:
            self.in_flight -= 1

    def _front(self, front: FakeFront, request: web.Request) -> web.Response:
        if request.path != FRONT_STATUS_PATH:
            raise web.HTTPNotFound()
        return web.json_response({"region": front.region,
                                  "siblings": {n: int(up) for n, up in front.siblings.items()}})

    async def _node(self, node: FakeNode, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/healthz":
            held = node.held()
            return web.json_response({"status": "ok", "role": "cache", "blobs": len(held),
                                      "store_bytes": 1000 * len(held), "inflight": 0,
                                      "uptime_seconds": 1.0})
        if path == "/metrics":
            return web.Response(text='edgedepot_stale_serves_total{namespace="apt/main"} 0\n')
        if path == "/admin/plans" and method == "GET":
            return web.json_response([p.status().to_json() for p in node.plans.values()])
        if path.startswith("/admin/plans/"):
            plan_id = path.rsplit("/", 1)[1]
            if method == "PUT":
                try:
                    spec = parse_plan(await request.json())
                except (PlanError, ValueError) as exc:
                    return web.json_response({"error": "bad_request", "message": str(exc)},
                                             status=400)
                if spec.plan_id != plan_id:
                    return web.json_response({"error": "bad_request",
                                              "message": "plan_id differs"}, status=400)
                plan = node.plans.setdefault(plan_id, FakePlan(spec))
                return web.json_response(plan.status().to_json(), status=202)
            if plan_id not in node.plans:
                return web.json_response({"error": "not_found", "message": "no plan"},
                                         status=404)
            plan = node.plans[plan_id]
            plan.polls += 1
            return web.json_response(plan.status().to_json())
        if path == "/admin/has" and method == "POST":
            doc: Any = await request.json()
            held = node.held()
            return web.json_response({"present": [d for d in doc["sha256"] if d in held]})
        if path == "/admin/refresh" and method == "POST":
            start = time.monotonic()
            await asyncio.sleep(self.delay)
            node.refreshed = (start, time.monotonic())
            report = RefreshReport("apt", "main", "stable", False, False, 0, 0)
            return web.json_response([report.to_json()])
        raise web.HTTPNotFound()
