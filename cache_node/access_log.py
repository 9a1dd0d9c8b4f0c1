"""The access log: one line per request, as text or JSON, appended to a file or standard output.

Each line has the time the request arrived (UTC), the client address, method, path, status,
body bytes sent, duration in seconds and the cache status: `hit`, `miss` (this request started
the upstream fetch), `coalesced` (it joined a fetch another request had started), `stale`
(served from the last good snapshot while the upstream is unusable), `delta` (built by a delta
fetch while answering) or `-` (not content: JSON, pages, errors). Text lines are eight fields
separated by single spaces (the path as the client sent it, percent-encoded, so it has no
spaces):

    2025-05-01T12:00:00.123Z 127.0.0.1 GET /apt/main/pool/h/hello_1.0_all.deb 200 4096 0.0031 hit

JSON lines carry the same values under `time`, `client`, `method`, `path`, `status`, `bytes`,
`duration`, `cache`. Headers and query strings are never logged, so neither a bearer token nor
a Glance `X-Auth-Token` can end up here. `reopen()` opens the file again (after logrotate moved
it; the SIGHUP handler calls it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import IO, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from cache_node.admin_auth import ACCESS_POLICY
from cache_node.client_stats import client_stats
from cache_node.config import NodeConfig
from cache_node.hot_path import HotEntry
from cache_node.metrics import Metrics
from cache_node.request_note import NOTE_KEY, RequestNote

log = logging.getLogger(__name__)

Format = Literal["text", "json"]


@dataclass(frozen=True)
class AccessEntry:
    time: str
    client: str
    method: str
    path: str
    status: int
    bytes: int
    duration: float
    cache: str

    @staticmethod
    def of(arrived: float, started: float, client: str, method: str, path: str, status: int,
           size: int, cache: str) -> AccessEntry:
        """An entry for a request that arrived at `arrived` (wall clock) and whose answer
        started at `started` (monotonic); fields made printable."""
        return AccessEntry(
            datetime.fromtimestamp(arrived, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"), _printable(client), _printable(method), _printable(path),
            status, size, round(time.monotonic() - started, 6), cache)

    def line(self, fmt: Format) -> str:
        if fmt == "json":
            return json.dumps(asdict(self), separators=(",", ":"))
        return (f"{self.time} {self.client} {self.method} {self.path} {self.status} "
                f"{self.bytes} {self.duration:.4f} {self.cache}")


def _printable(text: str) -> str:
    """Whitespace and control characters percent-encoded: one field, one line, always."""
    return "".join(c if c.isprintable() and not c.isspace() else
                   "".join(f"%{b:02X}" for b in c.encode()) for c in text) or "-"


class AccessLog:
    """Appends entries to `target` (a path, or "-" for standard output), line-buffered."""

    def __init__(self, target: str, fmt: Format = "text") -> None:
        self.target = target
        self.format: Format = fmt
        self._file: IO[str] | None = None
        self._failing = False

    def open(self) -> None:
        if self.target == "-":
            self._file = sys.stdout
        else:
            self._file = open(self.target, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        """Close and open the target again (log rotation); standard output stays as it is."""
        old, self._file = self._file, None
        if old is not None and old is not sys.stdout:
            old.close()
        try:
            self.open()
        except OSError as exc:
            log.error("access log %s: cannot reopen: %s", self.target, exc)

    def reconfigure(self, old: NodeConfig, new: NodeConfig) -> None:
        """A reload listener: reopen (logrotate moved the file), at the path and in the format
        the reloaded configuration gives (`plan_reload` keeps the log on or off)."""
        if new.access_log is not None:
            self.target = new.access_log
        self.format = new.access_log_format
        self.reopen()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stdout:
            self._file.close()
        self._file = None

    def write(self, entry: AccessEntry) -> None:
        if self._file is None:
            return
        try:
            self._file.write(entry.line(self.format) + "\n")
            if self._file is sys.stdout:
                self._file.flush()
            self._failing = False
        except OSError as exc:
            if not self._failing:  # once per failure streak, not once per request
                log.error("access log %s: cannot write: %s", self.target, exc)
            self._failing = True


ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log", AccessLog)


def access_log(app: web.Application) -> AccessLog | None:
    """The app's access log (None when it is off); the SIGHUP handler calls `.reopen()`."""
    return app.get(ACCESS_LOG)


