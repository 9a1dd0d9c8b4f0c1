"""A real HAProxy in front of sibling nodes, and stub siblings that answer anything.

`HaproxyProcess` runs the Debian package's `haproxy` in the foreground on a configuration that
`distro-sync lb-config` wrote, stopped by its PID. `StubSiblings` are tiny aiohttp servers in
one thread (health checks pass, every path answers 200) whose ports can be closed and reopened,
for checking HAProxy's routing without starting node processes. `ask_front` sends raw request
paths (byte for byte: HAProxy hashes what is on the request line) and returns which sibling
HAProxy chose, from the header the front adds.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from aiohttp import web

from syncer.siblings import FRONT_STATUS_PATH, SIBLING_HEADER

HAPROXY = "haproxy"


def require_haproxy() -> str:
    path = shutil.which(HAPROXY)
    if path is None:
        pytest.skip("haproxy is not installed (make test installs it)")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c -f FILE`: HAProxy's own validation of a configuration."""
    return subprocess.run([require_haproxy(), "-c", "-f", str(path)], capture_output=True,
                          text=True, timeout=60)


class HaproxyProcess:
    """`haproxy -db -f CONFIG` (foreground), listening on `port`; stopped by PID."""

    def __init__(self, config_text: str, workdir: Path, port: int) -> None:
        self.config = workdir / "haproxy.cfg"
        self.log_path = workdir / "haproxy.log"
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> HaproxyProcess:
        checked = check_config(self.config)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen([require_haproxy(), "-db", "-f", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log_path.read_text()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def status(self) -> dict[str, bool]:
        """Sibling name -> up, as HAProxy sees it (its own answer at the status path)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", FRONT_STATUS_PATH)
            doc = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return {name: bool(up) for name, up in doc["siblings"].items()}

    def wait_for(self, predicate: Callable[[dict[str, bool]], bool], timeout: float = 30.0
                 ) -> dict[str, bool]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.status()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"front state still {state} after {timeout}s")
            time.sleep(0.1)

    def __enter__(self) -> HaproxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ask_front(port: int, paths: Iterable[str]) -> dict[str, str]:
    """Path -> the sibling HAProxy sent it to, each path sent as is on the request line."""
    out: dict[str, str] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for path in paths:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.endheaders()
            resp = conn.getresponse()
            resp.read()
            served_by = resp.getheader(SIBLING_HEADER)
            assert served_by, f"{path}: {resp.status} without {SIBLING_HEADER}"
            out[path] = served_by
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    finally:
        conn.close()
    return out


class StubSiblings:
    """aiohttp servers on fixed loopback ports answering 200 to everything (/healthz too)."""

    def __init__(self, count: int) -> None:
        self.ports = [free_port() for _ in range(count)]
        self._sites: dict[int, web.TCPSite] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _ok(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _open(self, port: int) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._ok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self._sites[port] = site

    async def _close(self, port: int) -> None:
        site = self._sites.pop(port)
        await site._runner.cleanup()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)  # type: ignore[arg-type]

    def start(self) -> StubSiblings:
        self._thread.start()
        for port in self.ports:
            self._call(self._open(port))
        return self

    def close(self, port: int) -> None:
        """The sibling on `port` goes away (connections refused)."""
        self._call(self._close(port))

    def reopen(self, port: int) -> None:
        self._call(self._open(port))

    def stop(self) -> None:
        for port in list(self._sites):
            self._call(self._close(port))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
