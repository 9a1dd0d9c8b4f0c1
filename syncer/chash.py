"""HAProxy's consistent hashing, computed here so the scheduler knows which sibling serves what.

A region's sibling tier sits behind HAProxy with `balance uri` and `hash-type consistent`. To
pre-warm each artifact on the sibling HAProxy will send its clients to, the scheduler must
reach the same answer HAProxy does, bit for bit. This is HAProxy 2.6's algorithm (Debian
bookworm's package; `src/lb_chash.c`, `src/backend.c:get_server_uh`, `src/hash.c`):

- each usable server puts `weight * 16` points on a 32-bit ring, point `i` at
  `full_hash(id * 4096 + i)` (`id` is the server's `id`, its puid);
- a request hashes the URI (up to `?` unless `whole`; from the path's first `/` with
  `path-only`; at most `len` bytes and `depth` slashes) with sdbm, djb2, wt6 or crc32, then
  `full_hash` when `avalanche` is set (`hash-type consistent` alone means sdbm + avalanche);
- the server is the one owning the ring point closest to the hash; between two points at the
  same distance the one before the hash wins; with one usable server left, the hash is 0.

Removing a server removes only its points, so only the keys it owned move, and they come back
to it when its points return: what lets a sibling fail without the region re-fetching
everything. Tests compare every answer here with a real HAProxy's.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

HashFunction = Literal["sdbm", "djb2", "wt6", "crc32"]
HASH_FUNCTIONS: tuple[HashFunction, ...] = ("sdbm", "djb2", "wt6", "crc32")

BE_WEIGHT_SCALE = 16           # ring points per unit of weight
SRV_EWGHT_RANGE = 256 * BE_WEIGHT_SCALE
MAX_WEIGHT = 256
MAX_ID = (2**31 - 1) // SRV_EWGHT_RANGE - 1  # keeps id * 4096 + point within a C int
_M32 = 0xFFFFFFFF


def full_hash(a: int) -> int:
    """Bob Jenkins' 32-bit full avalanche, times a large prime (HAProxy's `full_hash`)."""
    a &= _M32
    a = ((a + 0x7ED55D16) + (a << 12)) & _M32
    a = ((a ^ 0xC761C23C) ^ (a >> 19)) & _M32
    a = ((a + 0x165667B1) + (a << 5)) & _M32
    a = ((a + 0xD3A2646C) ^ (a << 9)) & _M32
    a = ((a + 0xFD7046C5) + (a << 3)) & _M32
    a = ((a ^ 0xB55A4F09) ^ (a >> 16)) & _M32
    return (a * 3221225473) & _M32


def hash_sdbm(key: bytes) -> int:
    h = 0
    for c in key:
        h = (c + (h << 6) + (h << 16) - h) & _M32
    return h


def hash_djb2(key: bytes) -> int:
    h = 5381
    for c in key:
        h = (((h << 5) + h) + c) & _M32
    return h


def hash_wt6(key: bytes) -> int:
    h0, h1 = 0xA53C965A, 0x5CA6953A
    step0, step1 = 6, 18
    for t in key:
        h0 = ~(h0 ^ t) & _M32
        h1 = ~(h1 + t) & _M32
        t2 = ((h1 << step0) | (h1 >> (32 - step0))) & _M32
        h1 = ((h0 << step1) | (h0 >> (32 - step1))) & _M32
        h0 = t2
        t3 = ((h0 >> 16) ^ h1) & 0xFFFF
        step0 = t3 & 0x1F
        step1 = t3 >> 11
    return (h0 ^ h1) & _M32


def hash_crc32(key: bytes) -> int:
    h = _M32
    for c in key:
        h ^= c
        for _ in range(8):
            h = (h >> 1) ^ (0xEDB88320 if h & 1 else 0)
    return ~h & _M32


_FUNCTIONS = {"sdbm": hash_sdbm, "djb2": hash_djb2, "wt6": hash_wt6, "crc32": hash_crc32}


@dataclass(frozen=True)
class HashSpec:
    """`hash-type consistent <function> [avalanche]`."""

    function: HashFunction = "sdbm"
    avalanche: bool = True

    @staticmethod
    def parse(text: str) -> HashSpec:
        """'sdbm avalanche', 'djb2', ... as written after `hash-type consistent`; '' is
        HAProxy's default for consistent hashing (sdbm + avalanche)."""
        words = text.split()
        if not words:
            return HashSpec()
        function, rest = words[0], words[1:]
        if function not in HASH_FUNCTIONS:
            raise ValueError(f"hash function {function!r}: one of {', '.join(HASH_FUNCTIONS)}")
        if rest not in ([], ["avalanche"]):
            raise ValueError(f"after {function!r} only 'avalanche' may follow, got {' '.join(rest)!r}")
        return HashSpec(function, bool(rest))

    @property
    def haproxy(self) -> str:
        """The words after `hash-type consistent`."""
        return f"{self.function} avalanche" if self.avalanche else self.function

    def hash(self, key: bytes) -> int:
        h = _FUNCTIONS[self.function](key)
        return full_hash(h) if self.avalanche else h


