"""Debian repository formats: parse Release/InRelease/Packages, build and sign a repository."""

from __future__ import annotations

import bz2
import ctypes
import gzip
import hashlib
import importlib
import lzma
import os
import posixpath
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from debian.debian_support import Version

from distro.errors import MalformedIndexError as MalformedIndexError

_HASH_LENGTHS = {"md5sum": 32, "sha1": 40, "sha256": 64, "sha512": 128}
_FIELD_NAME = re.compile(r"([!-9;-~][!-9;-~]*):(.*)")
_HEX = re.compile(r"[0-9a-fA-F]+")
_DIGITS = re.compile(r"[0-9]+")
_ORPHAN = "continuation line outside a field"
_DECOMPRESS_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)
_ARMOR_HEADER = re.compile(r"[A-Za-z0-9-]+: .*")


class RepoToolError(RuntimeError):
    """An external tool (dpkg-deb, gpg) failed."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{argv[0]} exited {returncode}: {stderr.strip()[-2000:]}")


@dataclass(frozen=True)
class IndexFileEntry:
    """One index file listed by a Release file; path is relative to dists/<suite>/."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ReleaseIndex:
    """The parsed content of a Release or InRelease file (fields it lacks are empty)."""

    suite: str
    codename: str
    date: str
    acquire_by_hash: bool
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    files: Mapping[str, IndexFileEntry] = field(hash=False)

    def entry(self, path: str) -> IndexFileEntry | None:
        """The entry for `path` (relative to dists/<suite>/), if listed."""
        return self.files.get(path)


@dataclass(frozen=True)
class PoolEntry:
    """One binary package as listed in a Packages index."""

    package: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SigningKey:
    """A secret key in a private GnuPG home."""

    gnupg_home: Path
    key_id: str


@dataclass(frozen=True)
class SkippedDeb:
    """A file under the .deb directory that was left out of the repository, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class BuiltRepository:
    """What build_repository wrote."""

    root: Path
    suite: str
    packages: tuple[PoolEntry, ...]
    release: ReleaseIndex
    skipped: tuple[SkippedDeb, ...] = ()


# --------------------------------------------------------------------------- parsing


_UNSAFE_CHAR = re.compile(r"[\x00-\x1f\x7f\\]")


def _is_safe_relpath(path: str) -> bool:
    """Relative, no '.', '..' or empty components, no backslashes or control characters."""
    if not path or path[0] == "/" or path[-1] == "/" or "//" in path:
        return False
    if _UNSAFE_CHAR.search(path) is not None:
        return False
    return "/." not in "/" + path or all(p not in (".", "..") for p in path.split("/"))


def decode_index_text(data: bytes, source: str) -> str:
    """``data`` as UTF-8 text; NUL bytes or invalid UTF-8 raise MalformedIndexError (with line)."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise MalformedIndexError(source, data.count(b"\n", 0, nul) + 1, "binary data (NUL byte)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MalformedIndexError(source, line, "not valid UTF-8") from None


def _strip_clearsign(lines: list[tuple[int, str]], source: str) -> list[tuple[int, str]]:
    """The signed text of an OpenPGP clear-signed message, dash-escaping undone."""
    state, body = "lead", []  # lead -> headers -> text -> signature -> trail
    for num, line in lines:
        bare = line.rstrip()
        problem = None
        if state == "lead":
            state = "headers" if bare == "-----BEGIN PGP SIGNED MESSAGE-----" else state
            problem = "data before the signed message" if state == "lead" and bare else None
        elif state == "headers":  # armor headers such as "Hash: SHA256", then a blank line
            state = "text" if not bare else state
            problem = "bad armor header" if bare and not _ARMOR_HEADER.fullmatch(bare) else None
        elif state == "text":
            if bare == "-----BEGIN PGP SIGNATURE-----":
                state = "signature"
            elif line.startswith("-") and not line.startswith("- "):
                problem = "line starting with '-' is not dash-escaped"
            else:
                body.append((num, line.removeprefix("- ")))
        elif state == "signature":
            state = "trail" if bare == "-----END PGP SIGNATURE-----" else state
            problem = "bad armor line" if state != "trail" and bare[:5] == "-----" else None
        elif bare:
            problem = "data after the signature"
        if problem is not None:
            raise MalformedIndexError(source, num, problem)
    if state != "trail":
        raise MalformedIndexError(source, None, f"clear-signed message truncated in its {state}")
    return body


