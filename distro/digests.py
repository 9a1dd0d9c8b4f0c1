"""Digests every tier agrees on: file sha256 and the RFC 9530 `Repr-Digest` header.

They live here, below both the node and the scheduler, because the node writes them and the
delta client and fleet tools check them; neither side should import the other for a hash.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

HASH_CHUNK = 1 << 20


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256_hex(text: str) -> bool:
    """A sha256 in the one spelling used on the wire: 64 lower-case hex digits."""
    return _SHA256_HEX.fullmatch(text) is not None


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks so memory stays flat for image-sized files."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# RFC 9530 algorithm keys <-> hashlib names, for the digests a tier vouches for.
_RFC_TO_HASHLIB = {"sha-256": "sha256", "sha-512": "sha512", "md5": "md5", "sha-384": "sha384",
                   "sha-224": "sha224", "sha-1": "sha1"}
_HASHLIB_TO_RFC = {v: k for k, v in _RFC_TO_HASHLIB.items()}


def parse_repr_digests(header: str | None) -> dict[str, str]:
    """Every digest of a `Repr-Digest` header (RFC 9530) we know, by hashlib name, in hex."""
    out: dict[str, str] = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        algo = _RFC_TO_HASHLIB.get(key.strip().lower())
        if algo is None or not (value.startswith(":") and value.endswith(":")):
            continue
        try:
            out[algo] = base64.b64decode(value[1:-1], validate=True).hex()
        except (binascii.Error, ValueError):
            continue
    return out


def format_repr_digests(digests: Mapping[str, str]) -> str:
    """A `Repr-Digest` header value for hex digests by hashlib name (sha256 first)."""
    return _format_repr_digests(tuple(sorted(digests.items())))


@functools.lru_cache(maxsize=4096)  # the same few headers are answered thousands of times
def _format_repr_digests(items: tuple[tuple[str, str], ...]) -> str:
    items = tuple(sorted(items, key=lambda kv: kv[0] != "sha256"))
    return ", ".join(f"{_HASHLIB_TO_RFC[algo]}=:{base64.b64encode(bytes.fromhex(hexd)).decode()}:"
                     for algo, hexd in items if algo in _HASHLIB_TO_RFC and hexd)


def parse_repr_digest(header: str | None) -> str | None:
    """The sha-256 of a `Repr-Digest` header (RFC 9530), in hex."""
    value = parse_repr_digests(header).get("sha256")
    return value if value is not None and len(value) == 64 else None


def format_repr_digest(sha256_hex: str) -> str:
    """The `Repr-Digest` value for a sha256, so the next tier verifies without trusting us."""
    return format_repr_digests({"sha256": sha256_hex})
