"""Checks that run before a node starts serving, so operator mistakes end in one clear line.

Each check raises `StartupError` whose message is the whole line the CLI prints, e.g.
`cannot listen on 127.0.0.1:8080: address already in use`. The port is bound before the
repositories are built, so a second node on the same port fails at once, not minutes later.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from cache_node.config import ListenAddress


class StartupError(RuntimeError):
    """The node cannot start; the message is one line naming what and why."""


def reason(exc: OSError) -> str:
    """`address already in use`, `permission denied`: the errno text, lower case."""
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def bind_listener(address: ListenAddress, backlog: int = 1024, *, reuse_port: bool = False,
                  listen: bool = True) -> socket.socket:
    """A bound, listening TCP socket for `address` (IPv4, IPv6 or a host name).
    `reuse_port`: the worker processes of one node each bind the port (SO_REUSEPORT; the
    kernel spreads new connections over the listening ones); `listen=False` only reserves it."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" \
            if exc.errno == errno.EACCES and address.port < 1024 else ""
        raise StartupError(f"cannot listen on {address}: {reason(exc)}{hint}") from None
    return sock


def bound_url(sock: socket.socket, scheme: str = "http") -> str:
    """`http://HOST:PORT` of a bound socket (the real port when 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def check_store_dir(path: Path) -> None:
    """The store directory exists (created if needed) and a file can be written in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create store directory {path}: {reason(exc)}") from None
    if not path.is_dir():
        raise StartupError(f"cannot use store directory {path}: not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            os.write(fd, b"edgedepot")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise StartupError(f"cannot write to store directory {path}: {reason(exc)}") from None
