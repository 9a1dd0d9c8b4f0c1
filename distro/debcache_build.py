"""Build the compact package cache (:mod:`distro.debcache`) from Debian ``Packages`` files.

This mirrors apt 2.6's ``pkgCacheGenerator`` closely enough that package IDs, version lists,
dependency lists and provides lists come out exactly as apt builds them, because apt's
decisions depend on those orders (``CompareProviders`` breaks ties by package ID, the
``apt-get install`` driver visits its targets in ID order, the problem resolver sorts
packages by score starting from the hash-table order). In particular:

* files are merged in the given (sources.list) order; stanza by stanza apt creates the
  package, then (for a new version) the targets of its Pre-Depends, Depends, Conflicts,
  Breaks, Recommends, Suggests, Replaces and Enhances, then its Provides, the implicit
  ``name:any`` provides of ``Multi-Arch: allowed`` packages and ``$kernel`` for kernels;
* a version seen again in a later file (same version string and same version hash) gets
  the file added instead of a second version; version lists are sorted newest first;
* ``foo:any`` names a package of its own (group ``foo:any``, architecture ``any``),
  provided by the ``Multi-Arch: allowed`` versions of ``foo``;
* the hash table order (``PkgBegin``) is apt's string hash modulo 196613, packages of a
  bucket sorted by name length then bytes.

The result is a :class:`CacheData` (plain lists) that :mod:`distro.debcache` writes as one
binary file and maps back read-only.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from distro.errors import MalformedIndexError
from distro.versions import compare_versions, is_valid_version

__all__ = ["CacheData", "SourceFile", "build_cache_data", "hash_order", "apt_hash"]

# apt's constants (pkgcache.h)
DEPENDS, PREDEPENDS, SUGGESTS, RECOMMENDS, CONFLICTS, REPLACES, OBSOLETES, BREAKS, ENHANCES = \
    range(1, 10)
OP_MASK, OR, MA_IMPLICIT, ARCH_SPECIFIC = 0x0F, 0x10, 0x20, 0x40
LESSEQ, GREATEREQ, LESS, GREATER, EQUALS, NOTEQUALS = 1, 2, 3, 4, 5, 6
MA_ALL, MA_FOREIGN, MA_SAME, MA_ALLOWED = 1, 2, 4, 8
FLAG_ESSENTIAL, FLAG_IMPORTANT = 1 << 3, 1 << 4
HASH_TABLE_SIZE = 196613

_DEP_FIELDS = (("pre-depends", PREDEPENDS), ("depends", DEPENDS), ("conflicts", CONFLICTS),
               ("breaks", BREAKS), ("recommends", RECOMMENDS), ("suggests", SUGGESTS),
               ("replaces", REPLACES), ("enhances", ENHANCES))
_HASH_FIELDS = ("installed-size", "depends", "pre-depends", "conflicts", "breaks", "replaces")
_PRIORITIES = {"required": 1, "important": 2, "standard": 3, "optional": 4, "extra": 5}
_OPS = {"<=": LESSEQ, "<<": LESS, "<": LESSEQ, ">=": GREATEREQ, ">>": GREATER, ">": GREATEREQ,
        "=": EQUALS}
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9+.\-]*")
# one relation: name[:arch] [(op version)] followed by , | or the end (apt's ParseDepends)
_REL = re.compile(r"\s*([^\s(),|\[\]<>]+)\s*(?:\(\s*(<<|<=|>=|>>|<|>|=)\s*([^)]*?)\s*\)\s*)?"
                  r"(,|\||$)")
_KERNEL_PREFIXES = ("linux-image-", "kfreebsd-image-", "gnumach-image-")
_KERNEL_UNAME = re.compile(r"[0-9]+\.")


@dataclass(frozen=True)
class SourceFile:
    """One Packages file's decompressed text, where it came from, and its pin priority."""

    source: str
    data: bytes
    priority: int = 500


def _ints() -> array[int]:
    return array("i")


