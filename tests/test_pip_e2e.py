"""Real pip through a cache in front of an origin serving a directory of wheels."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distro.pypi_index import JSON_CONTENT_TYPE, parse_project_page
from tests.plugin.support import NodeProcess

pytestmark = pytest.mark.integration

PIP_ACCEPT = ("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1,"
              " text/html; q=0.01")


def pip_env(tmp: Path) -> dict[str, str]:
    """pip sees only our index: no config files, no PIP_* overrides, no proxies, and no CA
    bundle variables (requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override `--cert`)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k.lower() not in
           {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle",
            "curl_ca_bundle"}}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1",
               PIP_NO_CACHE_DIR="1", NO_PROXY="127.0.0.1,localhost", PYTHONNOUSERSITE="1")
    return env


def run(argv: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_pip_install_into_venv_through_cache(
        origin: NodeProcess, cache: NodeProcess, wheel_dir: Path, tmp_path: Path) -> None:
    env = pip_env(tmp_path)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env)
    python = str(venv / "bin" / "python")
    run([python, "-m", "pip", "install", "--index-url", f"{cache.url}/pypi/local/simple/",
         "edge-agent"], env)
    out = run([python, "-c", "import edge_agent, edge_common; print(edge_common.__version__)"],
              env)
    assert out.strip() == "1.1.0", "the newest edge-common satisfying edge-agent's requirement"
    served = origin.served()
    files = {p: n for p, n in served.items() if "/files/" in p}
    assert files and all(n == 1 for n in files.values())


def test_pip_download_only_binary_via_pep691(
        origin: NodeProcess, cache: NodeProcess, wheel_dir: Path, tmp_path: Path) -> None:
    env = pip_env(tmp_path)
    out_dir = tmp_path / "dl"
    run([sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--index-url",
         f"{cache.url}/pypi/local/simple/", "-d", str(out_dir), "edge-agent"], env)
    got = sorted(p.name for p in out_dir.iterdir())
    assert any(n.startswith("edge_agent-") for n in got)
    assert any(n.startswith("edge_common-1.1.0") for n in got)
    originals = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wheel_dir.iterdir()}
    for name in got:
        assert hashlib.sha256((out_dir / name).read_bytes()).hexdigest() == originals[name]
    # The page pip received is PEP 691 JSON (pip's own Accept header), hashes included.
    status, body, headers = cache.get("/pypi/local/simple/edge-agent/", {"Accept": PIP_ACCEPT})
    assert status == 200 and headers["Content-Type"].startswith(JSON_CONTENT_TYPE)
    page = json.loads(body)
    assert page["meta"]["api-version"].startswith("1.")
    assert all("sha256" in f["hashes"] for f in page["files"])


def test_content_negotiation_and_pep658_metadata(cache: NodeProcess, wheel_dir: Path) -> None:
    status, html_body, headers = cache.get("/pypi/local/simple/edge-agent/",
                                           {"Accept": "text/html"})
    assert status == 200 and "html" in headers["Content-Type"]
    page = parse_project_page(html_body, headers["Content-Type"],
                              page_url=f"{cache.url}/pypi/local/simple/edge-agent/",
                              source="test")
    wheel = next(f for f in page.files if f.filename.endswith(".whl"))
    assert wheel.has_metadata and wheel.metadata_url and wheel.metadata_sha256
    meta_path = wheel.metadata_url[len(cache.url):]
    status, meta, _ = cache.get(meta_path)
    assert status == 200 and hashlib.sha256(meta).hexdigest() == wheel.metadata_sha256
    # Non-normalised names redirect to the normalised page, as PEP 503 asks.
    status, _, _ = cache.get("/pypi/local/simple/Edge_Agent/", {"Accept": "text/html"})
    assert status == 200
    status, body, _ = cache.get("/pypi/local/simple/no-such-project/")
    assert status == 404


def test_two_tier_cache_fetches_only_from_its_parent(
        origin: NodeProcess, cache: NodeProcess, tmp_path: Path) -> None:
    child = NodeProcess(["--role", "cache", "--store", str(tmp_path / "child"), "--upstream",
                         cache.url], tmp_path / "child.log").start()
    try:
        status, body, headers = child.get("/pypi/local/simple/edge-proto/",
                                          {"Accept": PIP_ACCEPT})
        assert status == 200
        page = json.loads(body)
        url = page["files"][0]["url"]
        base = f"{child.url}/pypi/local/simple/edge-proto/"
        from urllib.parse import urljoin
        full = urljoin(base, url)
        assert full.startswith(child.url)
        status, data, headers = child.get(full[len(child.url):])
        assert status == 200
        assert hashlib.sha256(data).hexdigest() == page["files"][0]["hashes"]["sha256"]
        assert "Repr-Digest" in headers
        assert cache.served().get(full[len(child.url):]) == 1
    finally:
        child.stop()