@dataclass(frozen=True)
class UriKey:
    """Which part of the URI `balance uri [len N] [depth N] [whole] [path-only]` hashes."""

    depth: int = 0     # 0: no limit; else hash up to (not including) slash number depth + 1
    length: int = 0    # 0: no limit
    whole: bool = False
    path_only: bool = True

    @property
    def haproxy(self) -> str:
        """The words after `balance uri`."""
        words = []
        if self.length:
            words.append(f"len {self.length}")
        if self.depth:
            words.append(f"depth {self.depth}")
        if self.whole:
            words.append("whole")
        if self.path_only:
            words.append("path-only")
        return " ".join(words)

    def key(self, uri: bytes) -> bytes:
        """The bytes HAProxy hashes for a request whose target is `uri`."""
        if self.path_only:
            uri = _path_of(uri)
        if self.length:
            uri = uri[:self.length]
        end, slashes = 0, 0
        for c in uri:
            if c == 0x2F:  # '/'
                slashes += 1
                if slashes == self.depth + 1 and self.depth:
                    break
            elif c == 0x3F and not self.whole:  # '?'
                break
            end += 1
        return uri[:end]


def _path_of(uri: bytes) -> bytes:
    """The path (and query) of a request target, as HAProxy's `http_parse_path` finds it:
    origin-form as is; for absolute-form, from the first '/' after the authority."""
    if uri.startswith(b"/") or uri == b"*":
        return uri if uri != b"*" else b""
    scheme_end = uri.find(b"://")
    if scheme_end < 0:
        return b""
    slash = uri.find(b"/", scheme_end + 3)
    return b"" if slash < 0 else uri[slash:]


@dataclass(frozen=True)
class RingServer:
    """One `server` line as the ring sees it."""

    name: str
    id: int
    weight: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.id <= MAX_ID:
            raise ValueError(f"server {self.name}: id {self.id} outside 1..{MAX_ID}")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise ValueError(f"server {self.name}: weight {self.weight} outside 0..{MAX_WEIGHT}")


class Ring:
    """The consistent-hash tree of one backend for the servers that are up."""

    def __init__(self, servers: Iterable[RingServer], hash_spec: HashSpec | None = None,
                 uri_key: UriKey | None = None) -> None:
        self.servers = tuple(servers)
        self.hash_spec = hash_spec or HashSpec()
        self.uri_key = uri_key or UriKey()
        ids = [s.id for s in self.servers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"server ids must be unique, got {ids}")
        points: list[tuple[int, int, int]] = []  # (key, insertion order, server index)
        order = 0
        for index, server in enumerate(self.servers):
            # eb32 trees keep duplicate keys in insertion order: servers in declaration
            # order, each server's points from 0 up.
            for node in range(server.weight * BE_WEIGHT_SCALE):
                points.append((full_hash(server.id * SRV_EWGHT_RANGE + node), order, index))
                order += 1
        points.sort()
        self._keys = [p[0] for p in points]
        self._owners = [p[2] for p in points]
        self._used = sum(1 for s in self.servers if s.weight > 0)

    def without(self, names: Iterable[str]) -> Ring:
        """The ring once these servers are down."""
        gone = set(names)
        return Ring([s for s in self.servers if s.name not in gone], self.hash_spec,
                    self.uri_key)

    def server_for_hash(self, h: int) -> RingServer | None:
        if not self._keys:
            return None
        i = bisect.bisect_left(self._keys, h)  # eb32_lookup_ge: first point >= h
        nxt = i if i < len(self._keys) else 0
        prv = nxt - 1 if nxt > 0 else len(self._keys) - 1
        dp = (h - self._keys[prv]) & _M32
        dn = (self._keys[nxt] - h) & _M32
        return self.servers[self._owners[prv] if dp <= dn else self._owners[nxt]]

    def hash_of(self, uri: bytes | str) -> int:
        if self._used == 1:  # HAProxy does not hash when one server is left
            return 0
        raw = uri.encode() if isinstance(uri, str) else uri
        return self.hash_spec.hash(self.uri_key.key(raw))

    def server_for(self, uri: bytes | str) -> RingServer | None:
        """The server HAProxy sends a request for `uri` to (None: none is up)."""
        if not self._keys:
            return None
        return self.server_for_hash(self.hash_of(uri))