def _paragraph(lines: list[tuple[int, str]], source: str) -> dict[str, list[tuple[int, str]]]:
    """Fields (lower-cased name -> [(line, first value), (line, continuation)...])."""
    fields: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    ended_at: int | None = None
    for num, raw in lines:
        text = raw.rstrip("\r\n")
        if not text.strip():
            if fields:
                ended_at = num
            continue
        if ended_at is not None:
            raise MalformedIndexError(source, num, "more than one paragraph")
        if text[0] in " \t":
            if current is None:
                raise MalformedIndexError(source, num, _ORPHAN)
            current.append((num, text.strip()))
            continue
        match = _FIELD_NAME.fullmatch(text)
        if match is None or text.startswith(("#", "-")):
            raise MalformedIndexError(source, num, f"not a field: {text[:60]!r}")
        name = match.group(1).lower()
        if name in fields:
            raise MalformedIndexError(source, num, f"duplicate {match.group(1)} field")
        current = [(num, match.group(2).strip())]
        fields[name] = current
    return fields


def parse_release(data: bytes, source: str) -> ReleaseIndex:
    """Parse an InRelease (clear-signed) or plain Release file; the signature is not checked."""
    text = decode_index_text(data, source)
    lines = list(enumerate(text.split("\n"), start=1))
    if not text.strip():
        raise MalformedIndexError(source, None, "empty input")
    if any(t.startswith("-----BEGIN PGP SIGNED MESSAGE-----") for _, t in lines):
        lines = _strip_clearsign(lines, source)
    fields = _paragraph(lines, source)
    if not fields:
        raise MalformedIndexError(source, None, "no fields")
    for name in fields:
        if name in _HASH_LENGTHS:
            _parse_hash_section(fields[name], _HASH_LENGTHS[name], source)
    if "sha256" not in fields:
        raise MalformedIndexError(source, None, "no SHA256 section")
    files = _parse_hash_section(fields["sha256"], 64, source)

    def value(name: str) -> str:
        return " ".join(v for _, v in fields.get(name, [])).strip()

    return ReleaseIndex(
        suite=value("suite"),
        codename=value("codename"),
        date=value("date"),
        acquire_by_hash=value("acquire-by-hash").lower() == "yes",
        architectures=tuple(value("architectures").split()),
        components=tuple(value("components").split()),
        files=MappingProxyType(files),
    )


def _parse_hash_section(
    section: list[tuple[int, str]], hex_len: int, source: str
) -> dict[str, IndexFileEntry]:
    head_line, head = section[0]
    if head:
        raise MalformedIndexError(source, head_line, "checksum field must start on its own line")
    out: dict[str, IndexFileEntry] = {}
    for num, text in section[1:]:
        parts = text.split()
        if len(parts) != 3:
            raise MalformedIndexError(source, num, "checksum line needs 'hash size path'")
        digest, size, path = parts
        if len(digest) != hex_len or not _HEX.fullmatch(digest):
            raise MalformedIndexError(source, num, f"checksum is not {hex_len} hex digits")
        if not _DIGITS.fullmatch(size):
            raise MalformedIndexError(source, num, f"size is not an integer: {size!r}")
        if not _is_safe_relpath(path):
            raise MalformedIndexError(source, num, f"unsafe path {path!r}")
        entry = IndexFileEntry(path=path, size=int(size), sha256=digest.lower())
        if out.get(path, entry) != entry:
            raise MalformedIndexError(source, num, f"conflicting entries for {path!r}")
        out[path] = entry
    return out


# One token per line that matters: a wanted field, a stanza separator, an orphan continuation
# line or a line that is not a field. A leading literal "\n" keeps the regex engine fast.
_TOKEN = re.compile(
    r"\n(?:(Package|Version|Architecture|Filename|Size|SHA256):[ \t]*([^\n]*)"
    r"|(?P<odd>)(?=(?i:package|version|architecture|filename|size|sha256):)"
    r"|(?P<orphan>)(?=\n[ \t])|(?P<sep>)(?=\n)|(?P<bad>)(?![ \t]|[^\s:]+:|\Z))"
)
_WANTED_ANYCASE = re.compile(r"\n(?i:(Package|Version|Architecture|Filename|Size|SHA256)):(.*)")
_CANONICAL = {n.lower(): n for n in ("Package", "Version", "Architecture", "Filename", "Size")}
_CANONICAL["sha256"] = "SHA256"


