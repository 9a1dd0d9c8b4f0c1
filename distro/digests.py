"""Digests every tier agrees on: file sha256 and the RFC 9530 `Repr-Digest` header.

They live here, below both the node and the scheduler, because the node writes them and the
delta client and fleet tools check them; neither side should import the other for a hash.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

HASH_CHUNK = 1 << 20


def is_sha256_hex(text: str) -> bool:
    """A sha256 in the one spelling used on the wire: 64 lower-case hex digits."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in chunks so memory stays flat for image-sized files."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def parse_repr_digest(header: str | None) -> str | None:
    """Extract the sha-256 from a `Repr-Digest: sha-256=:<base64>:` header (RFC 9530)."""
    if not header:
        return None
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                raw = base64.b64decode(value[1:-1], validate=True)
            except ValueError:
                return None
            if len(raw) == 32:
                return raw.hex()
    return None


def format_repr_digest(sha256_hex: str) -> str:
    """The `Repr-Digest` value for a sha256, so the next tier verifies without trusting us."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"
