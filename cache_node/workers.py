"""`--workers N`: one node served by N worker processes over one store.

The supervisor (the process `cache-node serve` started) binds each listener once to report a
bad address in one line and to learn a port the kernel chose, keeps it reserved (bound, not
listening) and forks the workers. Each worker binds its own socket on that port with
SO_REUSEPORT, so the kernel spreads new connections over the workers that listen, and runs a
whole node (`lifecycle.serve`) over the shared store; what must happen once per node happens
once because the workers coordinate through the store (`interprocess`, `fetch`, `plans`,
`apt_remote`, `metrics`). The supervisor prints the `listening on` lines when every worker
serves, forwards SIGHUP (each worker reloads) and SIGTERM/SIGINT (each drains), and replaces a
worker that dies; workers die with their supervisor (a `kill -9` of the node stops it whole).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import replace

from cache_node.config import ConfigSources, ListenAddress, NodeConfig
from cache_node.lifecycle import Listeners, serve
from cache_node.startup import StartupError, bind_listener, bound_url

log = logging.getLogger("cache_node")

READY_TIMEOUT = 600.0     # seconds the workers may take to start (an origin builds repos)
FAST_DEATH = 5.0          # a worker dying this soon after it started ...
MAX_FAST_DEATHS = 5       # ... this many times in a row stops the node
PR_SET_PDEATHSIG = 1


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _pinned(config: NodeConfig, listeners: Listeners) -> NodeConfig:
    """The configuration with the ports the supervisor's sockets really have (port 0)."""
    listen = config.listen
    if listen is not None and listeners.plain is not None:
        listen = ListenAddress(listen.host, _port(listeners.plain))
    tls = config.tls
    if tls.listen is not None and listeners.tls_socket is not None:
        tls = replace(tls, listen=ListenAddress(tls.listen.host, _port(listeners.tls_socket)))
    return replace(config, listen=listen, tls=tls)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Supervisor:
    def __init__(self, config: NodeConfig, sources: ConfigSources, listeners: Listeners) -> None:
        self.config = _pinned(config, listeners)
        self.sources = sources
        self.lines = [f"listening on {bound_url(s, scheme)}" for s, scheme in (
            (listeners.plain, "http"), (listeners.tls_socket, "https")) if s is not None]
        # Keep the ports reserved (bound, not listening: the kernel sends no connection to
        # them), then stop listening here: the workers listen.
        self.reserved = [bind_listener(a, reuse_port=True, listen=False) for a in (
            self.config.listen if listeners.plain is not None else None,
            self.config.tls.listen if listeners.tls_socket is not None else None) if a]
        listeners.close()
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> start time
        self.stopping = False
        self._ready_r, self._ready_w = os.pipe()

    # -- workers -----------------------------------------------------------------------------
    def spawn(self, index: int, replacement: bool = False) -> None:
        pid = os.fork()
        if pid:
            self.children[pid] = index
            self.started[index] = time.monotonic()
            return
        code = 1
        try:
            code = self._worker(index, replacement)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _worker(self, index: int, replacement: bool) -> int:
        _die_with_parent()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's server handles it
        os.close(self._ready_r)
        for sock in self.reserved:
            sock.close()
        ready_w = self._ready_w

        def ready(_lines: list[str]) -> None:
            os.write(ready_w, f"{index}\n".encode())

        try:
            listeners = Listeners.bind(self.config, reuse_port=True)
            try:
                asyncio.run(serve(self.config, self.sources, listeners, worker=index,
                                  on_ready=ready, replacement=replacement))
            finally:
                listeners.close()
        except StartupError as exc:
            print(" ".join(str(exc).split()), file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"cannot start: {(exc.strerror or str(exc)).lower()}", file=sys.stderr)
            return 1
        except Exception:
            log.exception("worker %d failed", index)
            return 1
        return 0

    # -- the supervisor ----------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        for index in range(self.config.workers):
            self.spawn(index)
        code = self._wait_ready()
        if code is not None:
            self._stop_all()
            return code
        print("\n".join(self.lines), flush=True)
        log.info("%s node serving with %d worker processes", self.config.role,
                 self.config.workers)
        return self._supervise()

    def _wait_ready(self) -> int | None:
        """None once every worker serves; else the exit status of one that could not."""
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT
        buffer = b""
        while len(ready) < self.config.workers:
            if self.stopping:
                return 0
            dead = self._reap()
            for _index, status in dead:
                return status or 1
            if time.monotonic() > deadline:
                log.error("workers did not start within %ss", READY_TIMEOUT)
                return 1
            readable, _, _ = select.select([self._ready_r], [], [], 0.1)
            if readable:
                buffer += os.read(self._ready_r, 4096)
                *done, buffer = buffer.split(b"\n")
                ready.update(int(x) for x in done if x.strip())
        return None

    def _reap(self) -> list[tuple[int, int]]:
        """Children that exited: (worker index, exit status)."""
        out = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.children.pop(pid, -1)
            code = os.waitstatus_to_exitcode(status)
            out.append((index, code))
        return out

    def _supervise(self) -> int:
        fast_deaths = 0
        while True:
            if self.stopping and not self.children:
                return 0
            for index, code in self._reap():
                if self.stopping:
                    continue
                how = f"signal {-code}" if code < 0 else f"status {code}"
                lived = time.monotonic() - self.started.get(index, 0.0)
                fast_deaths = fast_deaths + 1 if lived < FAST_DEATH else 0
                if fast_deaths > MAX_FAST_DEATHS:
                    log.error("worker %d keeps dying (%s); stopping the node", index, how)
                    self._stop_all()
                    return 1
                log.warning("worker %d exited (%s); starting a replacement", index, how)
                self.spawn(index, replacement=True)
            time.sleep(0.05)
            self._drain_ready()

    def _drain_ready(self) -> None:
        """Replacement workers announce themselves too; nobody needs to read it."""
        while select.select([self._ready_r], [], [], 0)[0]:
            if not os.read(self._ready_r, 4096):
                break

    def _on_stop(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.children))
        self.stopping = True
        self._forward(signum)

    def _on_hup(self, signum: int, _frame: object) -> None:
        self._forward(signum)

    def _forward(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def _stop_all(self) -> None:
        self.stopping = True
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.config.drain_timeout + 10
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        self._forward(signal.SIGKILL)
        self._reap()


def run_workers(config: NodeConfig, sources: ConfigSources, listeners: Listeners) -> int:
    """Serve `config` with `config.workers` processes until stopped; the exit status."""
    supervisor = Supervisor(config, sources, listeners)
    try:
        return supervisor.run()
    finally:
        for sock in supervisor.reserved:
            sock.close()
