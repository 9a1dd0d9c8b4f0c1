"""The root of every error edgedepot raises on purpose, and its one integrity error.

Everything an operator or a client may see as a failure derives from `EdgedepotError`, so a
command-line entry point can turn any of them into one clear line, and anything else is a bug.
`IntegrityError` is the one way to say "these bytes are not what they were promised to be"
(digest, size, format), wherever it is found: the store, an upstream response, a delta rebuild.
"""

from __future__ import annotations


class EdgedepotError(Exception):
    """Root of edgedepot's own errors; `http_status` is what a node answers for it."""

    http_status = 500


class IntegrityError(EdgedepotError):
    """Bytes did not match the digest, size or format they were promised; never stored."""

    http_status = 502


class MalformedIndexError(ValueError):
    """An index file (Release, InRelease, Packages, compressed index) is not well formed."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = source if line is None else f"{source} (line {line})"
        super().__init__(f"{where}: {message}")
