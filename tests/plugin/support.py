"""Test support: real node processes, private-root apt-get, a fault-injecting upstream."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from syncer.demo.apt_site import AptRoot
from syncer.demo.node_process import CACHE_NODE, NodeProcess

__all__ = ["CACHE_NODE", "AptRoot", "FakeUpstream", "Fault", "NodeProcess", "sha256_file"]

def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Fault:
    """How the fake upstream misbehaves for one path."""

    corrupt: bool = False
    truncate_at: int | None = None
    fail_times: int = 0          # answer 503 this many times, then serve
    status: int | None = None    # always answer this status
    delay: float = 0.0           # seconds before answering
    chunk_delay: float = 0.0     # seconds between 64 KiB chunks


@dataclass
class FakeUpstream:
    """An HTTP server on 127.0.0.1 serving a directory under a URL prefix, with faults."""

    root: Path
    prefix: str = "/apt/main/"
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""
    down: bool = False

    def count(self, suffix: str) -> int:
        return sum(1 for p in self.requests if p.endswith(suffix))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.requests.append(path)
        if self.down:
            raise web.HTTPServiceUnavailable(text="down")
        rel = path[len(self.prefix):] if path.startswith(self.prefix) else None
        fault = self.faults.get(rel or "", Fault())
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.status is not None:
            return web.Response(status=fault.status, text="injected")
        if fault.fail_times > 0:
            fault.fail_times -= 1
            return web.Response(status=503, text="injected 503")
        if rel is None or ".." in rel.split("/"):
            raise web.HTTPNotFound()
        target = self.root / rel
        if not target.is_file():
            raise web.HTTPNotFound()
        data = target.read_bytes()
        if fault.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        resp = web.StreamResponse()
        resp.content_length = len(data)
        await resp.prepare(request)
        end = fault.truncate_at if fault.truncate_at is not None else len(data)
        for i in range(0, end, 65536):
            await resp.write(data[i:min(i + 65536, end)])
            if fault.chunk_delay:
                await asyncio.sleep(fault.chunk_delay)
        if fault.truncate_at is not None:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            self._loop.run_until_complete(site.start())
            port = self._runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
