"""A running node and its signals, with real node processes and real clients: SIGHUP moves the
upstream to another origin while clients download (nothing stored is fetched again), refuses
a broken file, reports what needs a restart, reloads the HTTPS certificate and client CA for
new connections without dropping open ones; SIGTERM/SIGINT drain in-flight downloads, then
abort what is left and exit, leaving no partial file in the store."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distro.debian_repo import BuiltRepository, PoolEntry, parse_packages
from distro.glance_images import write_image
from syncer.demo.sample_repo import SampleAptRepo
from tests.plugin.pki import FleetPki
from tests.plugin.support import (
    CACHE_NODE,
    AptRoot,
    FakeUpstream,
    Fault,
    NodeProcess,
    TcpRelay,
    sha256_file,
    wait_until,
)
from tests.test_pip_e2e import pip_env, run

pytestmark = pytest.mark.integration

PACKAGES = "/apt/main/dists/stable/main/binary-amd64/Packages"
TOKEN = "tok-lifecycle-a"


def reloads(node: NodeProcess, result: str) -> float:
    return node.metrics().get(("edgedepot_config_reloads_total", result), 0.0)


def sighup(node: NodeProcess, result: str = "applied") -> None:
    """Send SIGHUP and wait until the node counted one more reload with `result`."""
    before = reloads(node, result)
    os.kill(node.pid, signal.SIGHUP)
    wait_until(lambda: reloads(node, result) > before, f"a reload ({result})")


def write_toml(path: Path, **values: object) -> None:
    lines = []
    for key, value in values.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in value.items()]
        else:
            lines.insert(0, f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


def pool_entries(node: NodeProcess) -> list[PoolEntry]:
    """A node's packages, smallest first."""
    status, body, _ = node.get(PACKAGES)
    assert status == 200
    return sorted(parse_packages(body, "Packages"), key=lambda e: e.size)


def apt_download(apt: AptRoot, into: Path, *packages: str) -> list[Path]:
    """`apt-get download` (these packages alone, no dependencies) into a directory."""
    into.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["apt-get", *apt.options(), "download", *packages], cwd=into,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sorted(into.glob("*.deb"))


@dataclass
class Download:
    """A GET through a node in a thread: what arrived, and how it ended."""

    url: str
    context: ssl.SSLContext | None = None
    body: bytearray = field(default_factory=bytearray)
    error: BaseException | None = None
    status: int = 0

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=300, context=self.context) as resp:
                self.status = resp.status
                while chunk := resp.read(16 << 10):
                    self.body += chunk
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"download of {self.url} did not end"


def inflight(node: NodeProcess) -> float:
    return node.metrics().get(("edgedepot_inflight_fetches", ""), 0.0)


# --------------------------------------------------------------------------- moving upstream


@pytest.fixture
def two_origins(sample_apt: SampleAptRepo, wheel_dir: Path, tmp_path: Path
                ) -> Iterator[tuple[NodeProcess, NodeProcess]]:
    """Two origins publishing the same packages, wheels and images, signed by the same key
    (a site's package server and the one it moves to)."""
    assert sample_apt.signing_key is not None
    images = tmp_path / "images"
    write_image(images, "public", os.urandom(1 << 20), visibility="public", owner="proj-a")
    write_image(images, "private", os.urandom(1 << 20), visibility="private", owner="proj-a")
    (images / "tokens.toml").write_text(f'[tokens.{TOKEN}]\nproject = "proj-a"\n'
                                        'roles = ["member", "reader"]\n')
    nodes = [NodeProcess(["--role", "origin", "--store", str(tmp_path / f"origin{i}"),
                          "--apt", f"main={sample_apt.deb_dir}", "--pypi", f"local={wheel_dir}",
                          "--images", str(images),
                          "--gnupg-home", str(sample_apt.signing_key.gnupg_home),
                          "--signing-key", sample_apt.signing_key.key_id],
                         tmp_path / f"origin{i}.log") for i in (1, 2)]
    with nodes[0], nodes[1]:
        yield nodes[0], nodes[1]


