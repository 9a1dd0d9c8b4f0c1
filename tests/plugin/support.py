"""Test support: real node processes, private-root apt-get, a fault-injecting upstream."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from syncer.demo.apt_site import AptRoot
from syncer.demo.node_process import CACHE_NODE, NodeProcess

__all__ = ["CACHE_NODE", "AptRoot", "FakeUpstream", "Fault", "NodeProcess", "TcpRelay",
           "sha256_file", "wait_until"]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll until `condition()` is true; AssertionError naming `what` after `timeout` seconds
    (a bound for a hung test, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


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


@dataclass
class TcpRelay:
    """A TCP relay on 127.0.0.1 to `target_port` (a stand-in for the WAN between two tiers):
    records every byte it carries in both directions (`recorded`) and can slow down what
    the target sends (`delay` seconds per chunk of at most `chunk` bytes; change it any time).
    """

    target_port: int
    delay: float = 0.0
    chunk: int = 16 << 10
    port: int = 0
    connections: int = 0
    recorded: bytearray = field(default_factory=bytearray)

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    slow: bool) -> None:
        try:
            while data := await reader.read(self.chunk if slow else 1 << 16):
                self.recorded += data
                if slow and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer, False),
                             self._pump(up_reader, writer, True))

    def start(self) -> TcpRelay:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            server = self._loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            server.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> TcpRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