def _longs() -> array[int]:
    return array("q")


@dataclass
class CacheData:
    """apt's cache in plain lists (see :mod:`distro.debcache` for the meaning of each)."""

    native_arch: str
    arches: tuple[str, ...]
    sources: list[str]
    strings: list[str]
    # packages (apt's Package: a name and an architecture), by ID
    p_name: array[int] = field(default_factory=_ints)
    p_arch: array[int] = field(default_factory=_ints)
    p_flags: array[int] = field(default_factory=_ints)
    p_versions: list[list[int]] = field(default_factory=list)
    p_provides: list[list[int]] = field(default_factory=list)  # provide records, newest first
    # versions, by ID
    v_pkg: array[int] = field(default_factory=_ints)
    v_str: array[int] = field(default_factory=_ints)
    v_arch: array[int] = field(default_factory=_ints)
    v_ma: array[int] = field(default_factory=_ints)
    v_prio: array[int] = field(default_factory=_ints)
    v_src: array[int] = field(default_factory=_ints)
    v_srcver: array[int] = field(default_factory=_ints)
    v_pin: array[int] = field(default_factory=_ints)
    v_file: array[int] = field(default_factory=_ints)
    v_line: array[int] = field(default_factory=_ints)
    v_filename: array[int] = field(default_factory=_ints)
    v_size: array[int] = field(default_factory=_longs)
    v_sha256: array[int] = field(default_factory=_ints)
    v_deps: list[list[int]] = field(default_factory=list)
    v_provides: list[list[int]] = field(default_factory=list)  # provide records, newest first
    # dependencies, by ID
    d_type: array[int] = field(default_factory=_ints)
    d_op: array[int] = field(default_factory=_ints)
    d_target: array[int] = field(default_factory=_ints)
    d_ver: array[int] = field(default_factory=_ints)
    d_owner: array[int] = field(default_factory=_ints)
    # provides records
    r_ver: array[int] = field(default_factory=_ints)
    r_pkg: array[int] = field(default_factory=_ints)
    r_pver: array[int] = field(default_factory=_ints)
    r_flags: array[int] = field(default_factory=_ints)


def apt_hash(name: str) -> int:
    """pkgCache::sHash: djb2 over the lower-cased name, modulo the hash table size."""
    h = 5381
    for ch in name.encode():
        if 65 <= ch <= 90:
            ch += 32
        h = (h * 33 + ch) & 0xFFFFFFFF
    return h % HASH_TABLE_SIZE


def hash_order(p_name: Sequence[int], strings: Sequence[str]) -> list[int]:
    """Package IDs in apt's ``PkgBegin`` order: by hash bucket, then by name (length first,
    then bytes), packages of one name in creation order."""
    first: dict[int, int] = {}
    for pid, sid in enumerate(p_name):
        first.setdefault(sid, pid)
    keyed = []
    for pid, sid in enumerate(p_name):
        name = strings[sid]
        raw = name.encode()
        keyed.append((apt_hash(name), len(raw), raw, first[sid], pid))
    keyed.sort()
    return [k[4] for k in keyed]


_HASH_STRIP = re.compile(rb"0:|[ \t\n\v\f\r=]")


def _version_hash(fields: dict[str, str]) -> int:
    """debListParser::VersionHash (low 32 bits): djb2 over the Installed-Size, Depends,
    Pre-Depends, Conflicts, Breaks and Replaces texts without spaces, '=' and "0:",
    lower-cased."""
    h = 5381
    for key in _HASH_FIELDS:
        value = fields.get(key)
        if value is None:
            continue
        for ch in _HASH_STRIP.sub(b"", value.encode()).lower():
            h = (h * 33 + ch) & 0xFFFFFFFF
    return h


def _kernel_uname(name: str) -> bool:
    for prefix in _KERNEL_PREFIXES:
        if name.startswith(prefix) and not name.endswith(("-dbgsym", "-dbg")):
            rest = name[len(prefix):]
            if len(rest) >= 2 and _KERNEL_UNAME.match(rest):
                return True
    return False


