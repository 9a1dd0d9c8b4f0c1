"""Start and stop `cache-node serve` processes (demo, scheduler tooling, tests)."""

from __future__ import annotations

import json
import os
import signal
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
    """A `cache-node serve` subprocess on 127.0.0.1 with a free port; stopped by PID."""

    def __init__(self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 *, listen: str = "127.0.0.1:0", prefix: Sequence[str] = (),
                 admin_token: str | None = None):
        """`prefix` runs the node through another program that execs it (`ip netns exec NS`),
        so the PID stays the node's own. `admin_token` (default: the one `env` gives the node)
        goes with the admin calls of `served()` and `admin()`."""
        self.admin_token = admin_token or (env or {}).get("EDGEDEPOT_ADMIN_TOKEN")
        self.args = list(args)
        self.log_path = log_path
        self.env = env
        self.listen = listen
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> Self:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [*self.prefix, CACHE_NODE, "serve", "--listen", self.listen, *self.args],
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