def test_sighup_moves_the_upstream_while_clients_download(
        sample_apt: SampleAptRepo, two_origins: tuple[NodeProcess, NodeProcess],
        tmp_path: Path) -> None:
    first, second = two_origins
    with TcpRelay(int(first.url.rsplit(":", 1)[1])) as wan:
        config = tmp_path / "cache.toml"
        write_toml(config, role="cache", upstream=wan.url(), store=str(tmp_path / "cache"))
        cache = NodeProcess(["--config", str(config)], tmp_path / "cache.log")
        with cache:
            apt = AptRoot(tmp_path / "apt", sample_apt.public_keyring)
            apt.set_source(f"{cache.url}/apt/main")
            entries = pool_entries(first)
            before, after, slow = entries[:3], entries[3:5], entries[-1]
            apt.run("update")
            apt_download(apt, tmp_path / "dl1", *(e.package for e in before))
            env = pip_env(tmp_path)
            index = f"{cache.url}/pypi/local/simple/"
            run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
                 "--index-url", index, "-d", str(tmp_path / "pip1"), "edge-agent"], env)
            listing = json.loads(cache.get("/glance/v2/images", {"X-Auth-Token": TOKEN})[1])
            image_ids = {i["name"]: i["id"] for i in listing["images"]}
            images = {}
            for name, image_id in image_ids.items():
                status, images[name], _ = cache.get(f"/glance/v2/images/{image_id}/file",
                                                    {"X-Auth-Token": TOKEN})
                assert status == 200
            assert cache.get("/keys/repository.gpg")[0] == 200
            stored = {p for p in first.served()
                      if "/pool/" in p or "/files/" in p or p.endswith("/file")}
            assert any("/pool/" in p for p in stored) and any("/files/" in p for p in stored)

            # A client is downloading a package the cache does not hold yet, slowly, from the
            # first origin, when the operator moves the upstream and reloads.
            wan.delay = 0.5
            download = Download(f"{cache.url}/apt/main/{slow.filename}")
            wait_until(lambda: inflight(cache) >= 1, "the slow download to start")
            write_toml(config, role="cache", upstream=second.url, store=str(tmp_path / "cache"))
            sighup(cache)

            # Clients keep installing: through the second origin now, without an error.
            apt.run("update")
            got = apt_download(apt, tmp_path / "dl2", *(e.package for e in before + after))
            assert {sha256_file(p) for p in got} == {e.sha256 for e in before + after}
            run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:",
                 "--index-url", index, "-d", str(tmp_path / "pip2"), "edge-agent",
                 "edge-common==1.0.0"], env)
            for name, image_id in image_ids.items():  # authorized by the new upstream
                status, body, _ = cache.get(f"/glance/v2/images/{image_id}/file",
                                            {"X-Auth-Token": TOKEN})
                assert status == 200 and body == images[name]
            status, _, headers = cache.get("/keys/repository.gpg")
            assert status == 200 and "X-Edgedepot-Stale" not in headers
            assert download.thread.is_alive(), "the download was still running across the reload"
            wan.delay = 0.0
            download.join()
            assert download.error is None and download.status == 200
            assert len(download.body) == slow.size
            assert hashlib.sha256(download.body).hexdigest() == slow.sha256

        moved = second.served()
        assert any(p.endswith("/InRelease") for p in moved), "the second origin is asked now"
        assert all(any(e.filename in p for p in moved) for e in after)
        assert any("edge_common-1.0.0" in p for p in moved)
        assert f"/glance/v2/images/{image_ids['private']}" in moved, \
            "the private image's token check went to the new upstream"
        assert "/keys/repository.gpg" in moved
        again = {p for p in moved if p in stored or slow.filename in p}
        assert not again, f"fetched again from the new upstream: {sorted(again)}"
    log = cache.log_path.read_text()
    assert "configuration reloaded" in log and "changed upstream" in log
    assert "Traceback" not in log


# --------------------------------------------------------------------------- refused reloads


def test_sighup_with_a_broken_file_keeps_the_running_configuration(
        origin: NodeProcess, tmp_path: Path) -> None:
    config = tmp_path / "cache.toml"
    store = tmp_path / "cache"
    write_toml(config, role="cache", upstream=origin.url, store=str(store))
    cache = NodeProcess(["--config", str(config)], tmp_path / "cache.log")
    with cache:
        assert cache.get("/apt/main/dists/stable/InRelease")[0] == 200
        good = config.read_text()
        config.write_text(good + "[index\nttl = 5\n")
        sighup(cache, "refused")
        config.write_text(good + "[index]\ntll = 5\n")
        sighup(cache, "refused")
        assert cache.get("/apt/main/dists/stable/Release")[0] == 200, "still serving"
        # A valid file that moves the store: kept until a restart; the rest applies (a quota
        # lowered below what is stored evicts at once).
        assert cache.get(PACKAGES)[0] == 200
        assert cache.metrics()[("edgedepot_store_bytes", "")] > 4096
        other = tmp_path / "elsewhere"
        write_toml(config, role="cache", upstream=origin.url, store=str(other), quota="4K",
                   index={"ttl": 7})
        sighup(cache, "applied")
        assert cache.metrics()[("edgedepot_store_bytes", "")] <= 4096
        assert cache.get("/healthz")[0] == 200
        status, body, _ = cache.get("/apt/main/dists/stable/InRelease")
        assert status == 200
        assert not other.exists(), "the store in use stays the one the node opened"
        assert (store / "store" / "index.sqlite").exists()
    lines = cache.log_path.read_text().splitlines()
    refused = [ln for ln in lines if "reload refused" in ln]
    assert len(refused) == 2
    assert "keeping the running configuration: config error:" in refused[0]
    assert "invalid TOML" in refused[0] and str(config) in refused[0]
    assert "unknown key index.tll" in refused[1] and "did you mean index.ttl?" in refused[1]
    restart = [ln for ln in lines if "needs a restart" in ln]
    assert len(restart) == 1 and "store changed" in restart[0], lines
    applied = [ln for ln in lines if "configuration reloaded" in ln]
    changed = applied[0].split("changed", 1)[1] if len(applied) == 1 else ""
    assert "index.ttl" in changed and "quota" in changed and "store" not in changed, applied
    assert not any("Traceback" in ln for ln in lines)


