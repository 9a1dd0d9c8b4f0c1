"""What a framework-free core returns to the thin HTTP layer, and the errors it raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from cache_node.fetch import Fetch


class ServiceError(Exception):
    """A request that cannot be answered with content; carries the HTTP status to use, and
    optionally a machine-readable `code` (else derived from the status) and extra headers."""

    status = 500
    code: str | None = None

    def __init__(self, message: str, status: int | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers


class NotFound(ServiceError):
    status = 404


class BadRequest(ServiceError):
    status = 400


class RangeNotSatisfiable(ServiceError):
    status = 416

    def __init__(self, size: int) -> None:
        super().__init__(f"requested range not satisfiable (the file has {size} bytes)",
                         headers={"Content-Range": f"bytes */{size}"})
        self.size = size


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One `bytes=` range of RFC 9110; None means the whole body. 416 when unsatisfiable.

    Several ranges, other units and malformed values are ignored (the whole body is sent), as
    RFC 9110 allows."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, sep, last = spec.strip().partition("-")
    try:
        if not sep:
            return None
        if not first:
            n = int(last)
            if n <= 0 or size == 0:
                raise RangeNotSatisfiable(size)
            return ByteRange(max(0, size - n), size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start < 0 or start >= size or end <= start:
        raise RangeNotSatisfiable(size)
    return ByteRange(start, min(end, size))


@dataclass(frozen=True)
class BlobAnswer:
    """A verified file on disk (store blob, or a file of the origin's own tree)."""

    path: Path
    size: int
    sha256: str | None
    content_type: str
    immutable: bool = False
    stale: bool = False
    # Other digests these bytes were verified against (hashlib name, hex), e.g. an image's md5
    # and os_hash: the node vouches for them in `Repr-Digest`, so the next tier need not
    # recompute them.
    vouched: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()  # e.g. Content-MD5, X-Edgedepot-Offline
    delta: bool = False  # built by a delta fetch while answering this request (access log)


@dataclass(frozen=True)
class BytesAnswer:
    body: bytes
    content_type: str
    sha256: str
    stale: bool = False
    last_modified: str | None = None
    immutable: bool = False


@dataclass(frozen=True)
class StreamAnswer:
    """A shared upstream fetch still in progress; the client streams from it."""

    fetch: Fetch
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    coalesced: bool = False  # this request joined a fetch another one started (access log)

    @property
    def vouched(self) -> tuple[tuple[str, str], ...]:
        """What the bytes will have been verified against once the stream completes."""
        return self.fetch.plan.expected_others


@dataclass(frozen=True)
class RedirectAnswer:
    location: str


Answer = BlobAnswer | BytesAnswer | StreamAnswer | RedirectAnswer

_FORBIDDEN_RAW = ("%2f", "%5c", "%00", "%2e", "\\", "\x00")


def safe_relpath(decoded: str, raw: str | None = None) -> str:
    """Validate a client-supplied relative path; raise BadRequest for any traversal attempt.

    `raw` is the still-encoded form: encoded separators, dots and NULs are refused outright,
    as are double-encoded forms (the decoded path is decoded once more and checked again).
    """
    if raw is not None:
        lowered = raw.lower()
        if any(bad in lowered for bad in _FORBIDDEN_RAW):
            raise BadRequest(f"path contains an encoded separator or dot: {raw!r}")
    for candidate in (decoded, unquote(decoded)):
        if "\x00" in candidate or "\\" in candidate:
            raise BadRequest("path contains a NUL byte or backslash")
        if candidate.startswith("/"):
            raise BadRequest("absolute path")
        for segment in candidate.split("/"):
            if segment in ("", ".", ".."):
                raise BadRequest(f"path segment {segment!r} is not allowed")
    return decoded


def content_type_for(name: str) -> str:
    if name.endswith(".deb") or name.endswith(".udeb"):
        return "application/vnd.debian.binary-package"
    if name.endswith(".gz"):
        return "application/gzip"
    if name.endswith(".xz"):
        return "application/x-xz"
    if name.endswith(".whl") or name.endswith(".zip"):
        return "application/zip"
    if name.endswith((".gpg", "InRelease", "Release")) or name.endswith("Packages"):
        return "text/plain; charset=utf-8" if not name.endswith(".gpg") else \
            "application/pgp-signature"
    if name.endswith(".metadata"):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"
