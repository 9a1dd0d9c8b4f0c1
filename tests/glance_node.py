"""`cache-node serve` with the Glance service wired in, for tests and benchmarks.

Until `Node.start` and `build_app` wire the image service themselves, this wraps them:
    python -m tests.glance_node serve --role origin --images DIR ...
Once they do, the wrappers notice (the node already has `glance`, the app already has
`/glance` routes) and change nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncer.node_process import NodeProcess

ROOT = Path(__file__).resolve().parent.parent


def _install() -> None:
    from aiohttp import web

    from cache_node import cli, node
    from cache_node.glance_core import make_glance_service
    from cache_node.glance_routes import add_glance_routes
    from cache_node.http_app import NODE_KEY

    original_start = node.Node.start
    original_build = cli.build_app  # type: ignore[attr-defined]

    async def start(self: Any) -> None:
        await original_start(self)
        if getattr(self, "glance", None) is None:
            self.glance = await make_glance_service(self.config, self.store, self.fetches,
                                                    self.metrics, self._exit)

    def build_app(n: Any) -> web.Application:
        app = original_build(n)
        if not any(str(r.url_for()).startswith("/glance") for r in app.router.resources()
                   if "{" not in r.canonical):
            add_glance_routes(app, lambda request: getattr(request.app[NODE_KEY], "glance", None))
        return app

    node.Node.start = start  # type: ignore[method-assign]
    cli.build_app = build_app  # type: ignore[attr-defined,assignment]


class GlanceNode(NodeProcess):
    """A node process (origin or cache) that serves `/glance`."""

    def start(self, timeout: float = 60.0) -> GlanceNode:
        self._log = open(self.log_path, "a")
        env = {**os.environ, **(self.env or {})}
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.glance_node", "serve", "--listen", "127.0.0.1:0",
             *self.args], stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
            cwd=str(ROOT))
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

    def __enter__(self) -> GlanceNode:
        return self.start()

    @property
    def glance(self) -> str:
        return self.url + "/glance"


def main(argv: Sequence[str] | None = None) -> int:
    _install()
    from cache_node import cli
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
