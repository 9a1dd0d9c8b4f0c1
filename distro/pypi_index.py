"""PyPI "simple" repository API: PEP 503 HTML, PEP 691 JSON, PEP 658/714 metadata, PEP 700.

Framework-free: values in, bytes/str out. The origin renders pages from a directory of
distributions (:func:`scan_distribution_dir`); a cache node parses its upstream's pages
(:func:`parse_project_page`) and re-renders them for its clients in whichever format the
client negotiated (:func:`choose_format`).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import html
import json
import logging
import re
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urldefrag, urljoin, urlsplit

from packaging.utils import parse_sdist_filename, parse_wheel_filename

from distro.debian_repo import MalformedIndexError as MalformedIndexError

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/vnd.pypi.simple.v1+json"
HTML_CONTENT_TYPE = "application/vnd.pypi.simple.v1+html"
API_VERSION = "1.1"
#: PEP 658: the core metadata of ``<url>`` is served at ``<url>.metadata``.
METADATA_SUFFIX = ".metadata"

IndexFormat = Literal["json", "html"]

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_SEP_RE = re.compile(r"[-_.]+")
_JSON_TYPES = (JSON_CONTENT_TYPE, "application/vnd.pypi.simple.latest+json")
_HTML_TYPES = (HTML_CONTENT_TYPE, "application/vnd.pypi.simple.latest+html", "text/html")


def _malformed(source: str, message: str, line: int | None = None) -> MalformedIndexError:
    return MalformedIndexError(source=source, line=line, message=message)


def normalize_project_name(name: str) -> str:
    """PEP 503 normalisation: runs of ``-``, ``_`` and ``.`` become ``-``, lower case."""
    return _NAME_SEP_RE.sub("-", name).lower()


def metadata_sha256(metadata: bytes) -> str:
    """Hex sha256 of a core metadata file, as announced by ``data-core-metadata``."""
    return hashlib.sha256(metadata).hexdigest()


def content_type_for(fmt: IndexFormat) -> str:
    return JSON_CONTENT_TYPE if fmt == "json" else HTML_CONTENT_TYPE


@dataclass(frozen=True)
class DistFile:
    """One file of a project as listed by a simple index.

    ``url`` carries no fragment (the hash lives in ``sha256``); it is relative to the page
    when rendered by the origin and absolute after :func:`parse_project_page`.
    ``yanked``: ``None`` = not yanked, ``""`` = yanked without a reason, else the reason.
    """

    filename: str
    url: str
    sha256: str | None
    size: int | None
    requires_python: str | None
    metadata_sha256: str | None
    has_metadata: bool
    yanked: str | None

    def __post_init__(self) -> None:
        for label, digest in (("sha256", self.sha256), ("metadata_sha256", self.metadata_sha256)):
            if digest is not None and not _SHA256_RE.fullmatch(digest):
                raise ValueError(f"{label} must be 64 lower-case hex digits, got {digest!r}")
        if self.size is not None and self.size < 0:
            raise ValueError(f"negative size {self.size}")
        if self.metadata_sha256 is not None and not self.has_metadata:
            raise ValueError("metadata_sha256 given but has_metadata is False")

    @property
    def metadata_url(self) -> str | None:
        """PEP 658 location of this file's core metadata, if the index announces one."""
        return self.url + METADATA_SUFFIX if self.has_metadata else None


@dataclass(frozen=True)
class ProjectPage:
    """A project's simple-index page; ``name`` is PEP 503-normalised."""

    name: str
    files: tuple[DistFile, ...]


@dataclass(frozen=True)
class LocalDist:
    """A distribution file found on disk; ``metadata`` is the wheel's METADATA (None for sdists)."""

    project: str
    filename: str
    path: Path
    sha256: str
    size: int
    requires_python: str | None
    metadata: bytes | None = field(repr=False)


def _requires_python(metadata: bytes) -> str | None:
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(metadata)
    value = headers.get("Requires-Python")
    return (value.strip() or None) if isinstance(value, str) else None


def _canonical_prefix(member: str) -> str:
    return normalize_project_name(member.rsplit("-", 1)[0])