def parse_packages(data: bytes, source: str) -> list[PoolEntry]:
    """Parse an uncompressed Packages index (fast scanner for the fields needed)."""
    text = "\n\n" + decode_index_text(data, source) + "\n\n"
    entries: list[PoolEntry] = []
    found: dict[str, re.Match[str]] = {}
    stanza_at, odd = 0, False  # the newline starting the stanza; field names in unusual case?
    for m in _TOKEN.finditer(text):
        kind = m.lastindex  # 2: wanted field, 3: odd case, 4: orphan, 5: separator, 6: not a field
        if kind == 2:
            name = m.group(1)
            if name in found:
                raise MalformedIndexError(source, _line_of(text, m), f"duplicate {name} field")
            found[name] = m
        elif kind == 5:
            if m.start() > stanza_at:
                entries.append(_pool_entry(found, source, text, stanza_at, m.start(), odd))
                found, odd = {}, False
            stanza_at = m.start() + 1
        elif kind == 3:
            odd = True
        elif kind == 4:
            raise MalformedIndexError(source, _line_of(text, m) + 1, _ORPHAN)
        else:
            bad = text[m.start() + 1 : text.find("\n", m.start() + 1)]
            raise MalformedIndexError(source, _line_of(text, m), f"not a field: {bad[:60]!r}")
    return entries


def _line_of(text: str, m: re.Match[str] | int) -> int:
    """Line number (in the original data) of the line a token's leading newline starts."""
    return text.count("\n", 0, (m if isinstance(m, int) else m.start()) + 1) - 1


def _pool_entry(
    found: dict[str, re.Match[str]], source: str, text: str, start: int, end: int, odd: bool
) -> PoolEntry:
    if odd:  # slow path: field names in unusual case
        for m in _WANTED_ANYCASE.finditer(text, start, end):
            canonical = _CANONICAL[m.group(1).lower()]
            if canonical != m.group(1) and canonical in found:
                raise MalformedIndexError(source, _line_of(text, m), f"duplicate {canonical} field")
            found[canonical] = m
    values = {name: m.group(2).strip() for name, m in found.items()}
    for name in ("Package", "Version", "Architecture", "Filename", "Size", "SHA256"):
        if not values.get(name):
            raise MalformedIndexError(source, _line_of(text, start), f"stanza without {name} field")
    size, digest, filename = values["Size"], values["SHA256"], values["Filename"]
    problem = None
    if not _DIGITS.fullmatch(size):
        problem = "Size", f"bad Size {size!r}"
    elif len(digest) != 64 or not _HEX.fullmatch(digest):
        problem = "SHA256", "SHA256 is not 64 hex digits"
    elif not _is_safe_relpath(filename):
        problem = "Filename", f"unsafe Filename {filename!r}"
    if problem is not None:
        raise MalformedIndexError(source, _line_of(text, found[problem[0]]), problem[1])
    fields = (values["Package"], values["Version"], values["Architecture"])
    return PoolEntry(*fields, filename, int(size), digest.lower())


def decompress_index(name: str, data: bytes) -> bytes:
    """Decompress an index file according to its suffix (.gz .xz .bz2 .lz4 .zst or none)."""
    suffix = name.rsplit("/", 1)[-1].rpartition(".")[2]
    if suffix not in ("gz", "xz", "bz2", "lz4", "zst"):
        return data
    if not data:
        raise MalformedIndexError(name, None, "corrupt compressed data: empty file")
    errors: tuple[type[Exception], ...] = _DECOMPRESS_ERRORS
    try:
        if suffix == "lz4":
            lz4_frame = _optional_module("lz4.frame", name)
            errors += (RuntimeError,)
            return bytes(lz4_frame.decompress(data))
        if suffix == "zst":
            try:
                from backports import zstd

                errors += (zstd.ZstdError,)
                return zstd.decompress(data)
            except ImportError:
                zstandard = _optional_module("zstandard", name)
                errors += (zstandard.ZstdError,)
                with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                    return bytes(reader.read())
        module = {"gz": gzip, "xz": lzma, "bz2": bz2}[suffix]
        return bytes(module.decompress(data))
    except errors as exc:
        raise MalformedIndexError(name, None, f"corrupt compressed data: {exc}") from None


