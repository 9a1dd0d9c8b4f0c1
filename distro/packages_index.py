"""Debian ``Packages`` indexes in a compact in-memory form, cached on disk by sha256.

A loaded file keeps its decompressed text plus per-stanza offsets and the few fields every
lookup needs (name, version, architecture, Provides). Everything else of a stanza is parsed on
first use into a :class:`PackageVersion` (relations with python-debian's ``PkgRelation``), so
only the packages a resolution touches pay for a full parse. Several files (suite, -updates,
-security) combine into one :class:`PackageIndex`; a package's candidate is its highest version
among the files of highest pin priority, as apt's policy chooses it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from debian.deb822 import PkgRelation, Release

from distro.debian_repo import MalformedIndexError, decode_index_text, decompress_index
from distro.versions import compare_versions, is_valid_version

__all__ = [
    "DEFAULT_CACHE_DIR",
    "IndexSpec",
    "LoadedPackages",
    "PackageIndex",
    "PackageVersion",
    "Relation",
    "default_cache_dir",
    "load_index",
    "load_packages_file",
    "release_priority",
]

_CACHE_FORMAT = 7
DEFAULT_CACHE_DIR = Path("~/.cache/edgedepot/deb-index")
_FIELD_LINE = re.compile(rb"\n(?![ \t\n])(?![!-9;-~]+:)")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.\-]*")
_PROVIDES_ITEM = re.compile(r"\s*([^\s,(:]+)(?::[^\s,(]+)?\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*")
_RELATION_FIELDS = ("Pre-Depends", "Depends", "Conflicts", "Breaks", "Recommends", "Suggests")
_PRIORITY_RANK = {"required": 1, "important": 2, "standard": 3, "optional": 4, "extra": 5}


def default_cache_dir() -> Path:
    """``$EDGEDEPOT_CACHE_DIR/deb-index`` or ``~/.cache/edgedepot/deb-index``."""
    base = os.environ.get("EDGEDEPOT_CACHE_DIR")
    return Path(base) / "deb-index" if base else DEFAULT_CACHE_DIR.expanduser()


@dataclass(frozen=True)
class Relation:
    """One alternative of a dependency: ``name[:arch] [(op version)]``."""

    name: str
    arch: str | None
    op: str | None
    version: str | None

    def __str__(self) -> str:
        text = f"{self.name}:{self.arch}" if self.arch else self.name
        return f"{text} ({self.op} {self.version})" if self.op else text


OrGroup = tuple[Relation, ...]


@dataclass(frozen=True)
class PackageVersion:
    """One stanza of a Packages file, fully parsed."""

    name: str
    version: str
    arch: str
    multi_arch: str
    essential: bool
    important: bool
    priority: str
    pre_depends: tuple[OrGroup, ...]
    depends: tuple[OrGroup, ...]
    recommends: tuple[OrGroup, ...]
    suggests: tuple[OrGroup, ...]
    conflicts: tuple[Relation, ...]
    breaks: tuple[Relation, ...]
    provides: tuple[Relation, ...]
    filename: str
    size: int
    sha256: str
    source: str
    offset: int
    file_no: int
    stanza_no: int

    @property
    def key(self) -> tuple[int, int]:
        return (self.file_no, self.stanza_no)

    @property
    def priority_rank(self) -> int:
        """apt's numeric priority: 1 required .. 5 extra (0 unknown)."""
        return _PRIORITY_RANK.get(self.priority, 0)


@dataclass(frozen=True)
class IndexSpec:
    """A Packages file to load and its pin priority (apt's default is 500)."""

    path: Path
    priority: int = 500