# --------------------------------------------------------------------------- certificates


def _peer(conn: http.client.HTTPSConnection) -> bytes:
    assert isinstance(conn.sock, ssl.SSLSocket)
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def _get(conn: http.client.HTTPSConnection, path: str = "/healthz") -> int:
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_sighup_reloads_the_certificate_and_client_ca_for_new_connections(
        fleet_pki: FleetPki, wheel_dir: Path, tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert, key = tls_dir / "node.crt", tls_dir / "node.key"
    shutil.copy(fleet_pki.origin.cert, cert)
    shutil.copy(fleet_pki.origin.key, key)
    config = tmp_path / "node.toml"
    config.write_text(f'role = "origin"\nstore = "{tmp_path / "store"}"\n'
                      f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
                      f'[pypi.local]\nsource = "{wheel_dir}"\n')
    node = NodeProcess(["--config", str(config)], tmp_path / "node.log",
                       tls_listen="127.0.0.1:0")
    with node:
        port = int(node.https_url.rsplit(":", 1)[1])
        trusting = fleet_pki.client_context()
        old = http.client.HTTPSConnection("127.0.0.1", port, context=trusting, timeout=30)
        assert _get(old) == 200 and _peer(old) == fleet_pki.origin.der()
        old_socket = old.sock

        # Renewed in place (same paths), as certbot or an operator's script would do.
        renewed = fleet_pki.ca.issue_server("origin-renewed")
        shutil.copy(renewed.cert, cert)
        shutil.copy(renewed.key, key)
        sighup(node)
        new = http.client.HTTPSConnection("127.0.0.1", port, context=trusting, timeout=30)
        assert _get(new) == 200 and _peer(new) == renewed.der()
        assert _get(old) == 200, "the open connection was not dropped"
        assert old.sock is old_socket and _peer(old) == fleet_pki.origin.der()
        new.close()

        # Now only enrolled clients: a client CA takes effect for new handshakes.
        text = config.read_text().replace(
            f'key = "{key}"', f'key = "{key}"\nclient_ca = "{fleet_pki.ca.cert}"')
        config.write_text(text)
        sighup(node)
        anonymous = http.client.HTTPSConnection("127.0.0.1", port, context=trusting,
                                                timeout=30)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _get(anonymous)
        stranger = http.client.HTTPSConnection(
            "127.0.0.1", port, context=fleet_pki.client_context(fleet_pki.stranger_client),
            timeout=30)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _get(stranger)
        enrolled = http.client.HTTPSConnection(
            "127.0.0.1", port, context=fleet_pki.client_context(fleet_pki.cache_client),
            timeout=30)
        assert _get(enrolled, "/pypi/local/simple/") == 200
        assert _get(old) == 200 and old.sock is old_socket

        # A certificate that does not load is refused; the running one stays.
        key.write_text("not a key\n")
        sighup(node, "refused")
        again = http.client.HTTPSConnection(
            "127.0.0.1", port, context=fleet_pki.client_context(fleet_pki.cache_client),
            timeout=30)
        assert _get(again) == 200 and _peer(again) == renewed.der()
    assert "Traceback" not in node.log_path.read_text()


# --------------------------------------------------------------------------- stopping


def _slow_fake(sample_tree: BuiltRepository, seconds: float) -> tuple[FakeUpstream, PoolEntry]:
    """A fake origin whose largest package takes about `seconds` to send."""
    entry = max(sample_tree.packages, key=lambda e: e.size)
    chunks = max(2, -(-entry.size // 65536))
    upstream = FakeUpstream(sample_tree.root,
                            faults={entry.filename: Fault(chunk_delay=seconds / chunks)})
    return upstream.start(), entry


def _fsck(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CACHE_NODE, "fsck", "--store", str(store)], capture_output=True,
                          text=True, timeout=120)


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_drains_the_download_in_flight(
        sample_tree: BuiltRepository, tmp_path: Path, sig: signal.Signals) -> None:
    """Within drain_timeout a download in flight finishes; new connections are refused at
    once; then the node exits 0."""
    upstream, entry = _slow_fake(sample_tree, seconds=4.0)
    try:
        cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                             upstream.url, "--drain-timeout", "120"], tmp_path / "c.log")
        cache.start()
        assert cache.proc is not None
        port = int(cache.url.rsplit(":", 1)[1])
        assert cache.get(PACKAGES)[0] == 200  # what the pool file is verified against
        download = Download(f"{cache.url}/apt/main/{entry.filename}")
        wait_until(lambda: inflight(cache) >= 1, "the download to start")
        os.kill(cache.pid, sig)
        wait_until(lambda: _refused(port), "the listener to close")
        assert download.thread.is_alive(), "still downloading while the node drains"
        download.join()
        assert cache.proc.wait(timeout=60) == 0
        assert download.error is None and len(download.body) == entry.size
        assert hashlib.sha256(download.body).hexdigest() == entry.sha256
    finally:
        cache.stop()
        upstream.stop()
    log = cache.log_path.read_text()
    assert "drained in" in log and "Traceback" not in log
    assert _fsck(tmp_path / "c").returncode == 0