def _optional_module(module: str, source: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MalformedIndexError(source, None, f"{module} is not installed") from None


# --------------------------------------------------------------------------- building


def _run(argv: Sequence[str]) -> bytes:
    """Run a tool; return its stdout or raise RepoToolError."""
    proc = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise RepoToolError(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc.stdout


@dataclass(frozen=True)
class _Deb:
    path: Path
    control: tuple[tuple[str, str], ...]  # (name, value with continuation lines verbatim)
    size: int
    md5: str
    sha256: str

    def get(self, name: str) -> str:
        return next((v for k, v in self.control if k.lower() == name.lower()), "")

    def pool_path(self, component: str) -> str:
        package = self.get("Package")
        source = self.get("Source").split(" ")[0] or package
        prefix = source[:4] if source.startswith("lib") else source[:1]
        name = f"{package}_{self.get('Version').split(':', 1)[-1]}_{self.get('Architecture')}.deb"
        return f"pool/{component}/{prefix}/{source}/{name}"


# What may appear in pool file names (dpkg-deb enforces this, a crafted .deb might not).
_SAFE_CONTROL = {
    "Package": re.compile(r"[a-z0-9][a-z0-9+.-]*"),
    "Version": re.compile(r"[0-9]+:[A-Za-z0-9.+~:-]+|[A-Za-z0-9.+~-]+"),
    "Architecture": re.compile(r"[a-z0-9][a-z0-9-]*"),
    "Source": re.compile(r"([a-z0-9][a-z0-9+.-]*)( \([A-Za-z0-9.+~:-]+\))?"),
}


def _check_deb_archive(path: Path) -> None:
    """A .deb is an ar archive of debian-binary, control.tar.* and data.tar.*, each member
    complete: a truncated copy fails here even when dpkg-deb could still read its control."""
    with open(path, "rb") as fh:
        total = os.fstat(fh.fileno()).st_size
        if fh.read(8) != b"!<arch>\n":
            raise MalformedIndexError(str(path), None, "not a Debian package (no ar archive header)")
        pos, names = 8, []
        while pos < total:
            fh.seek(pos)
            header = fh.read(60)
            size_text = header[48:58].decode("ascii", "replace").strip()
            if len(header) < 60 or header[58:60] != b"`\n" or not size_text.isdigit():
                raise MalformedIndexError(str(path), None, f"broken ar member header at byte {pos}")
            names.append(header[:16].decode("ascii", "replace").strip().rstrip("/"))
            end = pos + 60 + int(size_text)
            if end > total:
                raise MalformedIndexError(str(path), None, f"truncated: member {names[-1]} "
                                          f"ends at byte {end}, the file has {total}")
            pos = end + (end & 1)
    if names[:1] != ["debian-binary"] or not any(n.startswith("control.tar") for n in names) \
            or not any(n.startswith("data.tar") for n in names):
        raise MalformedIndexError(str(path), None, f"incomplete package (members: "
                                  f"{', '.join(names) or 'none'})")


def _read_deb(path: Path) -> _Deb:
    """Control fields (split on newlines only: Deb822's splitlines() eats U+2028) and hashes."""
    _check_deb_archive(path)
    raw = _run(["dpkg-deb", "--info", str(path), "control"])
    control: list[tuple[str, str]] = []
    for num, line in enumerate(decode_index_text(raw, str(path)).rstrip("\n").split("\n"), start=1):
        match = _FIELD_NAME.fullmatch(line)
        if line[:1] in (" ", "\t") and control:
            control[-1] = (control[-1][0], f"{control[-1][1]}\n{line}")
        elif match is not None and line[0] not in "#-":
            control.append((match.group(1), match.group(2).strip()))
        else:
            raise MalformedIndexError(str(path), num, f"bad control line {line[:60]!r}")
    deb = _Deb(path, tuple(control), 0, "", "")
    for name, pattern in _SAFE_CONTROL.items():
        if not pattern.fullmatch(deb.get(name)) and (deb.get(name) or name != "Source"):
            raise MalformedIndexError(str(path), None, f"bad or missing {name} field")
    md5, sha, size = hashlib.md5(), hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return replace(deb, size=size, md5=md5.hexdigest(), sha256=sha.hexdigest())


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _stanza(deb: _Deb, filename: str) -> str:
    """The Packages stanza: control fields, then Filename/Size/hashes, Description last."""
    own = ("filename", "size", "md5sum", "sha256", "description")
    text = "".join(f"{k}: {v}\n" for k, v in deb.control if k.lower() not in own)
    text += f"Filename: {filename}\nSize: {deb.size}\nMD5sum: {deb.md5}\nSHA256: {deb.sha256}\n"
    return text + "".join(f"{k}: {v}\n" for k, v in deb.control if k.lower() == "description")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _rfc2822(moment: datetime) -> str:
    day = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[moment.weekday()]
    return f"{day}, {moment.day:02d} {_MONTHS[moment.month - 1]} {moment:%Y %H:%M:%S} UTC"


def _write_index(dist: Path, rel: str, data: bytes, listing: dict[str, bytes]) -> None:
    """Write dists/<suite>/<rel> plus its by-hash/SHA256 copy, remember it for Release."""
    target = dist / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    _link_or_copy(target, target.parent / "by-hash" / "SHA256" / hashlib.sha256(data).hexdigest())
    listing[rel] = data


def build_repository(
    deb_dir: Path,
    out_dir: Path,
    *,
    suite: str = "stable",
    codename: str | None = None,
    component: str = "main",
    origin: str = "edgedepot",
    label: str = "edgedepot",
    signing_key: SigningKey | None = None,
    valid_for: timedelta | None = None,
    now: datetime | None = None,
    skip_bad: bool = False,
) -> BuiltRepository:
    """Build (or atomically replace) an apt repository at out_dir from every .deb under deb_dir.

    out_dir is owned by this function: its previous content is replaced as a whole, except that
    the by-hash files of the previous Release are kept so clients mid-update still find them.
    With skip_bad, a file that is not a readable package (junk, truncated, a second file for the
    same pool path) is left out and listed in `skipped`, instead of failing the whole build: one
    bad upload must not take the others offline.
    """
    deb_dir, out_dir = deb_dir.resolve(), out_dir.absolute()
    if deb_dir == out_dir.resolve() or out_dir.resolve() in deb_dir.parents:
        raise ValueError(f"deb_dir {deb_dir} must not be inside out_dir {out_dir}")
    for name in (suite, component, codename or suite):
        if not _is_safe_relpath(name) or "/" in name or any(c.isspace() for c in name):
            raise ValueError(f"bad suite/codename/component name {name!r}")
    skip = out_dir.resolve()
    paths = sorted(p for p in deb_dir.rglob("*.deb") if p.is_file() and skip not in p.parents)
    skipped: list[SkippedDeb] = []

    def read(path: Path) -> _Deb | SkippedDeb:
        try:
            return _read_deb(path)
        except (RepoToolError, MalformedIndexError, OSError) as exc:
            if not skip_bad:
                raise
            return SkippedDeb(path, _short_reason(exc))

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        results = list(pool.map(read, paths))
    debs = [r for r in results if isinstance(r, _Deb)]
    skipped.extend(r for r in results if isinstance(r, SkippedDeb))
    debs.sort(key=lambda d: (d.get("Package"), Version(d.get("Version")), d.get("Architecture")))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)
        laid_out = _lay_out_pool(tmp, component, debs, skipped if skip_bad else None)
        arches = sorted({e.architecture for e, _ in laid_out} - {"all"}) or ["amd64"]
        dist = tmp / "dists" / suite
        listing: dict[str, bytes] = {}
        for arch in arches:
            raw = "\n".join(s for e, s in laid_out if e.architecture in (arch, "all")).encode()
            base = f"{component}/binary-{arch}"
            _write_index(dist, f"{base}/Packages", raw, listing)
            _write_index(dist, f"{base}/Packages.gz", gzip.compress(raw, 9, mtime=0), listing)
            _write_index(dist, f"{base}/Packages.xz", lzma.compress(raw, preset=6), listing)
            sub = f"Archive: {suite}\nOrigin: {origin}\nLabel: {label}\nAcquire-By-Hash: yes\n"
            sub += f"Component: {component}\nArchitecture: {arch}\n"
            _write_index(dist, f"{base}/Release", sub.encode(), listing)
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        head = f"Origin: {origin}\nLabel: {label}\nSuite: {suite}\nCodename: {codename or suite}\n"
        head += f"Date: {_rfc2822(moment)}\n"
        if valid_for is not None:
            head += f"Valid-Until: {_rfc2822(moment + valid_for)}\n"
        head += f"Architectures: {' '.join(arches)}\nComponents: {component}\n"
        head += "Acquire-By-Hash: yes\n"
        for section, algo in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
            head += f"{section}:\n"
            for rel, data in sorted(listing.items()):
                head += f" {algo(data).hexdigest()} {len(data):>16} {rel}\n"
        release_bytes = head.encode()
        (dist / "Release").write_bytes(release_bytes)
        if signing_key is not None:
            _sign_release(signing_key, dist)
        _keep_previous_by_hash(out_dir / "dists" / suite, dist)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    release = parse_release(release_bytes, str(out_dir / "dists" / suite / "Release"))
    return BuiltRepository(out_dir, suite, tuple(e for e, _ in laid_out), release,
                           tuple(sorted(skipped, key=lambda s: s.path)))


def _short_reason(exc: Exception) -> str:
    """One line: why a .deb could not be read."""
    if isinstance(exc, RepoToolError):
        lines = [ln.strip() for ln in exc.stderr.splitlines() if ln.strip()]
        return f"{exc.argv[0]}: {lines[-1] if lines else f'exited {exc.returncode}'}"
    if isinstance(exc, MalformedIndexError):
        return exc.message if exc.line is None else f"{exc.message} (control line {exc.line})"
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)).lower()
    return str(exc)


