"""syncer.demo.sample_wheels: well-formed wheels that real pip installs, from a directory and from
an index served with distro.pypi_index on loopback."""

from __future__ import annotations

import base64
import email.parser
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import threading
import urllib.request
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal, Self
from urllib.parse import unquote, urlsplit

import pytest

from distro.pypi_index import (
    JSON_CONTENT_TYPE,
    LocalDist,
    choose_format,
    content_type_for,
    normalize_project_name,
    parse_project_page,
    project_page_from_local,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
    scan_distribution_dir,
)
from syncer.demo.sample_wheels import (
    SampleWheel,
    build_sample_sdist,
    build_sample_wheels,
    build_wheel,
    sample_wheel_set,
)

PIP_TIMEOUT = 120


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    build_sample_wheels(out)
    return out


# --------------------------------------------------------------------------- wheel format


def test_wheel_layout_and_record(tmp_path: Path) -> None:
    spec = SampleWheel("Edge.Thing", "1.2.3", ("edge-proto>=0.3", "edge-common"), 5000)
    path = build_wheel(spec, tmp_path, seed=7)
    assert path.name == "edge_thing-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert names == {
            "edge_thing/__init__.py", "edge_thing/payload.bin",
            "edge_thing-1.2.3.dist-info/METADATA", "edge_thing-1.2.3.dist-info/WHEEL",
            "edge_thing-1.2.3.dist-info/RECORD",
        }  # fmt: skip
        record = archive.read("edge_thing-1.2.3.dist-info/RECORD").decode().splitlines()
        for line in record:
            name, digest, size = line.split(",")
            if name.endswith("RECORD"):
                assert (digest, size) == ("", "")
                continue
            data = archive.read(name)
            expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert digest == "sha256=" + expected.decode() and int(size) == len(data)
        assert len(record) == len(names)
        assert len(archive.read("edge_thing/payload.bin")) == 5000
        wheel = archive.read("edge_thing-1.2.3.dist-info/WHEEL").decode()
        assert "Wheel-Version: 1.0" in wheel and "Root-Is-Purelib: true" in wheel
        assert "Tag: py3-none-any" in wheel
        meta = email.parser.BytesParser().parsebytes(
            archive.read("edge_thing-1.2.3.dist-info/METADATA")
        )
        assert meta["Metadata-Version"] == "2.1" and meta["Name"] == "Edge.Thing"
        assert meta["Version"] == "1.2.3" and meta["Requires-Python"] == ">=3.8"
        assert meta.get_all("Requires-Dist") == ["edge-proto>=0.3", "edge-common"]
        source = archive.read("edge_thing/__init__.py").decode()
        assert "__version__ = '1.2.3'" in source
        compile(source, "edge_thing/__init__.py", "exec")


def test_wheels_are_deterministic(tmp_path: Path) -> None:
    spec = SampleWheel("edge-x", "1.0", (), 1000, requires_python=None)
    first = build_wheel(spec, tmp_path / "a").read_bytes()
    assert first == build_wheel(spec, tmp_path / "b").read_bytes()
    assert first != build_wheel(spec, tmp_path / "c", seed=2).read_bytes()
    with zipfile.ZipFile(tmp_path / "a" / "edge_x-1.0-py3-none-any.whl") as archive:
        assert b"Requires-Python" not in archive.read("edge_x-1.0.dist-info/METADATA")


