"""Debian ``Packages`` indexes as apt sees them, through a memory-mapped package cache.

:func:`load_index` combines several Packages files (suite, -updates, -security, in
sources.list order, each with its pin priority) into one :class:`PackageIndex`: apt's
package cache, built once by :mod:`distro.debcache_build` and kept as a binary file under
the cache directory (:mod:`distro.debcache`), keyed by the files' paths, sizes,
modification times and priorities. Later loads map that file and parse nothing; records a
caller looks at become :class:`PackageVersion` objects on demand. A package's candidate is
apt's: the version with the highest pin priority, the newest among equals.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from distro.debcache import DebCache, cache_key, serialize

__all__ = [
    "DEFAULT_CACHE_DIR",
    "IndexSpec",
    "OrGroup",
    "PackageIndex",
    "PackageVersion",
    "Relation",
    "default_cache_dir",
    "load_index",
    "release_priority",
]

DEFAULT_CACHE_DIR = Path("~/.cache/edgedepot/deb-index")
_PRIORITY_NAMES = ("", "required", "important", "standard", "optional", "extra")
_MA_NAMES = {0: "no", 2: "foreign", 4: "same", 8: "allowed"}
_OPS = {1: "<=", 2: ">=", 3: "<<", 4: ">>", 5: "=", 6: "!="}


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
    """One version of a package, as the cache holds it (``id`` is apt's version ID)."""

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
    line: int
    id: int


@dataclass(frozen=True)
class IndexSpec:
    """A Packages file to load and its pin priority (apt's default is 500)."""

    path: Path
    priority: int = 500


def release_priority(release_text: str) -> int:
    """apt's default pin priority of an archive from its (In)Release fields."""
    fields: dict[str, str] = {}
    for line in release_text.splitlines():
        if line.startswith(("-----BEGIN PGP SIGNATURE", " ")):
            if line.startswith("-----BEGIN PGP SIGNATURE"):
                break
            continue
        key, sep, value = line.partition(":")
        if sep and key and key not in fields:
            fields[key.strip().lower()] = value.strip()
    if fields.get("notautomatic", "").lower() == "yes":
        return 100 if fields.get("butautomaticupgrades", "").lower() == "yes" else 1
    return 500


class PackageIndex:
    """apt's view of several Packages files: its package cache and candidate policy."""

    def __init__(self, cache: DebCache) -> None:
        self.cache = cache
        self.native_arch = cache.native_arch
        self.arches = cache.arches
        self._records: dict[int, PackageVersion] = {}

    # ------------------------------------------------------------------ records

    def version(self, vid: int) -> PackageVersion:
        """The record of apt version ``vid``."""
        rec = self._records.get(vid)
        if rec is None:
            rec = self._records[vid] = self._make(vid)
        return rec

    def _relation(self, d: int) -> Relation:
        c = self.cache
        target = c.d_target[d]
        name = c.pkg_name(target)
        arch = c.pkg_arch(target)
        qual: str | None = None
        if arch == "any":
            name, _, qual = name.rpartition(":") if ":" in name else (name, "", None)
            qual = qual or None
        op = _OPS.get(c.d_op[d] & 0x0F)
        ver = c.string(c.d_ver[d]) if c.d_ver[d] else None
        return Relation(name, qual, op if ver else None, ver)

    def _make(self, vid: int) -> PackageVersion:
        c = self.cache
        pid = c.v_pkg[vid]
        groups: dict[int, list[OrGroup]] = {t: [] for t in range(1, 10)}
        start = c.v_dstart[vid]
        current: list[Relation] = []
        seen_neg: set[tuple[int, Relation]] = set()
        for d in range(start, start + c.v_dcount[vid]):
            op = c.d_op[d]
            if op & 0x20:  # Multi-Arch implicit dependencies are apt's, not the index's
                continue
            rel = self._relation(d)
            dtype = c.d_type[d]
            if dtype in (5, 6, 8) and not op & 0x10:
                if (dtype, rel) in seen_neg:  # one per architecture of the target's group
                    continue
                seen_neg.add((dtype, rel))
            current.append(rel)
            if not op & 0x10:
                groups[dtype].append(tuple(current))
                current = []
        provides: list[Relation] = []
        for r in reversed(c.ver_provides(vid)):
            if c.r_flags[r] & 0x20:
                continue
            target = c.r_pkg[r]
            pver = c.string(c.r_pver[r]) if c.r_pver[r] else None
            provides.append(Relation(c.pkg_name(target), None, "=" if pver else None, pver))
        ma = c.v_ma[vid] & ~1
        flags = c.p_flags[pid]
        file_no = c.v_file[vid]
        return PackageVersion(
            name=c.pkg_name(pid), version=c.string(c.v_str[vid]),
            arch=c.string(c.v_arch[vid]), multi_arch=_MA_NAMES.get(ma, "no"),
            essential=bool(flags & 8), important=bool(flags & 16),
            priority=_PRIORITY_NAMES[c.v_prio[vid]] if c.v_prio[vid] <= 5 else "extra",
            pre_depends=tuple(groups[2]), depends=tuple(groups[1]),
            recommends=tuple(groups[4]), suggests=tuple(groups[3]),
            conflicts=tuple(g[0] for g in groups[5]), breaks=tuple(g[0] for g in groups[8]),
            provides=tuple(provides), filename=c.string(c.v_filename[vid]),
            size=c.v_size[vid], sha256=c.string(c.v_sha256[vid]),
            source=c.sources[file_no] if file_no < len(c.sources) else "",
            line=c.v_line[vid], id=vid)

    # ------------------------------------------------------------------ lookups

    def _policy(self, pid: int) -> int:
        c = self.cache
        best, best_prio = -1, -1
        for v in c.versions(pid):
            prio = c.v_pin[v]
            if prio == 0 or prio <= best_prio:
                continue
            best, best_prio = v, prio
        return best

    def name_id(self, name: str) -> int:
        """The string ID of a package name (-1 if no package has it)."""
        found = self.cache.find(name)
        return self.cache.p_name[found[0]] if found else -1

    def has_name(self, name: str) -> bool:
        """A real package (one with versions) of that name exists."""
        return any(self.cache.p_vcount[p] for p in self.cache.find(name))

    def names(self) -> Iterator[str]:
        return iter(self.cache.names())

    def versions(self, name: str, arch: str | None = None) -> list[PackageVersion]:
        """All versions of a real package (of ``arch``), apt's order (newest first)."""
        out: list[PackageVersion] = []
        for pid in self.cache.find(name, arch):
            out += [self.version(v) for v in self.cache.versions(pid)]
        return out

    def candidate(self, name: str, arch: str) -> PackageVersion | None:
        """apt's candidate: highest pin priority, then highest version."""
        for pid in self.cache.find(name, arch):
            v = self._policy(pid)
            if v >= 0:
                return self.version(v)
        return None

    def providers(self, virtual: str) -> list[PackageVersion]:
        """Every version whose Provides names ``virtual`` (apt's provides list order)."""
        c = self.cache
        out: list[PackageVersion] = []
        for pid in c.find(virtual):
            for r in c.provides(pid):
                if not c.r_flags[r] & 0x20:
                    out.append(self.version(c.r_ver[r]))
        return out

    def is_virtual_only(self, name: str) -> bool:
        return not self.has_name(name) and bool(self.providers(name))

    def essential_and_required(self) -> list[str]:
        """Names of the Essential: yes and Priority: required packages (the base set)."""
        c = self.cache
        out: dict[str, None] = {}
        for v in range(c.n_versions):
            pid = c.v_pkg[v]
            if c.pkg_arch(pid) != self.native_arch or self._policy(pid) != v:
                continue
            if c.p_flags[pid] & 8 or c.v_prio[v] == 1:
                out.setdefault(c.pkg_name(pid), None)
        return list(out)


def _read_packages(path: Path) -> bytes:
    from distro.debian_repo import decompress_index

    return decompress_index(str(path), path.read_bytes())


def load_index(specs: Sequence[IndexSpec | Path | str], *, native_arch: str = "amd64",
               foreign_arches: Sequence[str] = (), cache_dir: Path | None = None,
               use_cache: bool = True) -> PackageIndex:
    """Load and combine several Packages files (in apt's sources.list order).

    The package cache is built on the first load of a set of files and mapped afterwards;
    a corrupt or unreadable cache file is rebuilt.
    """
    items = [s if isinstance(s, IndexSpec) else IndexSpec(Path(s)) for s in specs]
    arches = (native_arch, *foreign_arches)
    cache_file: Path | None = None
    if use_cache:
        directory = Path(cache_dir) if cache_dir else default_cache_dir()
        key = cache_key([(Path(s.path), s.priority) for s in items], arches)
        cache_file = directory / f"{key}.debcache"
        if cache_file.is_file():
            try:
                return PackageIndex(DebCache.open(cache_file))
            except (OSError, ValueError, IndexError, TypeError):
                pass  # rebuilt below
    from distro.debcache_build import SourceFile, build_cache_data

    files = [SourceFile(str(s.path), _read_packages(Path(s.path)), s.priority) for s in items]
    image = serialize(build_cache_data(files, native_arch, foreign_arches))
    if cache_file is None:
        return PackageIndex(DebCache(image))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(image)
    os.replace(tmp, cache_file)
    return PackageIndex(DebCache.open(cache_file))
