"""What the delta client and the origin's delta routes agree on: paths, headers, range lists.

A ranges request body is ``b"EDRG"``, ``u8 version``, then uvarint count, then for each range
the uvarint gap from the end of the previous range (the first from 0) and the uvarint length.
Ranges are sorted, non-overlapping and non-empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

API_PREFIX = "/delta/v1"
PAYLOAD_SHA256_HEADER = "Edgedepot-Payload-Sha256"
PAYLOAD_LENGTH_HEADER = "Edgedepot-Payload-Length"
SIGNATURE_TYPE = "application/vnd.edgedepot.delta-signature"
PATCH_TYPE = "application/vnd.edgedepot.delta-patch"
RANGES_TYPE = "application/vnd.edgedepot.delta-ranges"
HASHES_TYPE = "application/vnd.edgedepot.delta-hashes"
ZSTD_TYPE = "application/zstd"
RANGES_MAGIC = b"EDRG"
RANGES_VERSION = 1
MAX_RANGES = 1 << 24

_BLOB_URL = re.compile(r"^(?P<base>.*?)/delta/v1/blobs/(?P<sha>[0-9a-f]{64})/?$")


class WireError(ValueError):
    """A request or response of the delta protocol is malformed."""


@dataclass(frozen=True)
class BlobUrl:
    base: str  # scheme://host:port[/prefix], without /delta/v1
    sha256: str

    @property
    def blob(self) -> str:
        return f"{self.base}{API_PREFIX}/blobs/{self.sha256}"

    @property
    def signature(self) -> str:
        return f"{self.blob}/signature"

    @property
    def patch(self) -> str:
        return f"{self.blob}/patch"

    @property
    def ranges(self) -> str:
        return f"{self.blob}/ranges"

    @property
    def hashes(self) -> str:
        return f"{self.blob}/hashes"

    @property
    def offer(self) -> str:
        return f"{self.blob}/offer"


def parse_blob_url(url: str) -> BlobUrl:
    m = _BLOB_URL.match(url)
    if m is None:
        raise WireError(f"not a delta blob URL (…/delta/v1/blobs/<sha256>): {url}")
    return BlobUrl(m.group("base"), m.group("sha"))


def _uvarint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    shift = 0
    value = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated or oversized varint in ranges request")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def encode_ranges(ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]]) -> bytes:
    out = bytearray(RANGES_MAGIC)
    out.append(RANGES_VERSION)
    _uvarint(len(ranges), out)
    end = 0
    for off, length in ranges:
        if off < end or length <= 0:
            raise WireError("ranges must be sorted, disjoint and non-empty")
        _uvarint(off - end, out)
        _uvarint(length, out)
        end = off + length
    return bytes(out)


def decode_ranges(data: bytes, blob_size: int) -> tuple[tuple[int, int], ...]:
    """Parse a ranges request for a blob of ``blob_size`` bytes; raises WireError."""
    if data[:4] != RANGES_MAGIC or len(data) < 5:
        raise WireError("not a delta ranges request")
    if data[4] != RANGES_VERSION:
        raise WireError(f"ranges request version {data[4]}, this node reads {RANGES_VERSION}")
    count, pos = _read_uvarint(data, 5)
    if count > MAX_RANGES:
        raise WireError("too many ranges")
    ranges: list[tuple[int, int]] = []
    end = 0
    for _ in range(count):
        gap, pos = _read_uvarint(data, pos)
        length, pos = _read_uvarint(data, pos)
        off = end + gap
        if length <= 0 or off + length > blob_size:
            raise WireError(f"range ({off}, {length}) is empty or beyond the blob's "
                            f"{blob_size} bytes")
        ranges.append((off, length))
        end = off + length
    if pos != len(data):
        raise WireError("trailing bytes in ranges request")
    return tuple(ranges)