@dataclass
class LoadedPackages:
    """One Packages file in compact form (see the module docstring)."""

    source: str
    sha256: str
    data: bytes
    starts: np.ndarray
    ends: np.ndarray
    names: list[str]
    versions: list[str]
    arches: list[str]
    provides: dict[str, list[int]]
    essential: list[int]
    required: list[int]
    line_base: int = 0
    priority: int = 500

    def __len__(self) -> int:
        return len(self.names)

    def line_of(self, offset: int) -> int:
        return self.data.count(b"\n", 0, offset) + 1 + self.line_base

    def mention_code(self, name: str) -> int | None:
        """apt's package-creation order code for ``name`` in this file (see mention_codes)."""
        key = name.encode()
        data = self.data
        n = len(key)
        pos = 0
        while True:
            pos = data.find(key, pos)
            if pos < 0:
                return None
            end = pos + n
            before = data[pos - 1:pos] if pos else b"\n"
            after = data[end:end + 1]
            if before in (b" ", b",", b"|", b"\n") and after in (b" ", b",", b":", b"(", b"\n",
                                                                b"|", b""):
                line_start = data.rfind(b"\n", 0, pos) + 1
                while data[line_start:line_start + 1] in (b" ", b"\t"):  # continuation line
                    line_start = data.rfind(b"\n", 0, line_start - 1) + 1
                colon = data.find(b":", line_start, pos)
                field = data[line_start:colon] if colon >= 0 else b""
                if field == b"Package" or field in _MENTION_RANK:
                    stanza = int(np.searchsorted(self.starts, pos, side="right")) - 1
                    code = self._stanza_mention(stanza, key)
                    if code is not None:
                        return code
            pos = end

    def _stanza_mention(self, stanza: int, key: bytes) -> int | None:
        start, end = int(self.starts[stanza]), int(self.ends[stanza])
        if self.names[stanza].encode() == key:
            return stanza << 40
        best: int | None = None
        for m in _MENTION_RE.finditer(self.data, start - 1 if start else 0, end):
            found = _TOKEN_RE.findall(m.group(2))
            if key in found:
                code = ((stanza << 40) | (_MENTION_RANK[m.group(1)] << 32)
                        | (m.start() - start)) + found.index(key)
                best = code if best is None or code < best else best
        return best

    def stanza_text(self, i: int) -> str:
        return self.data[int(self.starts[i]):int(self.ends[i])].decode("utf-8")


def _one_per_stanza(data: bytes, starts: np.ndarray, field: str, source: str, lead: int
                    ) -> tuple[list[str], list[int]]:
    """Every stanza's single ``field`` value, or a clear error naming the offending line."""
    matches = [(m.start() + 1, m.group(1)) for m in
               re.finditer(rb"\n" + field.encode() + rb":[ \t]*([^\n]*)", data)]
    if data.startswith(field.encode() + b":"):
        end = data.find(b"\n")
        matches.insert(0, (0, data[len(field) + 1:end if end >= 0 else None].strip()))
    pos = np.fromiter((p for p, _ in matches), dtype=np.int64, count=len(matches))
    owner = np.searchsorted(starts, pos, side="right") - 1
    n = len(starts)
    if len(matches) != n or not np.array_equal(owner, np.arange(n)):
        counts = np.bincount(owner, minlength=n) if len(owner) else np.zeros(n, dtype=np.int64)
        missing = np.flatnonzero(counts == 0)
        if len(missing):
            at = int(starts[missing[0]])
            raise MalformedIndexError(source, data.count(b"\n", 0, at) + 1 + lead,
                                      f"stanza without a {field} field")
        dup = int(np.flatnonzero(counts > 1)[0])
        second = int(pos[np.flatnonzero(owner == dup)[1]])
        raise MalformedIndexError(source, data.count(b"\n", 0, second) + 1 + lead, f"duplicate {field} field")
    values = [v.strip().decode("utf-8") for _, v in matches]
    return values, [int(p) for p in pos]


