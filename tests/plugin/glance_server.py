"""A real Glance API server for tests and benchmarks: glance from PyPI under gunicorn.

The Glance virtual environment is built once (minutes) and reused, keyed by the version pin:
    /var/tmp/edgedepot-glance-venv-<GLANCE_VERSION>/
(override the parent directory with EDGEDEPOT_GLANCE_VENV_DIR). Each server gets a fresh
config directory (OS_GLANCE_CONFIG_DIR), a sqlite database (`glance-manage db_sync`), a file
store and an image cache directory (so the cache-management API exists), and binds to
127.0.0.1 on a free port. It is started and stopped by PID.

Identity without Keystone: the paste pipeline is Glance's own `keystone` pipeline with
keystonemiddleware replaced by `edgedepot_tokens`, a 30-line WSGI filter written next to the
config. It maps `X-Auth-Token` to the identity headers keystonemiddleware would set
(`X-Identity-Status: Confirmed`, `X-Project-Id`, `X-Roles`, `X-User-Id`) from `tokens.json`,
drops any identity headers a client sent itself, answers 401 for an unknown token and leaves
requests without a token unauthenticated (Glance's ContextMiddleware then answers 401, since
anonymous access is off). Glance's default (secure RBAC) policies then apply unchanged:
`member`/`reader` of a project see their own and public images, `admin` manages the cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

GLANCE_VERSION = "33.0.0"
GUNICORN_VERSION = "23.0.0"


class GlanceUnavailable(RuntimeError):
    """The Glance environment cannot be built here (tests skip with this reason)."""


def venv_dir() -> Path:
    parent = Path(os.environ.get("EDGEDEPOT_GLANCE_VENV_DIR", "/var/tmp"))
    return parent / f"edgedepot-glance-venv-{GLANCE_VERSION}"


def ensure_glance_venv(timeout: float = 1800.0) -> Path:
    """Build (once) and return the Glance venv; raise GlanceUnavailable when impossible.

    Built in place under an exclusive lock; `.edgedepot-ready` is written last, so a venv
    without it (an interrupted build) is removed and built again.
    """
    target = venv_dir()
    marker = target / ".edgedepot-ready"
    if marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(target)], check=True,
                           capture_output=True, timeout=300)
            proc = subprocess.run(
                [str(target / "bin" / "pip"), "install", "-q", f"glance=={GLANCE_VERSION}",
                 f"gunicorn=={GUNICORN_VERSION}"],
                capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise GlanceUnavailable(f"cannot build the Glance venv: {exc}") from None
        if proc.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise GlanceUnavailable("pip could not install glance: " + proc.stderr[-2000:])
        marker.write_text(GLANCE_VERSION + "\n")
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


TOKEN_FILTER = '''"""Stand-in for keystonemiddleware: X-Auth-Token -> identity headers (tests only)."""
import json

IDENTITY = ("HTTP_X_IDENTITY_STATUS", "HTTP_X_PROJECT_ID", "HTTP_X_TENANT_ID", "HTTP_X_ROLES",
            "HTTP_X_ROLE", "HTTP_X_USER_ID", "HTTP_X_USER", "HTTP_X_SYSTEM_SCOPE",
            "HTTP_X_DOMAIN_ID", "HTTP_X_PROJECT_DOMAIN_ID", "HTTP_X_SERVICE_ROLES")


def filter_factory(global_conf, **local_conf):
    path = local_conf["tokens_file"]

    def make(app):
        def middleware(environ, start_response):
            for key in IDENTITY:
                environ.pop(key, None)
            token = environ.get("HTTP_X_AUTH_TOKEN")
            if token:
                with open(path) as fh:
                    grant = json.load(fh).get(token)
                if grant is None:
                    start_response("401 Unauthorized", [("Content-Type", "text/plain")])
                    return [b"invalid token"]
                environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed"
                environ["HTTP_X_PROJECT_ID"] = grant["project"]
                environ["HTTP_X_ROLES"] = ",".join(grant["roles"])
                environ["HTTP_X_USER_ID"] = grant.get("user", "user-" + grant["project"])
            else:
                environ["HTTP_X_IDENTITY_STATUS"] = "Invalid"
            return app(environ, start_response)
        return middleware
    return make
'''

PASTE_INI = """[composite:glance-api]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
default = http_proxy_to_wsgi versionnegotiation edgedepot_tokens context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {conf}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:edgedepot_tokens]
paste.filter_factory = edgedepot_tokens:filter_factory
tokens_file = {conf}/tokens.json

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""