def parse_relations(text: str) -> list[tuple[str, int, str]] | None:
    """apt's ParseDepends over a field: (name, op | Or flag, version); None if malformed."""
    out: list[tuple[str, int, str]] = []
    pos, n = 0, len(text)
    while True:
        m = _REL.match(text, pos)
        if m is None:
            return None
        name, op_text, version, sep = m.group(1), m.group(2), m.group(3), m.group(4)
        op = 0
        if op_text is not None:
            if not version:
                return None
            op = _OPS[op_text]
        else:
            version = ""
        if sep == "|":
            op |= OR
        out.append((name, op, version))
        pos = m.end()
        if sep == "":
            if text[pos:].strip():
                return None
            return out
        if pos >= n or not text[pos:].strip():
            return out


class _Builder:
    def __init__(self, native: str, foreign: Sequence[str]) -> None:
        self.native = native
        self.arches = (native, *foreign)
        self.strings: dict[str, int] = {"": 0}
        self.d = CacheData(native, self.arches, [], [""])
        self.groups: dict[str, list[int]] = {}
        self.revdeps: list[list[int]] = []
        self.v_where: list[tuple[int, int]] = []  # (file, byte offset) of the stanza
        self._hashes: dict[int, int] = {}
        self._bodies: list[bytes] = []
        self._valid: dict[str, bool] = {}
        self.v_size_raw: list[int] = []
        self.p_key: dict[tuple[str, str], int] = {}

    # -------------------------------------------------------------- strings, groups, packages

    def s(self, text: str) -> int:
        sid = self.strings.get(text)
        if sid is None:
            sid = self.strings[text] = len(self.d.strings)
            self.d.strings.append(text)
        return sid

    def arch_of(self, pid: int) -> str:
        return self.d.strings[self.d.p_arch[pid]]

    def name_of(self, pid: int) -> str:
        return self.d.strings[self.d.p_name[pid]]

    def find_pkg(self, name: str, arch: str) -> int | None:
        """GrpIterator::FindPkg."""
        if arch == "any":
            pkgs = self.groups.get(name)
            return pkgs[0] if pkgs else None
        if arch == "native" or arch == "all":
            arch = self.native
        return self.p_key.get((name, arch))

    def check_arch(self, arch: str) -> bool:
        return arch == "all" or arch in self.arches

    def ver_arch(self, vid: int) -> str:
        """VerIterator::Arch(): ``all`` for Architecture: all versions."""
        if self.d.v_ma[vid] & MA_ALL:
            return "all"
        return self.arch_of(self.d.v_pkg[vid])

    def new_package(self, name: str, arch: str) -> int:
        d = self.d
        pkgs = self.groups.setdefault(name, [])
        found = self.find_pkg(name, arch)
        if found is not None:
            return found
        pid = len(d.p_name)
        d.p_name.append(self.s(name))
        d.p_arch.append(self.s(self.native if arch == "all" else arch))
        self.p_key[(name, self.native if arch == "all" else arch)] = pid
        d.p_flags.append(0)
        d.p_versions.append([])
        d.p_provides.append([])
        self.revdeps.append([])
        if pkgs:
            self._join_group(pid, pkgs)
        pkgs.append(pid)
        if arch == "any":
            colon = name.rfind(":")  # npos + 1 == 0: without a colon both are the name
            arch_a = name[colon + 1:]
            if arch_a != "any":
                name_a = name[:colon] if colon >= 0 else name
                pkg_a = self.find_pkg(name_a, arch_a)
                if pkg_a is None:
                    pkg_a = self.new_package(name_a, arch_a)
                for rid in list(d.p_provides[pkg_a]):
                    if d.r_flags[rid] & MA_IMPLICIT:
                        continue
                    v = d.r_ver[rid]
                    if arch_a != self.arch_of(d.v_pkg[v]):
                        continue
                    self.add_provides(v, pid, d.v_str[v], MA_IMPLICIT | ARCH_SPECIFIC)
                for v in list(d.p_versions[pkg_a]):
                    self.add_provides(v, pid, d.v_str[v], MA_IMPLICIT | ARCH_SPECIFIC)
        return pid

    def _preferred(self, pkgs: list[int]) -> int | None:
        """GrpIterator::FindPreferredPkg(false): native, then configured arches."""
        for arch in self.arches:
            for pid in pkgs:
                if self.arch_of(pid) == arch:
                    return pid
        return None

    def _join_group(self, pid: int, pkgs: list[int]) -> None:
        """NewPackage for a group that has packages already: provides and negative deps."""
        d = self.d
        m = self._preferred(pkgs)
        if m is not None:
            for rid in list(reversed(d.p_provides[m])):
                if d.r_flags[rid] & ARCH_SPECIFIC:
                    continue
                v = d.r_ver[rid]
                if d.v_ma[v] & MA_FOREIGN and not d.r_flags[rid] & MA_IMPLICIT:
                    if not self.check_arch(self.arch_of(d.v_pkg[v])):
                        continue
                    self.add_provides(v, pid, d.r_pver[rid], d.r_flags[rid])
        for p in list(pkgs):
            if not self.check_arch(self.arch_of(p)):
                continue
            for v in list(d.p_versions[p]):
                if d.v_ma[v] & MA_FOREIGN:
                    self.add_provides(v, pid, d.v_str[v], MA_IMPLICIT)
        if m is not None:
            for dep in list(reversed(self.revdeps[m])):
                if d.d_op[dep] & (ARCH_SPECIFIC | MA_IMPLICIT):
                    continue
                if d.d_type[dep] not in (BREAKS, CONFLICTS, REPLACES):
                    continue
                self.add_depends(pid, d.d_owner[dep], d.d_ver[dep], d.d_op[dep], d.d_type[dep])

    # -------------------------------------------------------------- depends and provides

    def add_depends(self, pid: int, vid: int, ver_sid: int, op: int, dtype: int) -> None:
        d = self.d
        dep = len(d.d_type)
        d.d_type.append(dtype)
        d.d_op.append(op)
        d.d_target.append(pid)
        d.d_ver.append(ver_sid)
        d.d_owner.append(vid)
        d.v_deps[vid].append(dep)
        self.revdeps[pid].append(dep)

    def new_depends(self, vid: int, name: str, arch: str, version: str, op: int, dtype: int
                    ) -> None:
        """pkgCacheListParser::NewDepends."""
        pkgs = self.groups.setdefault(name, [])
        ver_sid = self.s(version) if version else 0
        negative = dtype in (BREAKS, CONFLICTS, REPLACES)
        if not negative or op & ARCH_SPECIFIC or not pkgs:
            pid = self.find_pkg(name, arch)
            if pid is None:
                pid = self.new_package(name, arch)
            self.add_depends(pid, vid, ver_sid, op, dtype)
        else:
            for pid in list(pkgs):
                self.add_depends(pid, vid, ver_sid, op, dtype)

    def add_provides(self, vid: int, pid: int, pver_sid: int, flags: int) -> None:
        d = self.d
        rid = len(d.r_ver)
        d.r_ver.append(vid)
        d.r_pkg.append(pid)
        d.r_pver.append(pver_sid)
        d.r_flags.append(flags)
        d.v_provides[vid].append(rid)
        d.p_provides[pid].append(rid)

    def new_provides(self, vid: int, name: str, arch: str, version: str, flags: int) -> None:
        """pkgCacheListParser::NewProvides (self-provides are dropped)."""
        d = self.d
        owner = d.v_pkg[vid]
        if (self.name_of(owner) == name
                and (arch == self.arch_of(owner)
                     or (arch == "all" and self.native == self.arch_of(owner)))
                and (not version or version == d.strings[d.v_str[vid]])):
            return
        pid = self.new_package(name, arch)
        self.add_provides(vid, pid, self.s(version) if version else 0, flags)

    def new_provides_all_arch(self, vid: int, name: str, version: str, flags: int) -> None:
        pkgs = self.groups.get(name)
        if not pkgs:
            self.new_provides(vid, name, self.native, version, flags)
            return
        d = self.d
        owner = d.v_pkg[vid]
        for pid in list(pkgs):
            if flags & MA_IMPLICIT and pid == owner:
                continue
            if not flags & ARCH_SPECIFIC and not self.check_arch(self.arch_of(owner)):
                continue
            self.add_provides(vid, pid, self.s(version) if version else 0, flags)

    # -------------------------------------------------------------- one stanza

    def merge(self, fields: dict[str, str], file_no: int, source: str, line: int,
              chunk: str, pos: dict[str, int]) -> None:
        d = self.d
        name = fields["package"]
        if "/" not in name:
            name = name.lower()
        arch = fields.get("architecture", "")
        version = fields["version"]
        pid = self.new_package(name, arch)
        vers = d.p_versions[pid]
        size_text = fields.get("size", "0")
        size = int(size_text) if size_text.isdigit() else 0
        ma = self._multi_arch(fields)
        insert_at = len(vers)
        found: int | None = None
        for i, v in enumerate(vers):
            res = compare_versions(version, d.strings[d.v_str[v]])
            if res > 0:
                insert_at = i
                break
            if res == 0 and self.version_hash(v) == _version_hash(fields) and (
                    size == 0 or self.v_size_raw[v] == 0 or size == self.v_size_raw[v]) \
                    and ma == d.v_ma[v]:
                found = v
                break
        if found is not None:
            self._use_package(pid, fields)
            if d.v_pin[found] < self._priority:
                d.v_pin[found] = self._priority
            return
        vid = len(d.v_pkg)
        d.v_pkg.append(pid)
        d.v_str.append(self.s(version))
        d.v_arch.append(self.s(arch))
        d.v_ma.append(ma)
        prio_text = fields.get("priority")
        d.v_prio.append(0 if prio_text is None else _PRIORITIES.get(prio_text.lower(), 5))
        src_name, src_ver = name, version
        src = fields.get("source")
        if src:
            parts = src.split(" ", 1)
            src_name = parts[0]
            if len(parts) > 1 and "(" in parts[1] and ")" in parts[1]:
                src_ver = parts[1][parts[1].index("(") + 1:parts[1].index(")")]
        d.v_src.append(self.s(src_name))
        d.v_srcver.append(self.s(src_ver))
        d.v_pin.append(self._priority)
        d.v_file.append(file_no)
        d.v_line.append(line)
        d.v_filename.append(self.s(fields.get("filename", "")))
        d.v_size.append(size)
        d.v_sha256.append(self.s(fields.get("sha256", "")))
        d.v_deps.append([])
        d.v_provides.append([])
        self.v_where.append((file_no, self._offset))
        self.v_size_raw.append(size)
        vers.insert(insert_at, vid)
        pkg_arch = self.ver_arch(vid)
        barbarian = not self.check_arch(pkg_arch)
        def at(key: str) -> int:
            return line + chunk.count("\n", 0, pos.get(key, 0))

        valid = self._valid
        for key, dtype in _DEP_FIELDS:
            text = fields.get(key)
            if not text:
                continue
            rels = parse_relations(text)
            if rels is None:
                raise MalformedIndexError(source, at(key), f"malformed {key.title()} relation "
                                                           f"{text.strip()[:80]!r}")
            for rname, op, rver in rels:
                if rver:
                    ok = valid.get(rver)
                    if ok is None:
                        ok = valid[rver] = is_valid_version(rver)
                    if not ok:
                        raise MalformedIndexError(source, at(key), f"invalid version {rver!r} "
                                                                   f"in {key.title()}")
                self._one_depends(vid, rname, rver, op, dtype, pkg_arch, barbarian)
        if "provides" in fields:
            self._parse_provides(vid, fields["provides"], source, at("provides"))
        else:
            self._parse_provides(vid, None, source, line)
        if _kernel_uname(name):
            self.new_provides(vid, "$kernel", "any", version, MA_IMPLICIT)
        self._use_package(pid, fields)
        if len(vers) == 1:
            for other in self.groups[name]:
                if other == pid:
                    continue
                for v in list(d.p_versions[other]):
                    self._implicit_one(v, pid)
        self._implicit_group(name, pid, vid)

    _priority = 500

    def version_hash(self, vid: int) -> int:
        """The hash of an earlier version, from its stanza (only needed when a stanza with
        the same version string of the same package turns up)."""
        h = self._hashes.get(vid)
        if h is None:
            file_no, start = self.v_where[vid]
            body = self._bodies[file_no]
            end = body.find(b"\n\n", start)
            chunk = body[start:end if end >= 0 else len(body)].decode("utf-8")
            fields = {m.group(1).lower(): m.group(2).strip()
                      for m in _WANTED_FIELD.finditer(chunk)}
            h = self._hashes[vid] = _version_hash(fields)
        return h

    _offset = 0

    def _multi_arch(self, fields: dict[str, str]) -> int:
        text = fields.get("multi-arch", "")
        is_all = fields.get("architecture") == "all"
        ma = {"same": MA_SAME, "foreign": MA_FOREIGN, "allowed": MA_ALLOWED}.get(text, 0)
        if ma == MA_SAME and is_all:
            ma = 0
        return ma | (MA_ALL if is_all else 0)

    def _use_package(self, pid: int, fields: dict[str, str]) -> None:
        d = self.d
        flags = d.p_flags[pid]
        for key, bit in (("essential", FLAG_ESSENTIAL), ("important", FLAG_IMPORTANT),
                         ("protected", FLAG_IMPORTANT)):
            value = fields.get(key)
            if value is None:
                continue
            value = value.lower()
            if value == "yes":
                flags |= bit
            elif value == "no":
                flags &= ~bit
        if self.name_of(pid) == "apt":
            flags |= FLAG_ESSENTIAL | FLAG_IMPORTANT
        d.p_flags[pid] = flags

    def _one_depends(self, vid: int, name: str, version: str, op: int, dtype: int,
                     pkg_arch: str, barbarian: bool) -> None:
        colon = name.rfind(":")
        if colon < 0:
            self.new_depends(vid, name, pkg_arch, version, op, dtype)
        elif name[colon:] == ":any":
            if barbarian:
                self.new_depends(vid, name, "any", version, op | OR, dtype)
                self.new_depends(vid, name[:colon], pkg_arch, version, op, dtype)
            else:
                self.new_depends(vid, name, "any", version, op, dtype)
        elif name[colon + 1:] == "native":
            self.new_depends(vid, name[:colon] + ":" + self.native, "any", version,
                             op | ARCH_SPECIFIC, dtype)
        else:
            self.new_depends(vid, name, "any", version, op | ARCH_SPECIFIC, dtype)

    def _parse_provides(self, vid: int, text: str | None, source: str, line: int) -> None:
        d = self.d
        owner = d.v_pkg[vid]
        spz_name = f"{self.name_of(owner)}:{self.arch_of(owner)}"
        has_already = bool(d.v_provides[vid]) and any(
            d.r_flags[r] & MA_IMPLICIT and d.r_flags[r] & ARCH_SPECIFIC
            and spz_name == self._full_name(d.r_pkg[r]) for r in d.v_provides[vid])
        arch = self.ver_arch(vid)
        barbarian = not self.check_arch(arch)
        ma = d.v_ma[vid]
        verstr = d.strings[d.v_str[vid]]
        if text:
            rels = parse_relations(text)
            if rels is None or any(op & OR for _n, op, _v in rels):
                raise MalformedIndexError(source, line, f"malformed Provides {text.strip()[:80]!r}")
            for pname, op, pver in rels:
                if not _NAME_RE.fullmatch(pname.split(":", 1)[0]):
                    raise MalformedIndexError(source, line,
                                              f"malformed Provides entry {pname!r}")
                archfound = pname.rfind(":")
                if op & OP_MASK not in (0, EQUALS):
                    continue  # apt ignores non-equal Provides (with a warning)
                if archfound >= 0:
                    spz_arch = pname[archfound + 1:]
                    if spz_arch != "any":
                        self.new_provides(vid, pname[:archfound], spz_arch, pver,
                                          MA_IMPLICIT | ARCH_SPECIFIC)
                    self.new_provides(vid, pname, "any", pver, ARCH_SPECIFIC)
                elif ma & MA_FOREIGN:
                    if not barbarian:
                        self.new_provides_all_arch(vid, pname, pver, 0)
                    else:
                        self.new_provides(vid, pname, arch, pver, 0)
                else:
                    if ma & MA_ALLOWED and not barbarian:
                        self.new_provides(vid, pname + ":any", "any", pver, MA_IMPLICIT)
                    self.new_provides(vid, pname, arch, pver, 0)
                if archfound < 0:
                    spz = f"{pname}:{self.arch_of(owner)}"
                    if self.find_pkg(spz, "any") is not None:
                        self.new_provides(vid, spz, "any", pver, MA_IMPLICIT | ARCH_SPECIFIC)
        if not barbarian:
            if ma & MA_ALLOWED:
                self.new_provides(vid, self.name_of(owner) + ":any", "any", verstr, MA_IMPLICIT)
            elif ma & MA_FOREIGN:
                self.new_provides_all_arch(vid, self.name_of(owner), verstr, MA_IMPLICIT)
        if not has_already and self.find_pkg(spz_name, "any") is not None:
            self.new_provides(vid, spz_name, "any", verstr, MA_IMPLICIT | ARCH_SPECIFIC)

    def _full_name(self, pid: int) -> str:
        return f"{self.name_of(pid)}:{self.arch_of(pid)}"

    def _implicit_group(self, name: str, pid: int, vid: int) -> None:
        """AddImplicitDepends(Grp, Pkg, Ver): conflicts with the other architectures."""
        d = self.d
        arch = self.arch_of(pid)
        same = d.v_ma[vid] & MA_SAME
        for other in list(self.groups[name]):
            if arch == self.arch_of(other) or not d.p_versions[other]:
                continue
            if same:
                self.add_depends(other, vid, d.v_str[vid], LESS | MA_IMPLICIT, REPLACES)
                self.add_depends(other, vid, d.v_str[vid], NOTEQUALS | MA_IMPLICIT, BREAKS)
            else:
                self.add_depends(other, vid, 0, MA_IMPLICIT, CONFLICTS)

    def _implicit_one(self, vid: int, pid: int) -> None:
        d = self.d
        if d.v_ma[vid] & MA_SAME:
            self.add_depends(pid, vid, d.v_str[vid], LESS | MA_IMPLICIT, REPLACES)
            self.add_depends(pid, vid, d.v_str[vid], NOTEQUALS | MA_IMPLICIT, BREAKS)
        else:
            self.add_depends(pid, vid, 0, MA_IMPLICIT, CONFLICTS)

    # -------------------------------------------------------------- files

    def add_file(self, src: SourceFile, file_no: int) -> None:
        self._priority = src.priority
        self.d.sources.append(src.source)
        body, start, end, lead = _body(src.data, src.source)
        self._bodies.append(body)
        for fields, line, chunk, where, offset in _stanzas(body, start, end, lead, src.source):
            self._offset = offset
            self.merge(fields, file_no, src.source, line, chunk, where)


