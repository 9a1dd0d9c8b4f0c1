"""Start and stop `cache-node serve` processes (demo, scheduler tooling, tests)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Self

from distro.wire import parse_metrics

CACHE_NODE = str(Path(sys.executable).parent / "cache-node")


class NodeProcess:
    """A `cache-node serve` subprocess on 127.0.0.1 with free ports; stopped by PID.

    `listen` (plain HTTP) and `tls_listen` (HTTPS) are passed as `--listen`/`--tls-listen`;
    None leaves that listener out (`--listen ""`: a TLS-only node). The node prints one
    `listening on URL` line per listener, plain first; `url` is the plain one if there is
    one, else the HTTPS one, and `https_url` the HTTPS one. `client_tls` is the context
    `get` uses for https URLs (a test's CA, and a client certificate for mTLS).
    """

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 *, listen: str | None = "127.0.0.1:0", tls_listen: str | None = None,
                 prefix: Sequence[str] = (), client_tls: ssl.SSLContext | None = None,
                 admin_token: str | None = None, workers: int | None = 1):
        """`prefix` runs the node through another program that execs it (`ip netns exec NS`),
        so the PID stays the node's own. `admin_token` (default: the one `env` gives the node)
        goes with the admin calls of `served()` and `admin()`. `workers` is `--workers`
        (None: the node's default, one per core)."""
        self.admin_token = admin_token or (env or {}).get("EDGEDEPOT_ADMIN_TOKEN")
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.listen = listen
        self.tls_listen = tls_listen
        self.prefix = list(prefix)
        self.client_tls = client_tls
        self.workers = workers
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.https_url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Self:
        self._log = open(self.log_path, "a")
        listeners = ["--listen", self.listen or ""]
        if self.tls_listen is not None:
            listeners += ["--tls-listen", self.tls_listen]
        if self.workers is not None:
            listeners += ["--workers", str(self.workers)]
        expected = (self.listen is not None) + (self.tls_listen is not None)
        self.proc = subprocess.Popen(
            [*self.prefix, CACHE_NODE, "serve", *listeners, *self.args],
            stdout=subprocess.PIPE, stderr=self._log, text=True,
            env={**os.environ, **(self.env or {})})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        urls: list[str] = []
        line = ""
        while time.monotonic() < deadline and len(urls) < max(expected, 1):
            line = self.proc.stdout.readline()
            if not line.startswith("listening on "):
                break
            urls.append(line.split()[-1].strip())
        if not urls or len(urls) < expected:
            self.stop()
            raise RuntimeError(f"node did not start: {line!r}; log:\n{self.log_path.read_text()}")
        self.https_url = next((u for u in urls if u.startswith("https://")), "")
        self.url = next((u for u in urls if u.startswith("http://")), self.https_url)
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

    def get(self, path: str, headers: dict[str, str] | None = None, *,
            base: str | None = None) -> tuple[int, bytes, dict[str, str]]:
        """GET `path` from `base` (default `url`); https with `client_tls`."""
        url = (base or self.url) + path
        req = urllib.request.Request(url, headers=headers or {})
        context = self.client_tls if url.startswith("https://") else None
        try:
            with urllib.request.urlopen(req, timeout=60, context=context) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def admin(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        """GET an admin path with the node's admin token (when it has one)."""
        token = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else {}
        return self.get(path, token)

    def served(self) -> dict[str, int]:
        return dict(json.loads(self.admin("/admin/served")[1]))

    def metrics(self) -> dict[tuple[str, str], float]:
        return parse_metrics(self.get("/metrics")[1].decode())

    def metric_total(self, name: str) -> float:
        """A metric summed over every namespace it is exported for."""
        return sum(v for (metric, _), v in self.metrics().items() if metric == name)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