def test_sample_wheel_set_shape() -> None:
    specs = sample_wheel_set()
    by_name: dict[str, list[SampleWheel]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    assert sorted(by_name) == ["edge-agent", "edge-common", "edge-proto"]
    assert sorted(s.version for s in by_name["edge-common"]) == ["1.0.0", "1.1.0"]
    assert set(by_name["edge-agent"][0].requires) == {"edge-common>=1.0", "edge-proto"}
    sizes = [s.payload_bytes for s in specs]
    assert min(sizes) >= 10 * 1024 and max(sizes) <= 2 * 1024 * 1024
    with pytest.raises(ValueError):
        SampleWheel("bad name!", "1.0", (), 1)


def test_sdist(tmp_path: Path) -> None:
    path = build_sample_sdist("Edge_Tools", "0.4", tmp_path)
    assert path.name == "edge_tools-0.4.tar.gz"
    with tarfile.open(path) as archive:
        names = set(archive.getnames())
        assert {"edge_tools-0.4/PKG-INFO", "edge_tools-0.4/pyproject.toml"} <= names
        assert "edge_tools-0.4/setup.cfg" in names
        pkg_info = archive.extractfile("edge_tools-0.4/PKG-INFO")
        assert pkg_info is not None and b"Name: Edge_Tools" in pkg_info.read()
    assert path.read_bytes() == build_sample_sdist("Edge_Tools", "0.4", tmp_path / "2").read_bytes()


# --------------------------------------------------------------------------- real pip


def _pip_env(tmp: Path) -> dict[str, str]:
    """Only our index/dir is visible: no config files, no PIP_* overrides, no proxies."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PIP_") and key.lower() not in proxies
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_CACHE_DIR=str(tmp / "pip-cache"),
        NO_PROXY="127.0.0.1,localhost",
        PYTHONNOUSERSITE="1",
    )
    return env


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{argv}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


@pytest.mark.integration
def test_pip_installs_from_find_links(wheel_dir: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    env = _pip_env(tmp_path)
    _run([sys.executable, "-m", "venv", str(venv)], env)
    python = str(venv / "bin" / "python")
    _run(
        [python, "-m", "pip", "install", "--no-index", "--find-links", str(wheel_dir),
         "edge-agent"],
        env,
    )  # fmt: skip
    probe = (
        "import edge_agent, edge_common, edge_proto; "
        "print(edge_agent.describe(), edge_agent.dependency_versions(), "
        "edge_agent.payload_size(), edge_common.__version__)"
    )
    out = _run([python, "-c", probe], env).stdout.strip()
    assert out == ("edge-agent 2.0.0 {'edge_common': '1.1.0', 'edge_proto': '0.3.0'} 2097152 1.1.0")


Mode = Literal["negotiate", "html", "json"]


class IndexServer:
    """A PEP 503/691 index over a directory, rendered with distro.pypi_index, on loopback.

    ``/simple/`` and ``/simple/<project>/`` are pages, ``/files/<name>`` the distributions and
    ``/files/<name>.metadata`` their PEP 658 metadata. Every request is recorded."""

    def __init__(self, dist_dir: Path, mode: Mode) -> None:
        self.projects = scan_distribution_dir(dist_dir)
        self.by_filename: dict[str, LocalDist] = {
            dist.filename: dist for dists in self.projects.values() for dist in dists
        }
        self.mode = mode
        self.requests: list[tuple[str, str | None, str | None]] = []  # path, Accept, format
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/simple/"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def respond(self, path: str, accept: str | None) -> tuple[int, str, bytes, str | None]:
        """(status, content type or Location, body, format) for a GET of ``path``."""
        fmt = choose_format(accept) if self.mode == "negotiate" else self.mode
        if path == "/simple/":
            names = list(self.projects)
            body = render_root_json(names) if fmt == "json" else render_root_html(names).encode()
            return 200, content_type_for(fmt), body, fmt
        if match := re.fullmatch(r"/simple/([^/]+)/?", path):
            name = unquote(match[1])
            if name != normalize_project_name(name) or not path.endswith("/"):
                return 301, f"/simple/{normalize_project_name(name)}/", b"", None
            if name not in self.projects:
                return 404, "text/plain", b"no such project", None
            page = project_page_from_local(name, self.projects[name], base_url="../../files/")
            body = (
                render_project_json(page) if fmt == "json" else render_project_html(page).encode()
            )
            return 200, content_type_for(fmt), body, fmt
        if match := re.fullmatch(r"/files/([^/]+?)(\.metadata)?", path):
            dist = self.by_filename.get(unquote(match[1]))
            if dist is not None and match[2] is None:
                return 200, "application/octet-stream", dist.path.read_bytes(), None
            if dist is not None and dist.metadata is not None:
                return 200, "application/octet-stream", dist.metadata, None
        return 404, "text/plain", b"not found", None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, accept = urlsplit(self.path).path, self.headers.get("Accept")
                status, kind, body, fmt = server.respond(path, accept)
                server.requests.append((path, accept, fmt))
                self.send_response(status)
                self.send_header("Location" if status == 301 else "Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def index_server(wheel_dir: Path, request: pytest.FixtureRequest) -> Iterator[IndexServer]:
    mode: Mode = getattr(request, "param", "negotiate")
    with IndexServer(wheel_dir, mode) as server:
        yield server


@pytest.mark.integration
@pytest.mark.parametrize("index_server", ["negotiate", "html"], indirect=True)
def test_pip_download_resolves_through_rendered_index(
    index_server: IndexServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    _run(
        [sys.executable, "-m", "pip", "download", "--index-url", index_server.url,
         "--only-binary", ":all:", "--dest", str(out), "edge-agent"],
        _pip_env(tmp_path),
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "edge_agent-2.0.0-py3-none-any.whl",
        "edge_common-1.1.0-py3-none-any.whl",
        "edge_proto-0.3.0-py3-none-any.whl",
    ]
    pages = [(p, a, f) for p, a, f in index_server.requests if p.startswith("/simple/")]
    assert {p for p, _, _ in pages} >= {"/simple/edge-agent/", "/simple/edge-common/"}
    expected_format = "json" if index_server.mode == "negotiate" else "html"
    for _, accept, fmt in pages:
        assert accept is not None and accept.startswith(JSON_CONTENT_TYPE)
        assert fmt == expected_format
    paths = [p for p, _, _ in index_server.requests]
    # PEP 658: pip resolved from the announced metadata files (hash-checked by pip).
    assert "/files/edge_common-1.1.0-py3-none-any.whl.metadata" in paths
    assert "/files/edge_common-1.0.0-py3-none-any.whl" not in paths


@pytest.mark.integration
@pytest.mark.parametrize("accept", [None, JSON_CONTENT_TYPE])
def test_served_pages_parse_back(index_server: IndexServer, accept: str | None) -> None:
    page_url = index_server.url + "Edge_Common"
    request = urllib.request.Request(page_url, headers={"Accept": accept} if accept else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        final_url, body = response.geturl(), response.read()
        content_type = response.headers["Content-Type"]
    assert final_url == index_server.url + "edge-common/"
    page = parse_project_page(body, content_type, page_url=final_url, source=final_url)
    assert content_type == (JSON_CONTENT_TYPE if accept else "application/vnd.pypi.simple.v1+html")
    assert page.name == "edge-common" and len(page.files) == 2
    for dist in page.files:
        local = index_server.by_filename[dist.filename]
        assert dist.url == index_server.url.replace("/simple/", "/files/") + dist.filename
        assert dist.sha256 == local.sha256 and dist.requires_python == ">=3.8"
        with opener.open(dist.url + ".metadata", timeout=10) as response:
            metadata = response.read()
        assert hashlib.sha256(metadata).hexdigest() == dist.metadata_sha256