def wheel_metadata(path: Path) -> bytes:
    """The core metadata (``*.dist-info/METADATA``) inside a wheel.

    Raises :class:`MalformedIndexError` when the file is not a zip or has no (or no
    unambiguous) top-level ``.dist-info/METADATA``; ``OSError`` when it cannot be read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            candidates = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
            if len(candidates) > 1:  # pick "<name>-<version>.dist-info" matching the file name
                want = normalize_project_name(path.name.split("-", 1)[0])
                candidates = [c for c in candidates if _canonical_prefix(c) == want]
            if len(candidates) != 1:
                raise _malformed(str(path), f"{len(candidates)} top-level .dist-info/METADATA")
            return archive.read(candidates[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise _malformed(str(path), f"unreadable wheel: {exc}") from exc


def _sdist_pkg_info(path: Path) -> bytes | None:
    """PKG-INFO at ``<top>/PKG-INFO`` of an sdist; reads every member header so that a
    truncated archive is detected."""
    found: bytes | None = None
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            names = (n for n in archive.namelist() if re.fullmatch(r"[^/]+/PKG-INFO", n))
            return next((archive.read(n) for n in names), None)
    with tarfile.open(path, mode="r:gz") as archive:
        for member in archive:
            parts = member.name.strip("/").split("/")
            if len(parts) == 2 and parts[1] == "PKG-INFO" and member.isfile() and found is None:
                extracted = archive.extractfile(member)
                if extracted is not None:
                    found = extracted.read()
    return found


def _file_digest(path: Path) -> tuple[str, int]:
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest(), stream.tell()


# ValueError covers MalformedIndexError and packaging's InvalidWheelFilename/InvalidSdistFilename.
_SCAN_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, tarfile.TarError, zlib.error,
                NotImplementedError, RuntimeError)  # fmt: skip


def _scan_file(path: Path) -> LocalDist | None:
    name = path.name
    metadata: bytes | None = None
    try:
        if name.endswith(".whl"):
            project = str(parse_wheel_filename(name)[0])
            metadata = wheel_metadata(path)
            requires_python = _requires_python(metadata)
        elif name.endswith((".tar.gz", ".zip")):
            project = str(parse_sdist_filename(name)[0])
            pkg_info = _sdist_pkg_info(path)
            requires_python = _requires_python(pkg_info) if pkg_info is not None else None
        else:
            return None
        sha256, size = _file_digest(path)
    except _SCAN_ERRORS as exc:
        logger.warning("skipping %s: %s", path, exc)
        return None
    project = normalize_project_name(project)
    return LocalDist(project, name, path, sha256, size, requires_python, metadata)


def scan_distribution_dir(root: Path) -> dict[str, list[LocalDist]]:
    """Wheels and sdists under ``root`` (recursively, hidden entries skipped), by normalised
    project name, each list sorted by filename. Unreadable files are logged and skipped."""
    found: dict[str, dict[str, LocalDist]] = {}
    for path in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        dist = None if hidden or not path.is_file() else _scan_file(path)
        if dist is None:
            continue
        files = found.setdefault(dist.project, {})
        if dist.filename in files:
            logger.warning("skipping %s: duplicate of %s", path, files[dist.filename].path)
            continue
        files[dist.filename] = dist
    return {
        project: [files[name] for name in sorted(files)] for project, files in sorted(found.items())
    }


def project_page_from_local(
    project: str, dists: Sequence[LocalDist], *, base_url: str = ""
) -> ProjectPage:
    """A page listing ``dists``; each url is ``base_url`` + the percent-quoted filename."""
    files = tuple(
        DistFile(
            filename=dist.filename,
            url=base_url + quote(dist.filename),
            sha256=dist.sha256,
            size=dist.size,
            requires_python=dist.requires_python,
            metadata_sha256=metadata_sha256(dist.metadata) if dist.metadata is not None else None,
            has_metadata=dist.metadata is not None,
            yanked=None,
        )
        for dist in sorted(dists, key=lambda d: d.filename)
    )
    return ProjectPage(name=normalize_project_name(project), files=files)


def _html_document(title: str, body_lines: Sequence[str]) -> str:
    escaped = html.escape(title)
    head = f'<meta name="pypi:repository-version" content="{API_VERSION}">\n'
    head += f"    <title>{escaped}</title>"
    body = "".join(f"    {line}<br/>\n" for line in body_lines)
    return (
        f"<!DOCTYPE html>\n<html>\n  <head>\n    {head}\n  </head>\n  <body>\n"
        f"    <h1>{escaped}</h1>\n{body}  </body>\n</html>\n"
    )


def _anchor(dist: DistFile) -> str:
    href = dist.url + (f"#sha256={dist.sha256}" if dist.sha256 is not None else "")
    attrs = [f'href="{html.escape(href)}"']
    if dist.requires_python is not None:
        attrs.append(f'data-requires-python="{html.escape(dist.requires_python)}"')
    if dist.has_metadata:
        value = "true" if dist.metadata_sha256 is None else f"sha256={dist.metadata_sha256}"
        attrs.append(f'data-core-metadata="{value}"')
        attrs.append(f'data-dist-info-metadata="{value}"')
    if dist.yanked is not None:
        attrs.append(f'data-yanked="{html.escape(dist.yanked)}"')
    return f"<a {' '.join(attrs)}>{html.escape(dist.filename)}</a>"


def render_project_html(page: ProjectPage) -> str:
    return _html_document(f"Links for {page.name}", [_anchor(f) for f in page.files])


def _versions(files: Sequence[DistFile]) -> list[str]:
    versions = set()
    for name in (dist.filename for dist in files):
        try:
            whl = name.endswith(".whl")
            versions.add(parse_wheel_filename(name)[1] if whl else parse_sdist_filename(name)[1])
        except ValueError:  # InvalidWheelFilename, InvalidSdistFilename
            continue
    return [str(v) for v in sorted(versions)]


def _json_file(dist: DistFile) -> dict[str, object]:
    entry: dict[str, object] = {
        "filename": dist.filename,
        "url": dist.url,
        "hashes": {"sha256": dist.sha256} if dist.sha256 is not None else {},
    }
    if dist.requires_python is not None:
        entry["requires-python"] = dist.requires_python
    metadata: object = False
    if dist.has_metadata:
        metadata = {"sha256": dist.metadata_sha256} if dist.metadata_sha256 is not None else True
    entry["core-metadata"] = metadata
    entry["dist-info-metadata"] = metadata
    entry["yanked"] = False if dist.yanked is None else (dist.yanked or True)
    if dist.size is not None:
        entry["size"] = dist.size
    return entry


def render_project_json(page: ProjectPage) -> bytes:
    document = {
        "meta": {"api-version": API_VERSION},
        "name": page.name,
        "files": [_json_file(f) for f in page.files],
        "versions": _versions(page.files),
    }
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def render_root_html(projects: Sequence[str]) -> str:
    lines = [
        f'<a href="{html.escape(quote(normalize_project_name(p)) + "/")}">{html.escape(p)}</a>'
        for p in projects
    ]
    return _html_document("Simple index", lines)


def render_root_json(projects: Sequence[str]) -> bytes:
    document = {"meta": {"api-version": API_VERSION}, "projects": [{"name": p} for p in projects]}
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _accept_ranges(header: str) -> list[tuple[str, str, float]]:
    ranges = []
    for item in header.split(","):
        media, *params = item.split(";")
        kind, slash, subtype = media.strip().lower().partition("/")
        if not slash or not kind or not subtype:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = -1.0
        if 0.0 <= q <= 1.0:
            ranges.append((kind, subtype.strip(), q))
    return ranges


def _quality(media_type: str, ranges: Sequence[tuple[str, str, float]]) -> float:
    """q of the most specific range matching ``media_type`` (RFC 9110 section 12.5.1)."""
    kind, _, subtype = media_type.partition("/")
    best: tuple[int, float] = (-1, 0.0)
    for r_kind, r_subtype, q in ranges:
        if (r_kind, r_subtype) == (kind, subtype):
            specificity = 2
        elif r_kind == kind and r_subtype == "*":
            specificity = 1
        elif (r_kind, r_subtype) == ("*", "*"):
            specificity = 0
        else:
            continue
        best = max(best, (specificity, q))
    return best[1]


def choose_format(accept_header: str | None) -> IndexFormat:
    """PEP 691 negotiation: JSON only when the client rates it strictly above HTML."""
    if not accept_header or not accept_header.strip():
        return "html"
    ranges = _accept_ranges(accept_header)
    q_json = max(_quality(t, ranges) for t in _JSON_TYPES)
    q_html = max(_quality(t, ranges) for t in _HTML_TYPES)
    return "json" if q_json > q_html else "html"


def _media_type(content_type: str, source: str) -> tuple[bool, str | None]:
    """(is it JSON, charset) for a simple-API response's Content-Type."""
    media, *params = (part.strip() for part in content_type.split(";"))
    if media.lower() not in _JSON_TYPES + _HTML_TYPES:
        raise _malformed(source, f"unsupported content type {media!r}")
    pairs = (param.partition("=") for param in params)
    charset = next((v.strip('" ') for k, _, v in pairs if k.strip().lower() == "charset"), "")
    return media.lower() in _JSON_TYPES, charset or None


