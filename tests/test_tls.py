"""Real TLS with certificates the tests make (`tests/plugin/pki.py`): apt-get and pip over
HTTPS to a cache that talks mutual TLS to an origin serving only enrolled caches; keys and
index deltas across that link; caches refused for a missing or foreign client certificate;
plain HTTP sent to the TLS port."""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from distro.debian_repo import parse_packages, parse_release
from syncer.demo.sample_repo import SampleAptRepo, SampleDeb, build_deb
from tests.plugin.pki import FleetPki
from tests.plugin.support import AptRoot, NodeProcess, sha256_file, wait_until
from tests.test_pip_e2e import pip_env, run

pytestmark = pytest.mark.integration

PACKAGES = "/apt/main/dists/stable/main/binary-amd64/Packages"


def _post(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=120, context=context) as resp:
        return resp.status, resp.read()


def test_apt_get_over_https_through_a_mutual_tls_cache(
        sample_apt: SampleAptRepo, tls_origin: NodeProcess, tls_cache: NodeProcess,
        fleet_pki: FleetPki, tmp_path: Path) -> None:
    """apt-get (https built in) trusts the fleet CA; the cache presents its client certificate
    to an origin that requires one. Then the origin publishes a package: the index update
    crosses the mTLS link as a delta (the delta client has the node's TLS settings)."""
    assert tls_cache.https_url.startswith("https://")
    apt = AptRoot(tmp_path / "apt", sample_apt.public_keyring, ca_file=fleet_pki.ca.cert)
    apt.set_source(f"{tls_cache.https_url}/apt/main")
    apt.run("update")
    apt.run("install", "-y", "--download-only", sample_apt.top_package)
    got = apt.archives()
    assert len(got) >= 20
    status, body, _ = tls_origin.get(PACKAGES)
    assert status == 200
    # apt names a downloaded archive NAME_VERSION_ARCH.deb with the epoch colon as %3a.
    index = {f"{e.package}_{e.version.replace(':', '%3a')}_{e.architecture}.deb": e.sha256
             for e in parse_packages(body, "Packages")}
    for deb in got:
        assert sha256_file(deb) == index[deb.name]
    pool = {p: n for p, n in tls_origin.served().items() if "/pool/" in p}
    assert len(pool) == len(got) and set(pool.values()) == {1}

    # The origin publishes a new package; the cache revalidates now.
    build_deb(SampleDeb("edge-hotfix", "1.0", "all", (), (), (), (), 4096, "fix"),
              tmp_path / "debs", seed=11)

    def published() -> bool:
        release = parse_release(tls_origin.get("/apt/main/dists/stable/InRelease")[1], "new")
        entry = release.entry("main/binary-amd64/Packages")
        return entry is not None and entry.sha256 != old_plain

    old_release = parse_release(tls_origin.get("/apt/main/dists/stable/InRelease")[1], "old")
    old_entry = old_release.entry("main/binary-amd64/Packages")
    assert old_entry is not None
    old_plain = old_entry.sha256
    wait_until(published, "the origin to rebuild its repository")
    status, body = _post(f"{tls_cache.url}/admin/refresh")
    assert status == 200
    reports = [r for r in json.loads(body) if r["kind"] == "apt"]
    assert reports and all(r["changed"] and not r["error"] for r in reports)
    apt.run("update")
    apt.run("install", "-y", "--download-only", "edge-hotfix")
    assert any(p.name.startswith("edge-hotfix_") for p in apt.archives())
    m = tls_cache.metrics()
    assert m[("edgedepot_delta_fetches_total", "apt/main")] >= 1
    assert any(p.startswith("/delta/v1/blobs/") for p in tls_origin.served())


