"""Serving a node: its listeners, reload on SIGHUP, drain on SIGTERM/SIGINT.

Listeners: plain HTTP on `listen` and HTTPS on `tls.listen`, both bound before the
repositories are built (`startup.bind_listener`). Once serving, each prints one line on
standard output, plain first: `listening on http://HOST:PORT`, then
`listening on https://HOST:PORT` (with port 0, the port the kernel chose).

Reload (SIGHUP): the configuration is read again from the same places (`ConfigSources.load`).
An invalid file is refused in one log line and the running configuration stays. Otherwise
`config.plan_reload` keeps what needs a restart (listen addresses, store, role, built
repositories, signing key; logged in one line) and the rest is applied without dropping a
connection: the HTTPS listener's certificate, key and client CA for new handshakes, upstream
clients' sessions (timeouts, trust, client certificate) for new requests, the upstream URL of
every mirrored repository and of the image service, TTLs, quota, log level; `node.config` is
replaced in one assignment and `node.reload_listeners` run. Certificates are re-read on every
reload, so files renewed in place take effect too. Nothing is applied unless all of it loads.

Stop (SIGTERM, SIGINT): the listening sockets close at once (new connections are refused), idle
keep-alive connections close, and requests in flight get `drain_timeout` seconds to finish;
what is left is then cancelled, the node's own fetches too (their partial files are
discarded, so nothing partial is ever stored), and the process exits 0. A second signal cuts
the drain short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler

from cache_node.access_log import HotAccounting
from cache_node.config import ConfigError, ConfigSources, NodeConfig, client_settings, plan_reload
from cache_node.hot_path import HotProtocol
from cache_node.http_app import build_app
from cache_node.node import Node
from cache_node.startup import StartupError, bind_listener, bound_url
from cache_node.tls import ServerTls
from syncer.http_client import ssl_context

log = logging.getLogger("cache_node")

# After the drain: aiohttp waits this long for each handler, cancels it, and waits as long
# again for it to unwind.
ABORT_GRACE = 0.5


@dataclass
class Listeners:
    """The node's bound, listening sockets and the HTTPS listener's TLS."""

    plain: socket.socket | None
    tls_socket: socket.socket | None
    tls: ServerTls | None

    @classmethod
    def bind(cls, config: NodeConfig, reuse_port: bool = False) -> Listeners:
        """Bind every configured listener; StartupError (one line) when one cannot be.
        `reuse_port`: SO_REUSEPORT, so each worker process has its own socket on the port."""
        tls = None
        if config.tls.enabled:
            try:
                tls = ServerTls(config.tls)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise StartupError(f"cannot use TLS certificate {config.tls.cert}: "
                                   f"{_reason(exc)}") from None
        plain = bind_listener(config.listen, reuse_port=reuse_port) \
            if config.listen is not None else None
        try:
            tls_socket = bind_listener(config.tls.listen, reuse_port=reuse_port) \
                if config.tls.listen else None
        except StartupError:
            if plain is not None:
                plain.close()
            raise
        return cls(plain, tls_socket, tls)

    def close(self) -> None:
        for sock in (self.plain, self.tls_socket):
            if sock is not None:
                sock.close()


def _requests(n: int) -> str:
    return f"{n} request" if n == 1 else f"{n} requests"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


class _HotSite(web.SockSite):
    """A listener (plain or TLS) whose connections' protocol is `hot_path.HotProtocol` in
    front of aiohttp's (`runner.server()`), which answers every request the fast path does
    not."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket,
                 protocol: Callable[[Callable[[], asyncio.Protocol]], asyncio.Protocol],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context)
        self._protocol = protocol

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        framework = self._runner.server
        assert framework is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._protocol(framework), sock=self._sock, ssl=self._ssl_context,
            backlog=self._backlog)


