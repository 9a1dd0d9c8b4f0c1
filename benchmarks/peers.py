"""Start and stop the servers the benchmark compares, each in its own work directory.

* :class:`Origin` — nginx serving the repository with a per-connection rate limit (a WAN origin)
  and an access log from which upstream requests and bytes are counted.
* :class:`EdgedepotPeer` — ``cache-node serve --role cache`` in front of the origin.
* :class:`NginxCachePeer` — nginx ``proxy_cache`` with ``proxy_cache_lock on``.
* :class:`AptCacherNgPeer` — apt-cacher-ng in the foreground with a ``Remap-`` to the origin.
* :class:`NginxDirectPeer` — nginx serving the files from disk (the limit; no origin).

Every process is started in its own session and stopped by signalling that process group (its
PID), so only processes started here are ever signalled.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.dataset import REPO_URL_PREFIX

LOOPBACK = "127.0.0.1"
# apt-cacher-ng 3.7.4 can neither bind a port above 32767 nor connect to one (a Remap- backend
# on port 45125 made it connect to 63495), so every server here gets a port from this range,
# which is also below the kernel's ephemeral range.
PORT_RANGE = (20000, 32000)
LOG_FORMAT = "'$status\\t$body_bytes_sent\\t$request_method\\t$request_uri\\t$request_time'"


class PeerError(RuntimeError):
    """A server did not start, or died."""


def parse_rate(text: str) -> int:
    """nginx-style size per second: ``30m`` = 30 MiB/s, ``512k``, or plain bytes."""
    units = {"k": 1024, "m": 1024 * 1024, "g": 1024 * 1024 * 1024}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def free_port(lo: int = PORT_RANGE[0], hi: int = PORT_RANGE[1]) -> int:
    """A random port in ``[lo, hi]`` on loopback that nothing listens on."""
    for _ in range(200):
        port = random.randint(lo, hi)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise PeerError(f"no free port in {lo}-{hi}")


def wait_tcp(port: int, proc: ManagedProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise PeerError(f"{proc.name} exited with {proc.returncode()}:\n{proc.log_tail()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((LOOPBACK, port)) == 0:
                return
        time.sleep(0.05)
    raise PeerError(f"{proc.name} did not listen on port {port} within {timeout}s")


def rsync_daemon_config(work: Path, module: str, path: Path) -> Path:
    """An rsyncd.conf serving ``path`` read-only as ``module``, run as the owner of the files.

    Started as root, an rsync daemon drops to ``nobody`` by default and then cannot read files
    in a private temporary directory ("Permission denied", exit 23); an explicit uid/gid of the
    files' owner (root when root wrote them) reads them as the benchmark wrote them.
    """
    st = path.stat()
    conf = work / f"rsyncd-{module}.conf"
    conf.write_text(f"use chroot = no\nuid = {st.st_uid}\ngid = {st.st_gid}\n"
                    f"pid file = {work}/rsyncd-{module}.pid\nlog file = {work}/rsyncd-{module}.log\n"
                    f"[{module}]\npath = {path}\nread only = yes\n")
    return conf


def http_get_text(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode("utf-8", "replace")


class ManagedProcess:
    """A child process in its own session; output goes to log files in its work directory."""

    def __init__(
        self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.argv = argv
        self.stdout_path = workdir / f"{name}.stdout.log"
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                start_new_session=True, env=self.env,
            )

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise PeerError(f"{self.name} not started")
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout)
        # The group (nginx workers, ...) may outlive its leader for a moment.
        self._signal(signal.SIGKILL)
        self._proc = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        try:
            os.killpg(self._proc.pid, sig)  # the session we created: pgid == our child's pid
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 40) -> str:
        parts: list[str] = []
        for path in (self.stdout_path, self.stderr_path):
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()
                if text:
                    parts.append(f"--- {path.name} (last {lines} lines)")
                    parts.extend(text[-lines:])
        return "\n".join(parts)


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def package_version(package: str) -> str:
    """The installed Debian package's version (never runs the program itself: running
    ``apt-cacher-ng --version`` starts a daemon on port 3142)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "not installed"