def test_pip_over_https_through_a_mutual_tls_cache(
        tls_origin: NodeProcess, tls_cache: NodeProcess, fleet_pki: FleetPki,
        wheel_dir: Path, tmp_path: Path) -> None:
    env = pip_env(tmp_path)
    index = f"{tls_cache.https_url}/pypi/local/simple/"
    out = tmp_path / "dl"
    run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--cert",
         str(fleet_pki.ca.cert), "--index-url", index, "-d", str(out), "edge-agent"], env)
    originals = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wheel_dir.iterdir()}
    got = sorted(out.iterdir())
    assert any(p.name.startswith("edge_agent-") for p in got)
    for path in got:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == originals[path.name]
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--cert", str(fleet_pki.ca.cert), "--index-url", index,
         "edge-agent"], env)
    assert run([python, "-c", "import edge_common; print(edge_common.__version__)"],
               env).strip() == "1.1.0"
    files = {p: n for p, n in tls_origin.served().items() if "/files/" in p}
    assert files and set(files.values()) == {1}, "each file crossed the mTLS link once"


def test_signing_key_is_served_through_the_mutual_tls_link(
        sample_apt: SampleAptRepo, tls_origin: NodeProcess, tls_cache: NodeProcess) -> None:
    status, body, headers = tls_cache.get("/keys/", base=tls_cache.https_url)
    assert status == 200, body
    origin_status, _, origin_headers = tls_origin.get("/keys/")
    assert origin_status == 200
    fingerprint = headers["X-Edgedepot-Key-Fingerprint"]
    assert fingerprint == origin_headers["X-Edgedepot-Key-Fingerprint"]
    assert json.loads(body)["fingerprint"] == fingerprint


@pytest.mark.parametrize("identity", ["none", "stranger"])
def test_origin_refuses_caches_without_an_enrolled_certificate(
        tls_origin: NodeProcess, fleet_pki: FleetPki, tmp_path: Path, identity: str) -> None:
    """A cache with no client certificate, or one from another CA, gets nothing from an origin
    that requires fleet certificates: a clear 502, and its /healthz says why."""
    flags = ["--upstream-ca", str(fleet_pki.ca.cert)] if identity == "none" \
        else fleet_pki.upstream_flags(fleet_pki.stranger_client)
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         tls_origin.https_url, "--upstream-retries", "0", *flags],
                        tmp_path / f"cache-{identity}.log")
    with cache:
        status, body, _ = cache.get("/apt/main/dists/stable/InRelease")
        assert status == 502
        message = json.loads(body)["message"]
        assert "client certificate" in message, message
        status, body, _ = cache.get("/healthz")
        health = json.loads(body)
        assert status == 200 and health["status"] == "degraded"
        assert health["upstream"]["reachable"] is False
        assert "client certificate" in health["upstream"]["error"]
    log = (tmp_path / "origin.log").read_text()
    assert "Traceback" not in log


def test_cache_that_does_not_trust_the_origin_says_so(
        tls_origin: NodeProcess, tmp_path: Path) -> None:
    """Without upstream_tls.ca the private CA is unknown (system trust only): a clear error."""
    cache = NodeProcess(["--role", "cache", "--store", str(tmp_path / "c"), "--upstream",
                         tls_origin.https_url, "--upstream-retries", "0"], tmp_path / "c.log")
    with cache:
        status, body, _ = cache.get("/pypi/local/simple/")
        assert status == 502
        message = json.loads(body)["message"]
        assert "not trusted" in message and "upstream_tls.ca" in message, message


def test_plain_http_on_the_tls_port_fails_cleanly(tls_cache: NodeProcess) -> None:
    """A plain-HTTP client on the HTTPS port gets no answer; the node logs no traceback and
    keeps serving both listeners."""
    port = int(tls_cache.https_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert b"HTTP/1.1 200" not in answer
    for _ in range(3):
        with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10)
    assert tls_cache.get("/healthz", base=tls_cache.https_url)[0] == 200
    assert tls_cache.get("/healthz")[0] == 200
    log = tls_cache.log_path.read_text()
    assert "Traceback" not in log and "ERROR" not in log, log