def _checked_filename(filename: str, source: str, line: int | None) -> str:
    if not filename or any(bad in filename for bad in ("/", "\\", "..", "\x00")):
        raise _malformed(source, f"unsafe file name {filename!r}", line)
    return filename


def _checked_sha256(value: object, what: str, source: str, line: int | None) -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value.lower()):
        raise _malformed(source, f"{what} is not a sha256 hex digest: {value!r}", line)
    return value.lower()


def _check_api_version(version: object, source: str, line: int | None) -> None:
    major, dot, minor = version.partition(".") if isinstance(version, str) else ("", "", "")
    if not (dot and major.isdigit() and minor.isdigit()):
        raise _malformed(source, f"invalid api-version {version!r}", line)
    if int(major) != 1:
        raise _malformed(source, f"unsupported api-version {version!r}", line)


def _load_json(body: bytes, source: str) -> dict[str, object]:
    try:
        document: object = json.loads(body)
    except json.JSONDecodeError as exc:
        raise _malformed(source, f"invalid JSON: {exc.msg}", exc.lineno) from exc
    except ValueError as exc:  # undecodable bytes
        raise _malformed(source, f"invalid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise _malformed(source, "JSON document is not an object")
    meta = document.get("meta")
    if not isinstance(meta, dict):
        raise _malformed(source, "missing 'meta' object")
    _check_api_version(meta.get("api-version"), source, None)
    return document


@dataclass(frozen=True)
class _Anchor:
    attrs: dict[str, str | None]
    text: str
    line: int


class _AnchorParser(HTMLParser):
    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.source = source
        self.base_href: str | None = None
        self.anchors: list[_Anchor] = []
        self._open: tuple[list[tuple[str, str | None]], int, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        line = self.getpos()[0]
        if tag == "a":
            self._close_anchor()
            self._open = (attrs, line, [])
        elif tag == "base" and self.base_href is None:
            self.base_href = dict(attrs).get("href") or None
        elif tag == "meta" and dict(attrs).get("name") == "pypi:repository-version":
            _check_api_version(dict(attrs).get("content"), self.source, line)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._close_anchor()

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open[2].append(data)

    def close(self) -> None:
        super().close()
        self._close_anchor()

    def _close_anchor(self) -> None:
        if self._open is not None:
            attrs, line, text = self._open
            self.anchors.append(_Anchor(dict(attrs), "".join(text).strip(), line))
            self._open = None


def _parse_html(body: bytes, charset: str | None, source: str) -> _AnchorParser:
    parser = _AnchorParser(source)
    try:
        parser.feed(body.decode(charset or "utf-8"))
    except (UnicodeDecodeError, LookupError) as exc:
        raise _malformed(source, f"cannot decode HTML: {exc}") from exc
    parser.close()
    return parser


def _html_metadata(anchor: _Anchor, source: str) -> tuple[bool, str | None]:
    value = anchor.attrs.get("data-core-metadata")
    if value is None:
        value = anchor.attrs.get("data-dist-info-metadata")
    if value is None or value == "false":
        return False, None
    if value == "true":
        return True, None
    algorithm, sep, digest = value.partition("=")
    if not sep:
        logger.warning("%s line %d: ignoring metadata value %r", source, anchor.line, value)
        return False, None
    if algorithm == "sha256":
        return True, _checked_sha256(digest, "core metadata hash", source, anchor.line)
    return True, None


def _dist_from_anchor(anchor: _Anchor, base_url: str, source: str) -> DistFile | None:
    href = anchor.attrs.get("href")
    if not href:
        return None
    url, fragment = urldefrag(urljoin(base_url, href))
    sha256 = None
    for pair in fragment.split("&"):
        algorithm, _, digest = pair.partition("=")
        if algorithm == "sha256":
            sha256 = _checked_sha256(digest, "file hash", source, anchor.line)
    filename = anchor.text or unquote(urlsplit(url).path.rpartition("/")[2])
    has_metadata, meta_sha = _html_metadata(anchor, source)
    yanked = (anchor.attrs.get("data-yanked") or "") if "data-yanked" in anchor.attrs else None
    return DistFile(
        filename=_checked_filename(filename, source, anchor.line),
        url=url,
        sha256=sha256,
        size=None,
        requires_python=anchor.attrs.get("data-requires-python") or None,
        metadata_sha256=meta_sha,
        has_metadata=has_metadata,
        yanked=yanked,
    )


def _json_metadata(entry: dict[str, object], source: str) -> tuple[bool, str | None]:
    value = entry.get("core-metadata", entry.get("dist-info-metadata"))
    if value is None or isinstance(value, bool):
        return bool(value), None
    if not isinstance(value, dict):
        raise _malformed(source, f"invalid core-metadata value {value!r}")
    digest = value.get("sha256")
    return True, None if digest is None else _checked_sha256(digest, "metadata hash", source, None)


def _dist_from_json(entry: object, page_url: str, source: str) -> DistFile:
    if not isinstance(entry, dict):
        raise _malformed(source, "file entry is not an object")
    filename, url = entry.get("filename"), entry.get("url")
    if not isinstance(filename, str) or not isinstance(url, str):
        raise _malformed(source, f"file entry lacks filename/url: {entry!r}")
    hashes = entry.get("hashes", {})
    if not isinstance(hashes, dict):
        raise _malformed(source, f"{filename}: hashes is not an object")
    digest = hashes.get("sha256")
    sha256 = None if digest is None else _checked_sha256(digest, "file hash", source, None)
    requires_python = entry.get("requires-python")
    if requires_python is not None and not isinstance(requires_python, str):
        raise _malformed(source, f"{filename}: requires-python is not a string")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _malformed(source, f"{filename}: invalid size {size!r}")
    yanked_value = entry.get("yanked", False)
    if not isinstance(yanked_value, (bool, str)):
        raise _malformed(source, f"{filename}: invalid yanked value")
    yanked = yanked_value if isinstance(yanked_value, str) else ("" if yanked_value else None)
    has_metadata, meta_sha = _json_metadata(entry, source)
    return DistFile(
        filename=_checked_filename(filename, source, None),
        url=urldefrag(urljoin(page_url, url))[0],
        sha256=sha256,
        size=size,
        requires_python=requires_python or None,
        metadata_sha256=meta_sha,
        has_metadata=has_metadata,
        yanked=yanked,
    )


def parse_project_page(
    body: bytes, content_type: str, *, page_url: str, source: str
) -> ProjectPage:
    """Parse a project page in either format; file urls come back absolute, fragment-free.

    For HTML the project name is taken from the last path segment of ``page_url``.
    """
    is_json, charset = _media_type(content_type, source)
    if is_json:
        document = _load_json(body, source)
        name = document.get("name")
        if not isinstance(name, str):
            raise _malformed(source, "missing project 'name'")
        entries = document.get("files")
        if not isinstance(entries, list):
            raise _malformed(source, "'files' is not a list")
        files = tuple(_dist_from_json(entry, page_url, source) for entry in entries)
        return ProjectPage(name=normalize_project_name(name), files=files)
    parser = _parse_html(body, charset, source)
    base_url = urljoin(page_url, parser.base_href) if parser.base_href else page_url
    dists = (_dist_from_anchor(anchor, base_url, source) for anchor in parser.anchors)
    name = unquote(urlsplit(page_url).path.rstrip("/").rpartition("/")[2])
    return ProjectPage(
        name=normalize_project_name(name), files=tuple(d for d in dists if d is not None)
    )


def parse_root_page(body: bytes, content_type: str, *, page_url: str, source: str) -> list[str]:
    """Project names (normalised, de-duplicated, in page order) from a root index page."""
    is_json, charset = _media_type(content_type, source)
    names: list[str] = []
    if is_json:
        projects = _load_json(body, source).get("projects")
        if not isinstance(projects, list):
            raise _malformed(source, "'projects' is not a list")
        for project in projects:
            name = project.get("name") if isinstance(project, dict) else None
            if not isinstance(name, str):
                raise _malformed(source, f"invalid project entry {project!r}")
            names.append(name)
    else:
        parser = _parse_html(body, charset, source)
        names = [a.text for a in parser.anchors if a.attrs.get("href") and a.text]
    return list(dict.fromkeys(normalize_project_name(n) for n in names))