def parse_packages_data(data: bytes, source: str, sha256: str) -> LoadedPackages:
    """Split decompressed Packages text into the compact form; errors carry file and line."""
    decode_index_text(data, source)  # NUL bytes / invalid UTF-8 fail with their line
    data = data.replace(b"\r\n", b"\n")
    lead = len(data) - len(data.lstrip(b"\n"))
    data = data.strip(b"\n") + b"\n"

    def line_at(pos: int) -> int:
        return data.count(b"\n", 0, pos) + 1 + lead
    bad = _FIELD_LINE.search(data, 0, len(data) - 1)
    if bad is None and data.strip() and not re.match(rb"[!-9;-~]+:", data):
        bad_line: int | None = 1 + lead
    else:
        bad_line = None if bad is None else line_at(bad.start() + 1)
    if bad_line is not None:
        raise MalformedIndexError(source, bad_line, "expected 'Field: value' or a continuation line")
    seps = [m.end() for m in re.finditer(rb"\n\n+", data)]
    starts_list = [0, *[s for s in seps if s < len(data)]]
    ends_list = [*[s for s in seps if s < len(data)], len(data)]
    starts = np.array(starts_list if data.strip() else [], dtype=np.int64)
    ends = np.array(ends_list if data.strip() else [], dtype=np.int64)
    names, name_pos = _one_per_stanza(data, starts, "Package", source, lead)
    versions, version_pos = _one_per_stanza(data, starts, "Version", source, lead)
    arches, _ = _one_per_stanza(data, starts, "Architecture", source, lead)
    for i, name in enumerate(names):
        if not _NAME_RE.fullmatch(name):
            raise MalformedIndexError(source, line_at(name_pos[i]), f"invalid package name {name!r}")
    for i, version in enumerate(versions):
        if not is_valid_version(version):
            raise MalformedIndexError(source, line_at(version_pos[i]),
                                      f"invalid version {version!r} of {names[i]}")
    provides: dict[str, list[int]] = {}
    for m in re.finditer(rb"\nProvides:[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)", data):
        owner = int(np.searchsorted(starts, m.start() + 1, side="right")) - 1
        for item in m.group(1).decode("utf-8").split(","):
            im = _PROVIDES_ITEM.fullmatch(item)
            if im is None or not _NAME_RE.fullmatch(im.group(1)):
                raise MalformedIndexError(source, line_at(m.start() + 1),
                                          f"malformed Provides entry {item.strip()!r}")
            provides.setdefault(im.group(1), []).append(owner)

    def owners(pattern: bytes) -> list[int]:
        pos = [m.start() + 1 for m in re.finditer(pattern, data)]
        return sorted({int(x) for x in np.searchsorted(starts, pos, side="right") - 1})

    return LoadedPackages(
        source=source, sha256=sha256, data=data, starts=starts, ends=ends, names=names,
        versions=versions, arches=arches, provides=provides,
        line_base=lead,
        essential=owners(rb"\nEssential:[ \t]*yes[ \t]*\n"),
        required=owners(rb"\nPriority:[ \t]*required[ \t]*\n"))


_MENTION_FIELDS = (*_RELATION_FIELDS, "Replaces", "Enhances", "Provides")
_MENTION_RE = re.compile(rb"\n(" + b"|".join(f.encode() for f in _MENTION_FIELDS)
                         + rb"):([^\n]*(?:\n[ \t][^\n]*)*)")
_TOKEN_RE = re.compile(rb"(?:^|[,|])\s*([a-z0-9][a-z0-9+.\-]*)")
_MENTION_RANK = {f.encode(): n + 1 for n, f in enumerate(_MENTION_FIELDS)}


def mention_codes(data: bytes, starts: np.ndarray, names: list[str]) -> dict[bytes, int]:
    """The order in which apt's cache generator creates packages while reading this file.

    apt numbers packages as it first meets them: the stanza's own package, then the targets of
    its Pre-Depends, Depends, Conflicts, Breaks, Recommends, Suggests, Replaces, Enhances, then
    its Provides. The value packs (stanza, field rank, offset) into one sortable integer; keys
    are the names as bytes. :meth:`LoadedPackages.mention_code` finds one name's code lazily;
    this computes all of them (a reference for tests).
    """
    matches = list(_MENTION_RE.finditer(data))
    owners = (np.searchsorted(starts, [m.start() + 1 for m in matches], side="right") - 1
              ).tolist()
    rank = _MENTION_RANK
    tokens: list[bytes] = [n.encode() for n in names]
    codes: list[int] = [i << 40 for i in range(len(names))]
    findall = _TOKEN_RE.findall
    for m, owner in zip(matches, owners, strict=True):
        found = findall(m.group(2))
        base = (owner << 40) | (rank[m.group(1)] << 32) | (m.start() - int(starts[owner]))
        tokens.extend(found)
        codes.extend(range(base, base + len(found)))
    order = np.argsort(np.array(codes, dtype=np.int64), kind="stable")[::-1].tolist()
    return dict(zip([tokens[i] for i in order], [codes[i] for i in order], strict=True))


