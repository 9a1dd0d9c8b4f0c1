"""A compact, memory-mapped binary package cache: apt's ``pkgcache.bin`` for the resolver.

:mod:`distro.debcache_build` turns Packages files into apt's cache structures (packages with
apt's IDs, versions, dependencies, provides); this module writes them once as one file of
flat int32 arrays plus a string table, and maps the file back read-only, so a resolver
process pays for nothing it does not touch: no parsing, no unpickling, no NumPy. Its cache
key is the list of input files with their size, modification time and pin priority (apt
checks its cache the same way), the architectures and the format version.

Layout: a header (magic, format, metadata, a table of arrays), then each array 8-byte
aligned. Per package (``p_*``, by apt package ID): name and architecture (string IDs),
flags (Essential 8, Important 16), its versions (``vlist`` slice, apt's order: newest
first) and the provides naming it (``prlist`` slice, apt's order: last created first).
Per version (``v_*``, by apt version ID): package, version string, ``Architecture`` text,
Multi-Arch bits (All 1, Foreign 2, Same 4, Allowed 8), apt priority (0 none, 1 required ..
5 extra), source name and version, pin priority (highest of its files), first file, line,
filename, size, sha256, its dependencies (``d_*`` slice, apt's order) and its provides
(``vrlist`` slice). Per dependency: apt type (1 Depends 2 Pre-Depends 3 Suggests 4
Recommends 5 Conflicts 6 Replaces 7 Obsoletes 8 Breaks 9 Enhances), apt compare operator
with flags (Or 0x10, MultiArchImplicit 0x20, ArchSpecific 0x40), target package and
version string. Per provides record: the providing version, the provided package, the
provided version and flags. ``hashorder`` is apt's ``PkgBegin`` order (``hashpos`` its
inverse), ``namesorted`` the package IDs sorted by name for lookups, ``flagged`` the
Essential or Important packages.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distro.debcache_build import CacheData

__all__ = ["FORMAT", "DebCache", "cache_key", "serialize"]

FORMAT = 2
_MAGIC = b"EDDEBC02"
_INT_ARRAYS = (
    "p_name", "p_arch", "p_flags", "p_vstart", "p_vcount", "p_rstart", "p_rcount", "vlist",
    "prlist", "v_pkg", "v_str", "v_arch", "v_ma", "v_prio", "v_src", "v_srcver", "v_pin",
    "v_file", "v_line", "v_filename", "v_sha256", "v_dstart", "v_dcount", "v_rstart",
    "v_rcount", "vrlist", "d_type", "d_op", "d_target", "d_ver", "d_owner", "r_ver", "r_pkg",
    "r_pver", "r_flags", "hashorder", "hashpos", "namesorted", "flagged", "str_off")
_LONG_ARRAYS = ("v_size",)
_SEP = "\x1f"


def cache_key(paths: Sequence[tuple[Path, int]], arches: Sequence[str]) -> str:
    """A name for the cache of these (path, pin priority) inputs: stat data, arches, format."""
    import hashlib

    h = hashlib.sha256(f"{FORMAT}|{','.join(arches)}".encode())
    for path, priority in paths:
        st = os.stat(path)
        h.update(f"|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|"
                 f"{priority}".encode())
    return h.hexdigest()[:32]


def serialize(data: CacheData) -> bytes:
    """The file image of ``data`` (see the module docstring)."""
    from distro.debcache_build import hash_order

    d = data
    arrays: dict[str, array[int]] = {}
    n_p, n_v = len(d.p_name), len(d.v_pkg)
    vlist, prlist = array("i"), array("i")
    p_vstart, p_vcount, p_rstart, p_rcount = (array("i") for _ in range(4))
    for pid in range(n_p):
        p_vstart.append(len(vlist))
        p_vcount.append(len(d.p_versions[pid]))
        vlist.extend(d.p_versions[pid])
        p_rstart.append(len(prlist))
        p_rcount.append(len(d.p_provides[pid]))
        prlist.extend(reversed(d.p_provides[pid]))
    # dependencies renumbered so that each version's list is contiguous (apt's order kept)
    d_type, d_op, d_target, d_ver, d_owner = (array("i") for _ in range(5))
    v_dstart, v_dcount, v_rstart, v_rcount, vrlist = (array("i") for _ in range(5))
    for vid in range(n_v):
        v_dstart.append(len(d_type))
        v_dcount.append(len(d.v_deps[vid]))
        for dep in d.v_deps[vid]:
            d_type.append(d.d_type[dep])
            d_op.append(d.d_op[dep])
            d_target.append(d.d_target[dep])
            d_ver.append(d.d_ver[dep])
            d_owner.append(vid)
        v_rstart.append(len(vrlist))
        v_rcount.append(len(d.v_provides[vid]))
        vrlist.extend(reversed(d.v_provides[vid]))
    order = hash_order(d.p_name, d.strings)
    hashpos = array("i", bytes(4 * n_p))
    for i, pid in enumerate(order):
        hashpos[pid] = i
    names = [d.strings[s].encode() for s in d.p_name]
    arches = [d.strings[s].encode() for s in d.p_arch]
    namesorted = sorted(range(n_p), key=lambda p: (names[p], arches[p]))
    blob = bytearray()
    str_off = array("i", [0])
    for s in d.strings:
        blob += s.encode()
        str_off.append(len(blob))
    local = {
        "p_vstart": p_vstart, "p_vcount": p_vcount, "p_rstart": p_rstart,
        "p_rcount": p_rcount, "vlist": vlist, "prlist": prlist, "d_type": d_type,
        "d_op": d_op, "d_target": d_target, "d_ver": d_ver, "d_owner": d_owner,
        "v_dstart": v_dstart, "v_dcount": v_dcount, "v_rstart": v_rstart,
        "v_rcount": v_rcount, "vrlist": vrlist,
        "hashorder": array("i", order), "hashpos": hashpos,
        "flagged": array("i", [p for p in range(n_p) if d.p_flags[p] & 24]),
        "namesorted": array("i", namesorted), "str_off": str_off}
    for name in _INT_ARRAYS:
        arrays[name] = local[name] if name in local else array("i", getattr(d, name))
    for name in _LONG_ARRAYS:
        arrays[name] = array("q", getattr(d, name))
    meta = _SEP.join([d.native_arch, ",".join(d.arches), *d.sources]).encode()
    names_order = [*_INT_ARRAYS, *_LONG_ARRAYS]
    table_len = len(names_order) * 16
    head = 8 + 8 + 8 + len(meta)
    offset = (head + table_len + 7) & ~7
    table = bytearray()
    chunks: list[bytes] = []
    for name in names_order:
        raw = arrays[name].tobytes()
        table += struct.pack("<QQ", offset, len(arrays[name]))
        chunks.append(raw)
        offset += (len(raw) + 7) & ~7
    blob_offset = offset
    out = bytearray()
    out += _MAGIC
    out += struct.pack("<QQ", len(meta), blob_offset)
    out += meta
    out += table
    out += b"\0" * (((head + table_len + 7) & ~7) - len(out))
    for raw in chunks:
        out += raw
        out += b"\0" * (((len(raw) + 7) & ~7) - len(raw))
    out += blob
    return bytes(out)


class DebCache:
    """A mapped cache file (or an in-memory image) with typed views on every array."""

    p_name: memoryview
    p_arch: memoryview
    p_flags: memoryview
    p_vstart: memoryview
    p_vcount: memoryview
    p_rstart: memoryview
    p_rcount: memoryview
    vlist: memoryview
    prlist: memoryview
    v_pkg: memoryview
    v_str: memoryview
    v_arch: memoryview
    v_ma: memoryview
    v_prio: memoryview
    v_src: memoryview
    v_srcver: memoryview
    v_pin: memoryview
    v_file: memoryview
    v_line: memoryview
    v_filename: memoryview
    v_sha256: memoryview
    v_dstart: memoryview
    v_dcount: memoryview
    v_rstart: memoryview
    v_rcount: memoryview
    vrlist: memoryview
    d_type: memoryview
    d_op: memoryview
    d_target: memoryview
    d_ver: memoryview
    d_owner: memoryview
    r_ver: memoryview
    r_pkg: memoryview
    r_pver: memoryview
    r_flags: memoryview
    hashorder: memoryview
    hashpos: memoryview
    namesorted: memoryview
    flagged: memoryview
    str_off: memoryview
    v_size: memoryview

    def __init__(self, image: bytes | mmap.mmap, path: Path | None = None) -> None:
        self.path = path
        self._image = image
        view = memoryview(image)
        if bytes(view[:8]) != _MAGIC:
            raise ValueError("not an edgedepot package cache")
        meta_len, blob_offset = struct.unpack_from("<QQ", view, 8)
        meta = bytes(view[24:24 + meta_len]).decode().split(_SEP)
        self.native_arch = meta[0]
        self.arches: tuple[str, ...] = tuple(meta[1].split(","))
        self.sources: list[str] = meta[2:]
        pos = 24 + meta_len
        for name in (*_INT_ARRAYS, *_LONG_ARRAYS):
            off, count = struct.unpack_from("<QQ", view, pos)
            pos += 16
            size = 8 if name in _LONG_ARRAYS else 4
            setattr(self, name, view[off:off + count * size].cast("q" if size == 8 else "i"))
        self._blob = view[blob_offset:]
        self._strs: dict[int, str] = {}
        self.n_packages = len(self.p_name)
        self.n_versions = len(self.v_pkg)

    @classmethod
    def open(cls, path: Path) -> DebCache:
        with open(path, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(mm, path)

    def string(self, sid: int) -> str:
        s = self._strs.get(sid)
        if s is None:
            off = self.str_off
            s = self._strs[sid] = bytes(self._blob[off[sid]:off[sid + 1]]).decode()
        return s

    def pkg_name(self, pid: int) -> str:
        return self.string(self.p_name[pid])

    def pkg_arch(self, pid: int) -> str:
        return self.string(self.p_arch[pid])

    def versions(self, pid: int) -> memoryview:
        start = self.p_vstart[pid]
        return self.vlist[start:start + self.p_vcount[pid]]

    def provides(self, pid: int) -> memoryview:
        """Provides records naming package ``pid`` (apt's ProvidesList order)."""
        start = self.p_rstart[pid]
        return self.prlist[start:start + self.p_rcount[pid]]

    def ver_provides(self, vid: int) -> memoryview:
        start = self.v_rstart[vid]
        return self.vrlist[start:start + self.v_rcount[vid]]

    def find(self, name: str, arch: str | None = None) -> list[int]:
        """Package IDs named ``name`` (of ``arch`` if given), in (name, arch) order."""
        key = name.encode()
        order = self.namesorted
        off = self.str_off
        blob = self._blob
        p_name = self.p_name

        def name_at(i: int) -> bytes:
            sid = p_name[order[i]]
            return bytes(blob[off[sid]:off[sid + 1]])

        lo, hi = 0, len(order)
        while lo < hi:
            mid = (lo + hi) // 2
            if name_at(mid) < key:
                lo = mid + 1
            else:
                hi = mid
        out: list[int] = []
        while lo < len(order) and name_at(lo) == key:
            pid = order[lo]
            if arch is None or self.pkg_arch(pid) == arch:
                out.append(pid)
            lo += 1
        return out

    def names(self) -> list[str]:
        """Every package name with at least one version, sorted."""
        seen: list[str] = []
        last = None
        for i in range(len(self.namesorted)):
            pid = self.namesorted[i]
            if self.p_vcount[pid] == 0:
                continue
            name = self.pkg_name(pid)
            if name != last:
                seen.append(name)
                last = name
        return seen

    def close(self) -> None:
        """Release the views and the mapping (the object is unusable afterwards)."""
        for name in (*_INT_ARRAYS, *_LONG_ARRAYS):
            getattr(self, name).release()
        self._blob.release()
        if isinstance(self._image, mmap.mmap):
            self._image.close()

