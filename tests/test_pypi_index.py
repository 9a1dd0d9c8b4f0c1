"""distro.pypi_index: PEP 503/691/658/714 rendering, parsing, negotiation, directory scans."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, urljoin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distro.pypi_index import (
    HTML_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    DistFile,
    MalformedIndexError,
    ProjectPage,
    choose_format,
    metadata_sha256,
    normalize_project_name,
    parse_project_page,
    parse_root_page,
    project_page_from_local,
    render_project_html,
    render_project_json,
    render_root_html,
    render_root_json,
    scan_distribution_dir,
    wheel_metadata,
)
from syncer.demo.sample_wheels import build_sample_sdist, build_sample_wheels

PAGE_URL = "http://cache.test/simple/edge-agent/"
SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4

# --------------------------------------------------------------------------- strategies

_SPECIAL = list("&<>\"'=#?%;+-_. é€")
_text_char = st.sampled_from(_SPECIAL) | st.characters(
    categories=("Lu", "Ll", "Nd", "Po", "Sm", "Sc"), exclude_characters="/\\\x00"
)
filenames = (
    st.text(_text_char, min_size=1, max_size=40)
    .map(str.strip)
    .filter(lambda s: bool(s) and ".." not in s and "/" not in s and "\\" not in s)
)
hex_digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
requires_pythons = st.none() | st.text(
    st.sampled_from(list("<>=!~,.* 0123456789&\"'abc")), min_size=1, max_size=20
)
yanks = st.none() | st.just("") | st.text(_text_char, min_size=1, max_size=30)
project_names = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,20}[A-Za-z0-9])?", fullmatch=True)


@st.composite
def dist_files(draw: st.DrawFn) -> DistFile:
    filename = draw(filenames)
    base = draw(st.sampled_from(["../../files/", "http://origin.test/packages/ab/cd/", ""]))
    has_metadata = draw(st.booleans())
    return DistFile(
        filename=filename,
        url=base + quote(filename),
        sha256=draw(st.none() | hex_digests),
        size=draw(st.none() | st.integers(0, 2**40)),
        requires_python=draw(requires_pythons),
        metadata_sha256=draw(st.none() | hex_digests) if has_metadata else None,
        has_metadata=has_metadata,
        yanked=draw(yanks),
    )


def _resolved(dist: DistFile, page_url: str, *, keep_size: bool) -> DistFile:
    return replace(dist, url=urljoin(page_url, dist.url), size=dist.size if keep_size else None)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "raw",
    ["friendly-bard", "Friendly-Bard", "FRIENDLY-BARD", "friendly.bard", "friendly_bard",
     "friendly--bard", "FrIeNdLy-._.-bArD"],
)  # fmt: skip
def test_normalize_project_name_pep503_examples(raw: str) -> None:
    assert normalize_project_name(raw) == "friendly-bard"


# --------------------------------------------------------------------------- round trips


@settings(max_examples=150, deadline=None)
@given(name=project_names, files=st.lists(dist_files(), max_size=6))
def test_html_round_trip(name: str, files: list[DistFile]) -> None:
    page = ProjectPage(name=normalize_project_name(name), files=tuple(files))
    page_url = f"http://cache.test/simple/{page.name}/"
    body = render_project_html(page).encode("utf-8")
    parsed = parse_project_page(body, HTML_CONTENT_TYPE, page_url=page_url, source="test")
    assert parsed.name == page.name
    assert parsed.files == tuple(_resolved(f, page_url, keep_size=False) for f in files)


@settings(max_examples=150, deadline=None)
@given(name=project_names, files=st.lists(dist_files(), max_size=6))
def test_json_round_trip(name: str, files: list[DistFile]) -> None:
    page = ProjectPage(name=normalize_project_name(name), files=tuple(files))
    body = render_project_json(page)
    parsed = parse_project_page(body, JSON_CONTENT_TYPE, page_url=PAGE_URL, source="test")
    assert parsed.name == page.name
    assert parsed.files == tuple(_resolved(f, PAGE_URL, keep_size=True) for f in files)


@settings(max_examples=50, deadline=None)
@given(names=st.lists(project_names, max_size=8))
def test_root_round_trip_both_formats(names: list[str]) -> None:
    expected = list(dict.fromkeys(normalize_project_name(n) for n in names))
    url = "http://cache.test/simple/"
    html_body = render_root_html(names).encode()
    assert parse_root_page(html_body, "text/html", page_url=url, source="t") == expected
    json_body = render_root_json(names)
    assert parse_root_page(json_body, JSON_CONTENT_TYPE, page_url=url, source="t") == expected


def _sample_page() -> ProjectPage:
    return ProjectPage(
        name="edge-agent",
        files=(
            DistFile("edge_agent-2.0.0-py3-none-any.whl", "../../files/edge_agent-2.0.0-py3-none-any.whl",
                     SHA_A, 1234, ">=3.8", SHA_B, True, None),
            DistFile("edge_agent-1.0.tar.gz", "../../files/edge_agent-1.0.tar.gz",
                     SHA_B, None, None, None, False, "broken build"),
            DistFile("edge_agent-1.5-py3-none-any.whl", "../../files/edge_agent-1.5-py3-none-any.whl",
                     None, None, "<4,>=3.9", None, True, ""),
        ),
    )  # fmt: skip


def test_render_json_document_shape() -> None:
    document = json.loads(render_project_json(_sample_page()))
    assert document["meta"] == {"api-version": "1.1"}
    assert document["name"] == "edge-agent"
    assert document["versions"] == ["1.0", "1.5", "2.0.0"]
    wheel, sdist, yanked = document["files"]
    assert wheel["hashes"] == {"sha256": SHA_A}
    assert wheel["core-metadata"] == wheel["dist-info-metadata"] == {"sha256": SHA_B}
    assert wheel["requires-python"] == ">=3.8"
    assert wheel["size"] == 1234 and wheel["yanked"] is False
    assert sdist["core-metadata"] is False and sdist["dist-info-metadata"] is False
    assert sdist["yanked"] == "broken build" and "size" not in sdist
    assert "requires-python" not in sdist
    assert yanked["hashes"] == {} and yanked["core-metadata"] is True and yanked["yanked"] is True


def test_render_html_attributes() -> None:
    text = render_project_html(_sample_page())
    assert '<meta name="pypi:repository-version" content="1.1">' in text
    assert f'href="../../files/edge_agent-2.0.0-py3-none-any.whl#sha256={SHA_A}"' in text
    assert 'data-requires-python="&gt;=3.8"' in text
    assert f'data-core-metadata="sha256={SHA_B}"' in text
    assert f'data-dist-info-metadata="sha256={SHA_B}"' in text
    assert 'data-yanked="broken build"' in text
    assert 'data-core-metadata="true" data-dist-info-metadata="true" data-yanked=""' in text
    assert 'data-requires-python="&lt;4,&gt;=3.9"' in text


# --------------------------------------------------------------------------- HTML specifics


def _html(anchors: str, head: str = "") -> bytes:
    return f"<!DOCTYPE html><html><head>{head}</head><body>\n{anchors}\n</body></html>".encode()


def test_html_parsing_details() -> None:
    body = _html(
        f'<a href="a-1.0.tar.gz#md5=abc">a-1.0.tar.gz</a>\n'
        f'<a href="/x/a-1.1.tar.gz#sha256={SHA_A.upper()}" data-yanked>a-1.1.tar.gz</a>\n'
        f'<a href="a-1.2-py3-none-any.whl" data-dist-info-metadata="sha256={SHA_B}">'
        f"  a-1.2-py3-none-any.whl </a>\n"
        '<a href="a-1.3-py3-none-any.whl" data-core-metadata="md5=00">a-1.3-py3-none-any.whl</a>\n'
        '<a name="no-href">ignored</a>\n'
        '<a href="https://elsewhere.test/files/a-1.4.zip"></a>\n',
        head='<base href="https://mirror.test/pkgs/">',
    )
    page = parse_project_page(body, "text/html; charset=utf-8", page_url=PAGE_URL, source="t")
    assert page.name == "edge-agent"
    files = {f.filename: f for f in page.files}
    assert list(files) == [
        "a-1.0.tar.gz", "a-1.1.tar.gz", "a-1.2-py3-none-any.whl", "a-1.3-py3-none-any.whl",
        "a-1.4.zip",
    ]  # fmt: skip
    assert files["a-1.0.tar.gz"].sha256 is None
    assert files["a-1.0.tar.gz"].url == "https://mirror.test/pkgs/a-1.0.tar.gz"
    assert files["a-1.1.tar.gz"].sha256 == SHA_A
    assert files["a-1.1.tar.gz"].url == "https://mirror.test/x/a-1.1.tar.gz"
    assert files["a-1.1.tar.gz"].yanked == ""
    assert files["a-1.2-py3-none-any.whl"].metadata_sha256 == SHA_B
    assert files["a-1.3-py3-none-any.whl"].has_metadata
    assert files["a-1.3-py3-none-any.whl"].metadata_sha256 is None
    assert files["a-1.2-py3-none-any.whl"].metadata_url == (
        "https://mirror.test/pkgs/a-1.2-py3-none-any.whl.metadata"
    )


def test_html_legacy_charset() -> None:
    body = _html('<a href="caf%E9-1.0.tar.gz">café-1.0.tar.gz</a>').decode().encode("latin-1")
    page = parse_project_page(body, "text/html; charset=latin-1", page_url=PAGE_URL, source="t")
    assert page.files[0].filename == "café-1.0.tar.gz"


# --------------------------------------------------------------------------- negotiation

PIP_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, "
    "text/html; q=0.01"
)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "html"),
        ("", "html"),
        ("*/*", "html"),
        ("text/html", "html"),
        (HTML_CONTENT_TYPE, "html"),
        (JSON_CONTENT_TYPE, "json"),
        ("application/vnd.pypi.simple.latest+json", "json"),
        ("application/vnd.pypi.simple.latest+html", "html"),
        (PIP_ACCEPT, "json"),
        # PEP 691 examples
        (("application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
          "text/html;q=0.01"), "json"),
        ("application/vnd.pypi.simple.v1+html, application/vnd.pypi.simple.v1+json;q=0.5", "html"),
        ("application/vnd.pypi.simple.v1+json;q=0.5, text/html;q=0.5", "html"),
        ("application/vnd.pypi.simple.v1+json;q=0, */*", "html"),
        ("application/vnd.pypi.simple.v1+json, */*;q=0.1", "json"),
        ("application/*", "html"),
        ("image/png", "html"),
        ("application/vnd.pypi.simple.v1+json;q=abc", "html"),
        ("APPLICATION/VND.PYPI.SIMPLE.V1+JSON", "json"),
        ("text/html;q=0, application/vnd.pypi.simple.v1+json;q=0.001", "json"),
        ("text/*;q=0.3, application/vnd.pypi.simple.v1+json;q=0.4", "json"),
    ],
)  # fmt: skip
def test_choose_format(accept: str | None, expected: str) -> None:
    assert choose_format(accept) == expected


# --------------------------------------------------------------------------- malformed


def _json_page(files: object, *, api: str = "1.0") -> bytes:
    return json.dumps({"meta": {"api-version": api}, "name": "x", "files": files}).encode()


def _json_file(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {"filename": "x-1.0.tar.gz", "url": "x-1.0.tar.gz", "hashes": {}}
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        json.dumps({"name": "x", "files": []}).encode(),
        _json_page([], api="2.0"),
        _json_page([], api="one"),
        _json_page({"filename": "x"}),
        _json_page(["x-1.0.tar.gz"]),
        _json_page([_json_file(filename="../x-1.0.tar.gz")]),
        _json_page([_json_file(filename="sub/x-1.0.tar.gz")]),
        _json_page([_json_file(url=None)]),
        _json_page([_json_file(hashes={"sha256": "abc"})]),
        _json_page([_json_file(hashes={"sha256": "g" * 64})]),
        _json_page([_json_file(hashes=["sha256"])]),
        _json_page([_json_file(**{"core-metadata": {"sha256": "short"}})]),
        _json_page([_json_file(**{"core-metadata": "yes"})]),
        _json_page([_json_file(size=-1)]),
        _json_page([_json_file(size="12")]),
        _json_page([_json_file(yanked=3)]),
        _json_page([_json_file(**{"requires-python": 3})]),
    ],
)
def test_malformed_json_pages(body: bytes) -> None:
    with pytest.raises(MalformedIndexError) as info:
        parse_project_page(body, JSON_CONTENT_TYPE, page_url=PAGE_URL, source="upstream")
    assert info.value.source == "upstream"
    assert str(info.value).startswith("upstream")


@pytest.mark.parametrize(
    ("anchors", "head"),
    [
        ('<a href="../evil-1.0.tar.gz">../evil-1.0.tar.gz</a>', ""),
        ('<a href="x/evil-1.0.tar.gz">x/evil-1.0.tar.gz</a>', ""),
        ('<a href="..">..</a>', ""),
        ('<a href="x-1.0.tar.gz#sha256=1234">x-1.0.tar.gz</a>', ""),
        (f'<a href="x-1.0.tar.gz#sha256={"z" * 64}">x-1.0.tar.gz</a>', ""),
        ('<a href="x.whl" data-core-metadata="sha256=nothex">x.whl</a>', ""),
        ('<a href="x-1.0.tar.gz">x-1.0.tar.gz</a>',
         '<meta name="pypi:repository-version" content="2.0">'),
    ],
)  # fmt: skip
def test_malformed_html_pages(anchors: str, head: str) -> None:
    with pytest.raises(MalformedIndexError) as info:
        parse_project_page(_html(anchors, head), "text/html", page_url=PAGE_URL, source="up")
    assert info.value.line in (1, 2)


def test_malformed_other() -> None:
    with pytest.raises(MalformedIndexError):
        parse_project_page(b"<html></html>", "application/json", page_url=PAGE_URL, source="s")
    with pytest.raises(MalformedIndexError):
        parse_project_page(b"\xff\xfe", "text/html", page_url=PAGE_URL, source="s")
    with pytest.raises(MalformedIndexError):
        root = json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"nom": "x"}]}).encode()
        parse_root_page(root, JSON_CONTENT_TYPE, page_url=PAGE_URL, source="s")
    with pytest.raises(MalformedIndexError):
        root = json.dumps({"meta": {"api-version": "1.0"}, "projects": "x"}).encode()
        parse_root_page(root, JSON_CONTENT_TYPE, page_url=PAGE_URL, source="s")


def test_distfile_validates_digests() -> None:
    with pytest.raises(ValueError):
        DistFile("x.whl", "x.whl", "ABC", None, None, None, False, None)
    with pytest.raises(ValueError):
        DistFile("x.whl", "x.whl", None, None, None, SHA_A, False, None)


# --------------------------------------------------------------------------- local scan


def test_scan_distribution_dir(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wheels = build_sample_wheels(tmp_path)
    nested = tmp_path / "tools"
    sdist = build_sample_sdist("Edge.Tools", "0.1", nested, requires_python=">=3.9")
    (tmp_path / "README.txt").write_text("not a distribution")
    (tmp_path / ".edge_proto-9.9-py3-none-any.whl.partial").write_bytes(b"partial")
    (tmp_path / "corrupt-1.0-py3-none-any.whl").write_bytes(b"this is not a zip file")
    (tmp_path / "truncated-1.0.tar.gz").write_bytes(sdist.read_bytes()[:200])
    (tmp_path / "notawheel.whl").write_bytes(wheels[0].read_bytes())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("nometa/__init__.py", "")
    (tmp_path / "nometa-1.0-py3-none-any.whl").write_bytes(buffer.getvalue())

    with caplog.at_level(logging.WARNING, logger="distro.pypi_index"):
        found = scan_distribution_dir(tmp_path)

    assert sorted(found) == ["edge-agent", "edge-common", "edge-proto", "edge-tools"]
    skipped = " ".join(r.getMessage() for r in caplog.records)
    for name in ("corrupt-1.0", "truncated-1.0", "notawheel.whl", "nometa-1.0"):
        assert name in skipped
    common = found["edge-common"]
    assert [d.filename for d in common] == [
        "edge_common-1.0.0-py3-none-any.whl", "edge_common-1.1.0-py3-none-any.whl"
    ]  # fmt: skip
    for dist in common + found["edge-agent"]:
        data = dist.path.read_bytes()
        assert dist.sha256 == hashlib.sha256(data).hexdigest() and dist.size == len(data)
        assert dist.requires_python == ">=3.8"
        assert dist.metadata == wheel_metadata(dist.path)
        assert dist.metadata is not None and b"Name: " in dist.metadata
    (tools,) = found["edge-tools"]
    assert tools.path == sdist and tools.metadata is None and tools.requires_python == ">=3.9"


def test_wheel_metadata_errors(tmp_path: Path) -> None:
    empty = tmp_path / "x-1.0-py3-none-any.whl"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("x/__init__.py", "")
    with pytest.raises(MalformedIndexError):
        wheel_metadata(empty)
    (tmp_path / "y-1.0-py3-none-any.whl").write_bytes(b"garbage")
    with pytest.raises(MalformedIndexError):
        wheel_metadata(tmp_path / "y-1.0-py3-none-any.whl")


def test_project_page_from_local(tmp_path: Path) -> None:
    build_sample_wheels(tmp_path)
    dists = scan_distribution_dir(tmp_path)["edge-common"]
    page = project_page_from_local("Edge_Common", dists, base_url="/files/")
    assert page.name == "edge-common"
    first = page.files[0]
    assert first.url == "/files/edge_common-1.0.0-py3-none-any.whl"
    assert dists[0].metadata is not None
    assert first.metadata_sha256 == metadata_sha256(dists[0].metadata)
    assert first.size == dists[0].size and first.sha256 == dists[0].sha256
    reparsed = parse_project_page(
        render_project_html(page).encode(), HTML_CONTENT_TYPE, page_url=PAGE_URL, source="t"
    )
    assert reparsed.files[0].url == "http://cache.test/files/edge_common-1.0.0-py3-none-any.whl"