def load_packages_file(path: Path, *, cache_dir: Path | None = None, priority: int = 500,
                       use_cache: bool = True) -> LoadedPackages:
    """Load one Packages file (plain, .gz, .xz, .bz2, .lz4, .zst), via the on-disk cache."""
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    cache_file = (cache_dir or default_cache_dir()) / f"{digest}.v{_CACHE_FORMAT}.pickle"
    if use_cache and cache_file.is_file():
        try:
            with cache_file.open("rb") as fh:
                loaded = pickle.load(fh)
            if isinstance(loaded, LoadedPackages) and loaded.sha256 == digest:
                loaded.source = str(path)
                loaded.priority = priority
                return loaded
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            pass  # a corrupt cache entry is rebuilt below
    loaded = parse_packages_data(decompress_index(str(path), raw), str(path), digest)
    loaded.priority = priority
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            pickle.dump(loaded, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, cache_file)
    return loaded


def release_priority(release_text: str) -> int:
    """apt's default pin priority of an archive from its (In)Release fields (python-debian)."""
    fields = Release(release_text)
    if str(fields.get("NotAutomatic", "")).lower() == "yes":
        return 100 if str(fields.get("ButAutomaticUpgrades", "")).lower() == "yes" else 1
    return 500


def _parse_relations(text: str, field: str, source: str, line: int) -> list[list[Relation]]:
    groups: list[list[Relation]] = []
    for group in PkgRelation.parse_relations(text):
        alts: list[Relation] = []
        for alt in group:
            name = str(alt["name"])
            if not _NAME_RE.fullmatch(name):
                raise MalformedIndexError(source, line, f"malformed {field} relation {text.strip()[:80]!r}")
            ver = alt.get("version")
            op, version = (ver[0], ver[1]) if ver else (None, None)
            if version is not None and not is_valid_version(version):
                raise MalformedIndexError(source, line, f"invalid version {version!r} in {field}")
            alts.append(Relation(name, alt.get("archqual"), op, version))
        groups.append(alts)
    return groups


def parse_stanza(loaded: LoadedPackages, file_no: int, i: int) -> PackageVersion:
    """The full record of stanza ``i`` of a loaded file."""
    text = loaded.stanza_text(i)
    offset = int(loaded.starts[i])
    fields: dict[str, tuple[int, str]] = {}
    current = ""
    for n, line in enumerate(text.split("\n")):
        if not line:
            continue
        if line[0] in " \t":
            ln, val = fields[current]
            fields[current] = (ln, val + "\n" + line)
            continue
        key, _, value = line.partition(":")
        current = key
        fields[key] = (n, value.strip())

    def line_no(field: str) -> int:
        return loaded.line_of(offset) + fields[field][0]

    def rel(field: str) -> list[list[Relation]]:
        if field not in fields:
            return []
        value = fields[field][1]
        try:
            return _parse_relations(value, field, loaded.source, 0)
        except MalformedIndexError as exc:
            raise MalformedIndexError(loaded.source, line_no(field), exc.message) from None

    def get(field: str, default: str = "") -> str:
        return fields[field][1] if field in fields else default

    size_text = get("Size", "0")
    if not size_text.isdigit():
        raise MalformedIndexError(loaded.source, line_no("Size"), f"invalid Size {size_text!r}")
    return PackageVersion(
        name=loaded.names[i], version=loaded.versions[i], arch=loaded.arches[i],
        multi_arch=get("Multi-Arch", "no").lower(),
        essential=get("Essential").lower() == "yes",
        important=get("Important").lower() == "yes" or get("Protected").lower() == "yes",
        priority=get("Priority", "optional").lower(),
        pre_depends=tuple(tuple(g) for g in rel("Pre-Depends")),
        depends=tuple(tuple(g) for g in rel("Depends")),
        recommends=tuple(tuple(g) for g in rel("Recommends")),
        suggests=tuple(tuple(g) for g in rel("Suggests")),
        conflicts=tuple(a for g in rel("Conflicts") for a in g),
        breaks=tuple(a for g in rel("Breaks") for a in g),
        provides=tuple(a for g in rel("Provides") for a in g),
        filename=get("Filename"), size=int(size_text), sha256=get("SHA256"),
        source=loaded.source, offset=offset, file_no=file_no, stanza_no=i)