def _lay_out_pool(root: Path, component: str, debs: list[_Deb],
                  skipped: list[SkippedDeb] | None = None) -> list[tuple[PoolEntry, str]]:
    """Hardlink each .deb into the pool; (entry, Packages stanza) per distinct file."""
    out: list[tuple[PoolEntry, str]] = []
    seen: dict[str, str] = {}
    for deb in debs:
        rel = deb.pool_path(component)
        if seen.setdefault(rel, deb.sha256) != deb.sha256:
            if skipped is None:
                raise ValueError(f"two different .deb files map to {rel}: {deb.path}")
            skipped.append(SkippedDeb(deb.path, f"another file already provides {rel}"))
            continue
        if (root / rel).exists():
            continue
        _link_or_copy(deb.path, root / rel)
        fields = (deb.get("Package"), deb.get("Version"), deb.get("Architecture"))
        out.append((PoolEntry(*fields, rel, deb.size, deb.sha256), _stanza(deb, rel)))
    return out


def _keep_previous_by_hash(old_dist: Path, new_dist: Path) -> None:
    """Hardlink the by-hash files of the previous Release into the new tree."""
    try:
        old = parse_release((old_dist / "Release").read_bytes(), str(old_dist / "Release"))
    except (OSError, MalformedIndexError):
        return
    for entry in old.files.values():
        rel = posixpath.join(posixpath.dirname(entry.path), "by-hash", "SHA256", entry.sha256)
        if (old_dist / rel).is_file() and not (new_dist / rel).exists():
            _link_or_copy(old_dist / rel, new_dist / rel)