def test_stop_signal_aborts_what_the_drain_timeout_leaves_and_stores_nothing_partial(
        sample_tree: BuiltRepository, tmp_path: Path) -> None:
    """A download that would take a minute is cut at drain_timeout: the client sees a short
    body, the node exits well before the download could have finished, and the store holds
    neither the blob nor a partial file (fsck clean)."""
    upstream, entry = _slow_fake(sample_tree, seconds=120.0)
    store = tmp_path / "c"
    try:
        cache = NodeProcess(["--role", "cache", "--store", str(store), "--upstream",
                             upstream.url, "--drain-timeout", "1"], tmp_path / "c.log")
        cache.start()
        assert cache.proc is not None
        assert cache.get(PACKAGES)[0] == 200
        download = Download(f"{cache.url}/apt/main/{entry.filename}")
        wait_until(lambda: inflight(cache) >= 1, "the download to start")
        os.kill(cache.pid, signal.SIGTERM)
        assert cache.proc.wait(timeout=60) == 0
        download.join()
        assert len(download.body) < entry.size
    finally:
        cache.stop()
        upstream.stop()
    log = cache.log_path.read_text()
    assert "aborting 1 request still running" in log and "Traceback" not in log
    assert not list((store / "store" / "partial").iterdir())
    assert not list((store / "store").rglob(entry.sha256))
    fsck = _fsck(store)
    assert fsck.returncode == 0 and " 0 bad" in fsck.stdout, fsck.stdout



def test_sighup_reopens_the_access_log_and_takes_a_new_admin_token(
        origin: NodeProcess, tmp_path: Path) -> None:
    """What the access-control and access-log code read per request follows a reload:
    logrotate's rename then SIGHUP starts a new file; a new token file replaces the token."""
    access = tmp_path / "access.log"
    token_file = tmp_path / "admin.token"
    token_file.write_text("first-token\n")
    token_file.chmod(0o600)
    config = tmp_path / "cache.toml"
    config.write_text(f'role = "cache"\nupstream = "{origin.url}"\nstore = "{tmp_path / "c"}"\n'
                      f'access_log = "{access}"\n[admin]\ntoken_file = "{token_file}"\n')
    cache = NodeProcess(["--config", str(config)], tmp_path / "cache.log",
                        admin_token="first-token")
    with cache:
        assert cache.admin("/admin/served")[0] == 200
        access.rename(tmp_path / "access.log.1")  # logrotate
        token_file.write_text("second-token\n")
        sighup(cache)
        assert cache.get("/apt/main/dists/stable/InRelease")[0] == 200
        assert cache.admin("/admin/served")[0] == 403, "the old token no longer works"
        cache.admin_token = "second-token"
        assert cache.admin("/admin/served")[0] == 200
    assert "/apt/main/dists/stable/InRelease" in access.read_text()
    assert "/apt/main/dists/stable/InRelease" not in (tmp_path / "access.log.1").read_text()