API_CONF = """[DEFAULT]
debug = false
use_stderr = true
image_cache_dir = {work}/image-cache
worker_self_reference_url = {url}
enabled_import_methods = []
show_image_direct_url = false
image_size_cap = 17179869184
user_storage_quota = 0

[database]
connection = sqlite:///{work}/glance.sqlite

[paste_deploy]
config_file = {conf}/glance-api-paste.ini

[glance_store]
stores = file
default_store = file
filesystem_store_datadir = {work}/images

[oslo_policy]
enforce_new_defaults = true
enforce_scope = true

[oslo_concurrency]
lock_path = {work}/locks
"""


@dataclass(frozen=True)
class Grant:
    project: str
    roles: tuple[str, ...]


@dataclass
class GlanceServer:
    """A running Glance API (`glance.wsgi.api:application` under gunicorn)."""

    work: Path
    tokens: dict[str, Grant] = field(default_factory=dict)
    url: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> GlanceServer:
        venv = ensure_glance_venv()
        conf = self.work / "etc"
        for sub in ("etc", "images", "image-cache", "locks"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        fmt = {"work": self.work, "conf": conf, "url": self.url}
        (conf / "glance-api.conf").write_text(API_CONF.format(**fmt))
        (conf / "glance-api-paste.ini").write_text(PASTE_INI.format(**fmt))
        (conf / "edgedepot_tokens.py").write_text(TOKEN_FILTER)
        self.write_tokens()
        env = {**os.environ, "OS_GLANCE_CONFIG_DIR": str(conf), "PYTHONPATH": str(conf)}
        env.pop("VIRTUAL_ENV", None)
        log = open(self.work / "glance.log", "ab")
        sync = subprocess.run([str(venv / "bin" / "glance-manage"), "--config-dir", str(conf),
                               "db_sync"], env=env, stdout=log, stderr=log, timeout=300)
        if sync.returncode != 0:
            raise RuntimeError(f"glance-manage db_sync failed; see {self.work / 'glance.log'}")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "2",
             "--threads", "8", "--timeout", "600", "--chdir", str(conf),
             "glance.wsgi.api:application"],
            env=env, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("glance exited at start:\n" + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + "/versions", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("glance did not answer in time:\n" + self.log_tail())

    def log_tail(self, n: int = 4000) -> str:
        path = self.work / "glance.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def write_tokens(self) -> None:
        doc = {t: {"project": g.project, "roles": list(g.roles)} for t, g in self.tokens.items()}
        (self.work / "etc" / "tokens.json").write_text(json.dumps(doc))

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> GlanceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- a tiny client for setting up images ---------------------------------------------------
    def request(self, method: str, path: str, token: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"X-Auth-Token": token,
                                              "Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, timeout=600) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def create_image(self, token: str, name: str, data: bytes | Path, visibility: str = "private",
                     **props: str) -> dict[str, object]:
        """Create an image and upload its data; returns Glance's record of the active image."""
        record = {"name": name, "disk_format": "raw", "container_format": "bare",
                  "visibility": visibility, **props}
        status, body = self.request("POST", "/v2/images", token, json.dumps(record).encode())
        if status != 201:
            raise RuntimeError(f"create image: {status} {body[:500]!r}")
        image_id = json.loads(body)["id"]
        payload = data.read_bytes() if isinstance(data, Path) else data
        status, body = self.request("PUT", f"/v2/images/{image_id}/file", token, payload,
                                    "application/octet-stream")
        if status != 204:
            raise RuntimeError(f"upload image: {status} {body[:500]!r}")
        status, body = self.request("GET", f"/v2/images/{image_id}", token)
        doc: dict[str, object] = json.loads(body)
        if doc.get("status") != "active":
            raise RuntimeError(f"image not active after upload: {doc}")
        assert doc["checksum"] == hashlib.md5(payload).hexdigest()
        return doc