class PackageIndex:
    """Several loaded Packages files seen as one archive with apt's candidate policy."""

    def __init__(self, files: Sequence[LoadedPackages], native_arch: str = "amd64",
                 foreign_arches: Sequence[str] = ()) -> None:
        self.files = list(files)
        self.native_arch = native_arch
        self.arches = (native_arch, *foreign_arches)
        self._by_name: dict[str, list[tuple[int, int]]] = {}
        self._provides: dict[str, list[tuple[int, int]]] = {}
        for f_no, f in enumerate(self.files):
            by_name = self._by_name
            for i, name in enumerate(f.names):
                entry = by_name.get(name)
                if entry is None:
                    by_name[name] = [(f_no, i)]
                else:
                    entry.append((f_no, i))
            for virtual, owners in f.provides.items():
                self._provides.setdefault(virtual, []).extend((f_no, i) for i in owners)
        self._parsed: dict[tuple[int, int], PackageVersion] = {}
        self._candidates: dict[tuple[str, str], PackageVersion | None] = {}
        self._mention: dict[str, tuple[int, int]] = {}

    def record(self, key: tuple[int, int]) -> PackageVersion:
        rec = self._parsed.get(key)
        if rec is None:
            rec = parse_stanza(self.files[key[0]], key[0], key[1])
            self._parsed[key] = rec
        return rec

    def pkg_arch(self, file_no: int, i: int) -> str:
        arch = self.files[file_no].arches[i]
        return self.native_arch if arch == "all" else arch

    def has_name(self, name: str) -> bool:
        return name in self._by_name

    def names(self) -> Iterator[str]:
        return iter(self._by_name)

    def versions(self, name: str, arch: str | None = None) -> list[PackageVersion]:
        """All versions of a real package (of ``arch``, arch ``all`` counting as native)."""
        keys = self._by_name.get(name, [])
        return [self.record(k) for k in keys
                if self.pkg_arch(*k) in self.arches and (arch is None or self.pkg_arch(*k) == arch)]

    def candidate(self, name: str, arch: str) -> PackageVersion | None:
        """apt's candidate: highest pin priority, then highest version (first file wins ties)."""
        ck = (name, arch)
        if ck in self._candidates:
            return self._candidates[ck]
        best: tuple[int, int] | None = None
        for f_no, i in self._by_name.get(name, []):
            if self.pkg_arch(f_no, i) != arch:
                continue
            if best is None:
                best = (f_no, i)
                continue
            bp, p = self.files[best[0]].priority, self.files[f_no].priority
            if p > bp or (p == bp and compare_versions(self.files[f_no].versions[i],
                                                       self.files[best[0]].versions[best[1]]) > 0):
                best = (f_no, i)
        cand = None if best is None else self.record(best)
        self._candidates[ck] = cand
        return cand

    def providers(self, virtual: str) -> list[PackageVersion]:
        """Every version (any file) whose Provides names ``virtual``."""
        return [self.record(k) for k in self._provides.get(virtual, [])
                if self.pkg_arch(*k) in self.arches]

    def is_virtual_only(self, name: str) -> bool:
        return name not in self._by_name and name in self._provides

    def essential_and_required(self) -> list[str]:
        """Names of the Essential: yes and Priority: required packages (the base set)."""
        out: dict[str, None] = {}
        for f in self.files:
            for i in sorted({*f.essential, *f.required}):
                if f.arches[i] in ("all", self.native_arch):
                    out.setdefault(f.names[i], None)
        return list(out)

    def mention_rank(self, name: str) -> tuple[int, int]:
        """Where apt's cache generator first meets ``name`` (its package-ID order)."""
        rank = self._mention.get(name)
        if rank is None:
            rank = (len(self.files), 0)
            for f_no, f in enumerate(self.files):
                code = f.mention_code(name)
                if code is not None:
                    rank = (f_no, code)
                    break
            self._mention[name] = rank
        return rank


def load_index(specs: Sequence[IndexSpec | Path | str], *, native_arch: str = "amd64",
               foreign_arches: Sequence[str] = (), cache_dir: Path | None = None,
               use_cache: bool = True) -> PackageIndex:
    """Load and combine several Packages files (in apt's sources.list order)."""
    files: list[LoadedPackages] = []
    for spec in specs:
        s = spec if isinstance(spec, IndexSpec) else IndexSpec(Path(spec))
        files.append(load_packages_file(s.path, cache_dir=cache_dir, priority=s.priority,
                                        use_cache=use_cache))
    return PackageIndex(files, native_arch, foreign_arches)