_WANTED = ("Package", "Version", "Architecture", "Multi-Arch", "Essential", "Important",
           "Protected", "Priority", "Source", "Pre-Depends", "Depends", "Conflicts", "Breaks",
           "Recommends", "Suggests", "Replaces", "Enhances", "Provides", "Filename", "Size",
           "SHA256", "Installed-Size")
_WANTED_FIELD = re.compile(r"^((?i:" + "|".join(re.escape(w) for w in _WANTED)
                           + r")):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)", re.M)
_FIELD_LINE_BYTES = re.compile(rb"\n(?![ \t\n])(?![!-9;-~]+:)")
_FIELD_START = re.compile(rb"[!-9;-~]+:")


def _body(data: bytes, source: str) -> tuple[bytes, int, int, int]:
    """The file's bytes, where its text starts and ends without leading and trailing blank
    lines, and how many lines led (no copies of the file beyond a CRLF fix; each stanza is
    decoded on its own: a decoded file with one non-ASCII character would take 2-4 bytes
    per character)."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise MalformedIndexError(source, data.count(b"\n", 0, nul) + 1,
                                  "binary data (NUL byte)")
    if b"\r\n" in data:
        data = data.replace(b"\r\n", b"\n")
    n = len(data)
    start = 0
    while start < n and data[start] == 10:
        start += 1
    end = n
    while end > start and data[end - 1] == 10:
        end -= 1
    if not data[start:end].strip():
        return data, start, start, start
    bad = _FIELD_LINE_BYTES.search(data, start, end)
    if bad is not None or not _FIELD_START.match(data, start):
        at = start if bad is None else bad.start() + 1
        raise MalformedIndexError(source, data.count(b"\n", start, at) + 1 + start,
                                  "expected 'Field: value' or a continuation line")
    return data, start, end, start


def _stanzas(body: bytes, pos: int, n: int, lead: int, source: str
             ) -> Iterator[tuple[dict[str, str], int, str, dict[str, int], int]]:
    """(fields by lower-cased name, first line, stanza text, field -> offset in the text,
    byte offset of the stanza) per stanza of ``body[pos:n]``; refuses what apt refuses,
    naming the line."""
    line = 1 + lead
    finditer = _WANTED_FIELD.finditer
    while pos < n:
        end = body.find(b"\n\n", pos, n)
        if end < 0:
            end = n
        try:
            chunk = body[pos:end].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedIndexError(source, line + body.count(b"\n", pos, pos + exc.start),
                                      "not valid UTF-8") from None
        fields: dict[str, str] = {}
        where: dict[str, int] = {}
        for m in finditer(chunk):
            key = m.group(1).lower()
            if key in fields and key in ("package", "version", "architecture"):
                raise MalformedIndexError(source, line + chunk.count("\n", 0, m.start()),
                                          f"duplicate {m.group(1)} field")
            fields[key] = m.group(2).strip()
            where[key] = m.start()
        for key, title in (("package", "Package"), ("version", "Version"),
                           ("architecture", "Architecture")):
            if key not in fields:
                raise MalformedIndexError(source, line, f"stanza without a {title} field")
        if not _NAME_RE.fullmatch(fields["package"].lower()):
            raise MalformedIndexError(source, line + chunk.count("\n", 0, where["package"]),
                                      f"invalid package name {fields['package']!r}")
        if not is_valid_version(fields["version"]):
            raise MalformedIndexError(source, line + chunk.count("\n", 0, where["version"]),
                                      f"invalid version {fields['version']!r} of "
                                      f"{fields['package']}")
        yield fields, line, chunk, where, pos
        nxt = end
        while nxt < n and body[nxt] == 10:
            nxt += 1
        line += body.count(b"\n", pos, nxt)
        pos = nxt


def build_cache_data(files: Sequence[SourceFile], native_arch: str = "amd64",
                     foreign_arches: Sequence[str] = ()) -> CacheData:
    """apt's package cache over ``files`` (in sources.list order)."""
    b = _Builder(native_arch, foreign_arches)
    for n, src in enumerate(files):
        b.add_file(src, n)
    return b.d
