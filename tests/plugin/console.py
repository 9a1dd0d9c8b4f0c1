"""The console as a process, for tests: `distro-sync console` on 127.0.0.1 with a free port."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

DISTRO_SYNC = str(Path(sys.executable).parent / "distro-sync")


class ConsoleProcess:
    """`distro-sync console INVENTORY --listen 127.0.0.1:0`, stopped by PID."""

    def __init__(self, inventory: Path, log_path: Path, interval: float = 1.0,
                 args: tuple[str, ...] = (), headers: dict[str, str] | None = None,
                 cafile: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.inventory = inventory
        self.log_path = log_path
        self.interval = interval
        self.args = args
        self.headers = dict(headers or {})  # sent with every `get` (e.g. a viewer token)
        self.context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> Self:
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [DISTRO_SYNC, "console", str(self.inventory), "--listen", "127.0.0.1:0",
             "--interval", str(self.interval), *self.args], stdout=subprocess.PIPE,
            stderr=self._log, text=True, env={**os.environ, **(self.env or {})})
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line:
            line = self.proc.stdout.readline()
            if self.proc.poll() is not None:
                break
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"console did not start: {line!r}\n{self.log_path.read_text()}")
        self.url = line.split()[-1].rstrip("/")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url + path,
                                         headers=self.headers if headers is None else headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def wait_for(self, path: str, check: Any, timeout: float = 90.0) -> Any:
        """Poll `path` until `check(document)` is true; the last document otherwise fails."""
        deadline = time.monotonic() + timeout
        doc = None
        while time.monotonic() < deadline:
            doc = self.json(path)
            if check(doc):
                return doc
            time.sleep(0.5)
        raise AssertionError(f"{path} never satisfied the check; last: {json.dumps(doc)[:2000]}")

    def wait_for_text(self, path: str, needle: str, timeout: float = 60.0,
                      headers: dict[str, str] | None = None) -> str:
        """Poll `path` until its body (status 200) contains `needle`; the body."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            status, body = self.get(path, headers)
            text = body.decode(errors="replace")
            if status == 200 and needle in text:
                return text
            time.sleep(0.5)
        raise AssertionError(f"{path} never contained {needle!r}; last: {text[:2000]}")