class NginxInstance:
    """One nginx master (foreground) with its own prefix, config and logs."""

    def __init__(self, name: str, workdir: Path, server_body: str, http_extra: str = "",
                 workers: str = "auto", tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: (certificate, key) PEM files: the server listens with `ssl` (HTTPS)."""
        self.name = name
        self.workdir = workdir
        self.server_body = server_body
        self.http_extra = http_extra
        self.workers = workers
        self.tls = tls
        self.port = 0
        self.access_log = workdir / "logs" / "access.log"
        self.process: ManagedProcess | None = None

    def start(self) -> None:
        _fresh_dir(self.workdir)
        for sub in ("logs", "tmp"):
            (self.workdir / sub).mkdir()
        self.port = free_port()
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._config(), encoding="utf-8")
        error_log = self.workdir / "logs" / "error.log"
        argv = ["nginx", "-p", str(self.workdir), "-c", str(conf), "-e", str(error_log)]
        self.process = ManagedProcess(self.name, argv, self.workdir)
        self.process.start()
        wait_tcp(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _config(self) -> str:
        d = self.workdir
        user = "user root root;" if os.geteuid() == 0 else ""
        tls = f"ssl_certificate {self.tls[0]};\n        ssl_certificate_key {self.tls[1]};" \
            if self.tls else ""
        return f"""{user}
worker_processes {self.workers};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    default_type application/octet-stream;
    log_format bench {LOG_FORMAT};
    access_log {self.access_log} bench;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    {self.http_extra}
    server {{
        listen {LOOPBACK}:{self.port}{" ssl" if self.tls else ""} backlog=4096;
        server_name _;
        {tls}
        {self.server_body}
    }}
}}
"""

    def error_log_tail(self, lines: int = 20) -> str:
        path = self.workdir / "logs" / "error.log"
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass(frozen=True)
class UpstreamStats:
    """What the origin's access log says a peer asked for."""

    requests: int
    body_bytes: int
    non_200: int
    duplicate_paths: int  # distinct paths requested more than once


class Origin:
    """nginx serving the repository at ``/apt/bench/``, behind a relay paced at ``rate`` B/s.

    nginx also has ``limit_rate`` set (it only bites after the first second of a request; see
    :mod:`benchmarks.wan`), and its access log records status, body bytes and path per request.
    """

    def __init__(self, workdir: Path, repo_root: Path, rate: int) -> None:
        self.workdir = workdir
        self.rate = rate
        body = f"location {REPO_URL_PREFIX} {{ alias {repo_root}/; limit_rate {rate}; }}"
        self.nginx = NginxInstance("origin", workdir / "nginx", body)
        self.relay: ManagedProcess | None = None
        self.relay_port = 0

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.nginx.start()
        self.relay_port = free_port()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        argv = [sys.executable, "-m", "benchmarks.wan", "--listen-port", str(self.relay_port),
                "--target-port", str(self.nginx.port), "--rate", str(self.rate)]
        self.relay = ManagedProcess("wan-relay", argv, self.workdir, env)
        self.relay.start()
        try:
            wait_tcp(self.relay_port, self.relay)
        except PeerError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        self.nginx.stop()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.relay_port}"

    def log_offset(self) -> int:
        path = self.nginx.access_log
        return path.stat().st_size if path.is_file() else 0

    def stats(self, since: int = 0) -> UpstreamStats:
        path = self.nginx.access_log
        data = path.read_bytes()[since:] if path.is_file() else b""
        requests = body = non_200 = 0
        seen: dict[str, int] = {}
        for line in data.decode("utf-8", "replace").splitlines():
            fields = line.split("\t")
            if len(fields) < 4:
                continue
            requests += 1
            body += int(fields[1])
            if fields[0] != "200":
                non_200 += 1
            seen[fields[3]] = seen.get(fields[3], 0) + 1
        duplicates = sum(1 for count in seen.values() if count > 1)
        return UpstreamStats(requests, body, non_200, duplicates)