def _body_bytes(request: web.Request, response: web.StreamResponse, note: RequestNote) -> int:
    if note.sent is not None:
        return note.sent
    if request.method == "HEAD":
        return 0
    if isinstance(response, web.Response):
        body = response.body
        return len(body) if isinstance(body, (bytes, bytearray)) else \
            (response.content_length or 0)
    return response.content_length or 0


def install_access_log(app: web.Application, config: NodeConfig) -> AccessLog | None:
    """Log every request when `access_log` is set: inserted as the outermost middleware, so
    requests refused by the allow-list or token checks are logged too. The middleware sends
    plain responses itself, so duration and bytes cover the whole answer. It is installed
    with the log off too: the per-client counters (`client_stats.py`) take the same values.
    Behind a trusted proxy (`trusted_proxies`) every later middleware and handler sees the
    client the proxy names as `request.remote` (allow list, admin checks, log, counts)."""
    clients = client_stats(app)
    policy = app[ACCESS_POLICY]  # the live configuration (reloads update it)
    sink: AccessLog | None = None
    if config.access_log is not None:
        sink = AccessLog(config.access_log, config.access_log_format)
        sink.open()
        app[ACCESS_LOG] = sink

        async def close(_: web.Application) -> None:
            assert sink is not None
            sink.close()

        app.on_cleanup.append(close)

    @web.middleware
    async def logged(request: web.Request, handler: Handler) -> web.StreamResponse:
        if policy.config.trusted_proxies:  # behind a load balancer: the client it names
            peer = request.remote or ""
            # every X-Forwarded-For line, in order: a proxy may add its own line after the
            # client's rather than append to it
            hops = ",".join(request.headers.getall("X-Forwarded-For", ()))
            client = policy.config.client_address(peer, hops)
            if client != peer:
                request = request.clone(remote=client)
        arrived = time.time()
        started = time.monotonic()
        note = RequestNote()
        request[NOTE_KEY] = note
        status, size = 500, 0
        try:
            response = await handler(request)
            if not response.prepared:
                try:
                    await response.prepare(request)
                    await response.write_eof()
                except ConnectionError:
                    pass  # the client left; aiohttp gives up on the response itself
            status, size = response.status, _body_bytes(request, response, note)
            return response
        except web.HTTPException as exc:  # redirects are raised, not returned
            status, size = exc.status, _body_bytes(request, exc, note)
            raise
        except (asyncio.CancelledError, ConnectionError):
            status, size = 499, note.sent or 0  # the client left mid-answer
            raise
        finally:
            client = _printable(request.remote or "-")
            if sink is not None:  # the log line first: readers of the log wait for nothing else
                sink.write(AccessEntry.of(arrived, started, client, request.method,
                                          request.raw_path.split("?", 1)[0], status, size,
                                          note.cache))
            clients.record(client, request.path, status, size, note.cache)

    app.middlewares.insert(0, logged)
    return sink


class HotAccounting:
    """Counts and logs each answer `hot_path` sends itself exactly as the middlewares above
    and `send_answer` do for the same answer on the normal path."""

    def __init__(self, app: web.Application, metrics: Metrics,
                 touch: Callable[[str], None]) -> None:
        self.policy = app[ACCESS_POLICY]
        self.metrics = metrics
        self.touch = touch
        self.clients = client_stats(app)
        self.app = app

    def allowed(self, client: str) -> bool:
        return self.policy.config.client_allowed(client)

    def proxies_trusted(self) -> bool:
        return bool(self.policy.config.trusted_proxies)

    def served(self, entry: HotEntry, client: str, arrived: float, started: float) -> None:
        metrics, namespace, size = self.metrics, entry.namespace, len(entry.body)
        metrics.requests.inc(namespace)
        metrics.hot_answers.inc(namespace)
        if entry.counts_hit:
            metrics.hits.inc(namespace)
        metrics.served_bytes.inc(namespace, size)
        metrics.count_served_path(entry.path)
        if entry.digest is not None:
            self.touch(entry.digest)
        sink = self.app.get(ACCESS_LOG)
        if sink is not None:
            sink.write(AccessEntry.of(arrived, started, client, "GET", entry.raw_path, 200,
                                      size, "hit"))
        self.clients.record(_printable(client), entry.path, 200, size, "hit")