def _swap_in(new: Path, target: Path) -> None:
    """Replace target by new: renameat2(RENAME_EXCHANGE) if possible, else two renames."""
    if not os.path.lexists(target):
        os.rename(new, target)
        return
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
        renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        exchanged = renameat2(-100, os.fsencode(new), -100, os.fsencode(target), 2) == 0
    except (OSError, AttributeError):
        exchanged = False
    if exchanged:  # `new` now holds the previous tree (or symlink)
        new.unlink() if new.is_symlink() else shutil.rmtree(new)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / "tree")
    os.rename(new, target)
    shutil.rmtree(old)


# --------------------------------------------------------------------------- signing

def _gpg(key: SigningKey, *args: str) -> list[str]:
    base = ["gpg", "--batch", "--yes", "--no-tty", "--pinentry-mode", "loopback"]
    return [*base, "--passphrase", "", "--homedir", str(key.gnupg_home), *args]


def run_gpg(key: SigningKey, *args: str) -> bytes:
    """Run gpg in batch mode on the key's GnuPG home; RepoToolError when it fails."""
    return _run(_gpg(key, *args))


def _sign_release(key: SigningKey, dist: Path) -> None:
    release = str(dist / "Release")
    for out, mode in (("InRelease", "--clearsign"), ("Release.gpg", "--detach-sign")):
        opts = ("--local-user", key.key_id, "--digest-algo", "SHA256", "--armor", mode)
        _run(_gpg(key, *opts, "--output", str(dist / out), release))


def export_public_key(key: SigningKey, out: Path) -> Path:
    """Write the public key as a keyring apt accepts (binary; ASCII armor if out ends in .asc)."""
    armor = ("--armor",) if out.suffix == ".asc" else ()
    data = _run(_gpg(key, *armor, "--export", key.key_id))
    if not data:
        raise RepoToolError(["gpg", "--export"], 0, f"key {key.key_id} not found")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def stop_gpg_agent(key: SigningKey) -> None:
    """Stop the gpg-agent that signing started for this key's GnuPG home (best effort)."""
    argv = ["gpgconf", "--homedir", str(key.gnupg_home), "--kill", "gpg-agent"]
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