class Peer:
    """A server clients fetch the repository from; ``base_url`` ends with ``/``."""

    name = "peer"
    label = "peer"
    needs_origin = True

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.base_url = ""

    def start(self, upstream_url: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def diagnostics(self) -> str:
        return ""


class NginxCachePeer(Peer):
    name = "nginx-cache"
    label = "nginx proxy_cache (lock on)"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.nginx: NginxInstance | None = None

    def start(self, upstream_url: str) -> None:
        cache = self.workdir / "cache"
        upstream_host = upstream_url.removeprefix("http://").rstrip("/")
        http_extra = (
            f"proxy_cache_path {cache} levels=1:2 keys_zone=bench:16m max_size=50g inactive=7d "
            f"use_temp_path=off;\n"
            f"    upstream origin {{ server {upstream_host}; keepalive 32; }}"
        )
        body = f"""location {REPO_URL_PREFIX} {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_key $uri;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 1h;
            proxy_cache_lock_age 1h;
            proxy_cache_valid 200 1h;
            proxy_buffering on;
            proxy_buffer_size 64k;
            proxy_buffers 32 64k;
            proxy_busy_buffers_size 256k;
            proxy_read_timeout 300s;
            add_header X-Cache-Status $upstream_cache_status;
        }}"""
        self.nginx = NginxInstance("nginx-cache", self.workdir, body, http_extra)
        self.nginx.start()
        self.base_url = f"http://{LOOPBACK}:{self.nginx.port}{REPO_URL_PREFIX}"

    def stop(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()

    def diagnostics(self) -> str:
        return self.nginx.error_log_tail() if self.nginx is not None else ""


class NginxDirectPeer(Peer):
    name = "nginx-direct"
    label = "nginx from disk (limit)"
    needs_origin = False

    def __init__(self, workdir: Path, repo_root: Path) -> None:
        super().__init__(workdir)
        body = f"location {REPO_URL_PREFIX} {{ alias {repo_root}/; }}"
        extra = "open_file_cache max=10000 inactive=60s;"
        self.nginx = NginxInstance("nginx-direct", workdir, body, extra)

    def start(self, upstream_url: str) -> None:
        self.nginx.start()
        self.base_url = f"http://{LOOPBACK}:{self.nginx.port}{REPO_URL_PREFIX}"

    def stop(self) -> None:
        self.nginx.stop()

    def diagnostics(self) -> str:
        return self.nginx.error_log_tail()


class AptCacherNgPeer(Peer):
    name = "apt-cacher-ng"
    label = "apt-cacher-ng"
    remap_prefix = "/bench"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.process: ManagedProcess | None = None

    def start(self, upstream_url: str) -> None:
        last_error: Exception | None = None
        for _ in range(5):  # a random port can be taken between the probe and the bind
            _fresh_dir(self.workdir)
            port = free_port()
            self._write_config(port, upstream_url)
            argv = ["apt-cacher-ng", "-c", str(self.workdir / "conf"), "ForeGround=1"]
            self.process = ManagedProcess("apt-cacher-ng", argv, self.workdir)
            self.process.start()
            try:
                wait_tcp(port, self.process)
            except PeerError as exc:
                last_error = exc
                self.process.stop()
                continue
            self.base_url = f"http://{LOOPBACK}:{port}{self.remap_prefix}/"
            return
        raise PeerError(f"apt-cacher-ng did not start: {last_error}")

    def _write_config(self, port: int, upstream_url: str) -> None:
        d = self.workdir
        for sub in ("conf", "cache", "log"):
            (d / sub).mkdir()
        backend = upstream_url.rstrip("/") + REPO_URL_PREFIX.rstrip("/")
        (d / "conf" / "acng.conf").write_text(
            f"""CacheDir: {d}/cache
LogDir: {d}/log
SupportDir: /usr/lib/apt-cacher-ng
Port: {port}
BindAddress: {LOOPBACK}
SocketPath: {d}/acng.socket
PidFile: {d}/acng.pid
ForeGround: 1
ExThreshold: 4
UnbufferLogs: 1
Remap-bench: {self.remap_prefix} ; {backend}
""",
            encoding="utf-8",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def diagnostics(self) -> str:
        path = self.workdir / "log" / "apt-cacher.err"
        text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
        return "\n".join(text.splitlines()[-20:])


_LISTENING = re.compile(r"listening on (http://[0-9.]+:\d+)")


class EdgedepotPeer(Peer):
    name = "edgedepot"
    label = "edgedepot cache node"

    def __init__(self, workdir: Path, cache_node_bin: Path, start_timeout: float = 30.0) -> None:
        super().__init__(workdir)
        self.bin = cache_node_bin
        self.start_timeout = start_timeout
        self.process: ManagedProcess | None = None
        self.url = ""

    def start(self, upstream_url: str) -> None:
        _fresh_dir(self.workdir)
        store = self.workdir / "store"
        argv = [str(self.bin), "serve", "--role", "cache", "--listen", f"{LOOPBACK}:0",
                "--store", str(store), "--upstream", upstream_url]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = ManagedProcess("edgedepot", argv, self.workdir, env)
        self.process.start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            text = self.process.stdout_path.read_text(encoding="utf-8", errors="replace")
            first = text.splitlines()[0] if text.splitlines() else ""
            match = _LISTENING.search(first)
            if match:
                self.url = match.group(1)
                self.base_url = self.url + REPO_URL_PREFIX
                self._wait_healthy(deadline)
                return
            if not self.process.alive():
                break
            time.sleep(0.05)
        tail = self.process.log_tail()
        self.process.stop()
        raise PeerError(f"edgedepot did not print 'listening on ...' ({' '.join(argv)}):\n{tail}")

    def _wait_healthy(self, deadline: float) -> None:
        status = 0
        body = ""
        while time.monotonic() < deadline:
            try:
                status, body = http_get_text(self.url + "/healthz", timeout=2.0)
            except OSError as exc:
                body = str(exc)
            if status == 200:
                return
            time.sleep(0.1)
        raise PeerError(f"edgedepot /healthz not 200 (last: {status} {body[:200]!r})")

    def metrics(self) -> str:
        try:
            _, body = http_get_text(self.url + "/metrics")
        except OSError as exc:
            return f"# /metrics failed: {exc}"
        return body

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def diagnostics(self) -> str:
        return self.process.log_tail() if self.process is not None else ""
