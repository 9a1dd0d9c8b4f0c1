"""Test support: real node processes, private-root apt-get, a fault-injecting upstream."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from aiohttp import web

VENV_BIN = Path(sys.executable).parent
CACHE_NODE = str(VENV_BIN / "cache-node")


class NodeProcess:
    """A `cache-node serve` subprocess on 127.0.0.1 with a free port; stopped by PID."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> "NodeProcess":
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [CACHE_NODE, "serve", "--listen", "127.0.0.1:0", *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(self.env or {})})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line or self.proc.poll() is not None:
                break
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"node did not start: {line!r}; log:\n{self.log_path.read_text()}")
        self.url = line.split()[-1].strip()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def served(self) -> dict[str, int]:
        return dict(json.loads(self.get("/admin/served")[1]))

    def metrics(self) -> dict[tuple[str, str], float]:
        from cache_node.metrics import parse_metrics
        return parse_metrics(self.get("/metrics")[1].decode())

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class AptRoot:
    """A private apt root: empty dpkg status, private lists/cache/etc."""

    root: Path
    keyring: Path | None

    def __post_init__(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial", "etc/apt.conf.d",
                    "etc/preferences.d", "etc/trusted.gpg.d"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()

    def set_source(self, base_url: str, suite: str = "stable", component: str = "main") -> None:
        signed = f"[signed-by={self.keyring}] " if self.keyring else "[trusted=yes] "
        (self.root / "etc/sources.list").write_text(f"deb {signed}{base_url} {suite} {component}\n")

    def options(self) -> list[str]:
        r = self.root
        return ["-o", f"Dir::State::status={r}/status", "-o", f"Dir::State::Lists={r}/lists",
                "-o", f"Dir::Cache={r}/cache", "-o", f"Dir::Etc={r}/etc",
                "-o", f"Dir::Etc::SourceList={r}/etc/sources.list",
                "-o", "Dir::Etc::SourceParts=/dev/null", "-o", "APT::Architecture=amd64",
                "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root",
                "-o", "Acquire::Retries=0", "-o", "Acquire::http::Proxy=false"]

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["apt-get", *self.options(), *args], capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"apt-get {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["apt-get", *self.options(), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def archives(self) -> list[Path]:
        return sorted((self.root / "cache/archives").glob("*.deb"))


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

    def start(self) -> "FakeUpstream":
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