class NodeServer:
    """Runs a started node on its listeners until SIGTERM/SIGINT; SIGHUP reloads."""

    def __init__(self, node: Node, sources: ConfigSources, listeners: Listeners,
                 on_ready: Callable[[list[str]], None] | None = None) -> None:
        """`on_ready(lines)` replaces printing the `listening on` lines (a worker process
        tells its supervisor, which prints them once every worker serves)."""
        self.on_ready = on_ready
        self.node = node
        self.sources = sources
        self.listeners = listeners
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()

    @web.middleware
    async def _track(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Counts requests in flight, so a stop knows when draining is done."""
        self._inflight += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()

    async def run(self) -> None:
        app = build_app(self.node)
        app.middlewares.insert(0, self._track)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=ABORT_GRACE)
        await runner.setup()
        try:
            sites: list[web.BaseSite] = []
            lines = []
            accounting = HotAccounting(app, self.node.metrics, self.node.store.touch)

            def hot(framework: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
                return HotProtocol(self.node.hot_answers, accounting, framework)

            if self.listeners.plain is not None:
                sites.append(_HotSite(runner, self.listeners.plain, hot))
                lines.append(f"listening on {bound_url(self.listeners.plain)}")
            if self.listeners.tls_socket is not None and self.listeners.tls is not None:
                sites.append(_HotSite(runner, self.listeners.tls_socket, hot,
                                      ssl_context=self.listeners.tls.context))
                lines.append(f"listening on {bound_url(self.listeners.tls_socket, 'https')}")
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_stop, sig)
            for site in sites:
                await site.start()
            if self.on_ready is not None:
                self.on_ready(lines)
            else:
                print("\n".join(lines), flush=True)
            config = self.node.config
            log.info("%s node serving, store %s", config.role, config.store_dir)
            await self._stop.wait()
            await self._drain(runner, sites)
        finally:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            for task in list(self._tasks):
                task.cancel()
            await runner.cleanup()

    # -- stop --------------------------------------------------------------------------------
    def _on_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("%s again: not waiting for the drain", sig.name)
            self._abort.set()
            return
        log.info("%s: stopping", sig.name)
        self._stop.set()

    async def _drain(self, runner: web.AppRunner, sites: list[web.BaseSite]) -> None:
        for site in sites:
            await site.stop()  # closes the listening socket: new connections are refused
        if runner.server is not None:
            runner.server.pre_shutdown()  # idle keep-alive connections close now
        timeout = self.node.config.drain_timeout
        if self._inflight:
            log.info("draining %s in flight for up to %gs", _requests(self._inflight), timeout)
        started = time.monotonic()
        idle = asyncio.ensure_future(self._idle.wait())
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait((idle, abort), timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
            abort.cancel()
        if self._inflight:
            log.warning("aborting %s still running after %.1fs of draining",
                        _requests(self._inflight), time.monotonic() - started)
        else:
            log.info("drained in %.1fs", time.monotonic() - started)

    # -- reload ------------------------------------------------------------------------------
    def _on_hup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self) -> bool:
        """Read the configuration again and apply what can change while serving; False (and
        nothing changed) when the new configuration is refused."""
        async with self._reload_lock:
            try:
                return await self._reload()
            except Exception:
                log.exception("reload failed")
                self.node.metrics.reloads.inc("refused")
                return False

    async def _reload(self) -> bool:
        where = self.sources.config_file or "flags and environment"
        try:
            loaded = await asyncio.to_thread(self.sources.load)
        except ConfigError as exc:
            return self._refuse(f"config error: {' '.join(str(exc).split())}")
        plan = plan_reload(self.node.config, loaded)
        config = plan.config
        if plan.needs_restart:
            log.warning("reload: %s changed in %s: needs a restart; keeping the running "
                        "value until then", ", ".join(plan.needs_restart), where)
        try:  # everything that can fail is loaded before anything is applied
            await asyncio.to_thread(ssl_context, client_settings(config))
        except (OSError, ssl.SSLError) as exc:
            return self._refuse(f"cannot load upstream TLS files: {_reason(exc)}")
        if self.listeners.tls is not None:
            try:
                self.listeners.tls.reload(config.tls)
            except (OSError, ssl.SSLError, ValueError) as exc:
                return self._refuse(f"cannot load TLS certificate {config.tls.cert}: "
                                    f"{_reason(exc)}")
        logging.getLogger().setLevel(config.log_level.upper())
        for warning in config.warnings:
            log.warning("config warning: %s", warning)
        await self.node.reconfigure(config)
        self.node.metrics.reloads.inc("applied")
        log.info("configuration reloaded from %s: %s", where,
                 f"changed {', '.join(plan.changed)}" if plan.changed
                 else "no setting changed (certificates re-read)")
        return True

    def _refuse(self, why: str) -> bool:
        log.error("reload refused, keeping the running configuration: %s", why)
        self.node.metrics.reloads.inc("refused")
        return False


async def serve(config: NodeConfig, sources: ConfigSources, listeners: Listeners,
                worker: int | None = None,
                on_ready: Callable[[list[str]], None] | None = None,
                replacement: bool = False) -> None:
    """Start the node, serve until stopped, stop it (its fetches cancelled, partials gone)."""
    node = Node(config, worker, replacement)
    try:
        await node.start()
        await NodeServer(node, sources, listeners, on_ready).run()
    finally:
        with contextlib.suppress(Exception):
            await node.stop()
