"""Debian version ordering (deb-version(7)), exactly as dpkg compares versions.

``[epoch:]upstream[-revision]``: epochs compare numerically; upstream and revision compare by
alternating non-digit runs (``~`` before everything, even the end of the string; letters before
non-letters) and numeric runs (compared as integers). Never string comparison.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = [
    "DebianVersion",
    "InvalidVersionError",
    "compare_versions",
    "is_valid_version",
    "parse_version",
    "sort_versions",
    "version_satisfies",
]

_VALID = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~:-]*")
_DIGITS = re.compile(r"[0-9]*")
_NON_DIGITS = re.compile(r"[^0-9]*")


class InvalidVersionError(ValueError):
    """A string that is not a Debian version."""


@dataclass(frozen=True)
class DebianVersion:
    """A parsed version; ordering follows dpkg."""

    epoch: int
    upstream: str
    revision: str

    def __str__(self) -> str:
        text = f"{self.epoch}:{self.upstream}" if self.epoch else self.upstream
        return f"{text}-{self.revision}" if self.revision else text

    def __lt__(self, other: DebianVersion) -> bool:
        return compare_versions(str(self), str(other)) < 0

    def __le__(self, other: DebianVersion) -> bool:
        return compare_versions(str(self), str(other)) <= 0


def is_valid_version(text: str) -> bool:
    """True when ``text`` is a syntactically valid Debian version."""
    if not _VALID.fullmatch(text):
        return False
    try:
        parsed = parse_version(text)
    except InvalidVersionError:
        return False
    return parsed.upstream[0].isdigit() and ":" not in parsed.revision


@functools.lru_cache(maxsize=65536)
def parse_version(text: str) -> DebianVersion:
    """Split a version into epoch, upstream version and Debian revision (dpkg's rules)."""
    text = text.strip()
    if not text:
        raise InvalidVersionError("empty version string")
    epoch = 0
    colon = text.find(":")
    if colon >= 0:
        head = text[:colon]
        if not head.isdigit():
            raise InvalidVersionError(f"epoch in {text!r} is not a number")
        epoch = int(head)
        text = text[colon + 1:]
    dash = text.rfind("-")
    upstream, revision = (text[:dash], text[dash + 1:]) if dash >= 0 else (text, "")
    if not upstream:
        raise InvalidVersionError(f"version {text!r} has an empty upstream part")
    return DebianVersion(epoch, upstream, revision)


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isalpha() and char.isascii():
        return ord(char)
    return ord(char) + 256


def _verrevcmp(left: str, right: str) -> int:
    """dpkg's verrevcmp: alternate non-digit runs (by _order) and numeric runs."""
    i = j = 0
    n, m = len(left), len(right)
    while i < n or j < m:
        a = _NON_DIGITS.match(left, i)
        b = _NON_DIGITS.match(right, j)
        assert a is not None and b is not None
        sa, sb = a.group(), b.group()
        for k in range(max(len(sa), len(sb))):
            ca = _order(sa[k]) if k < len(sa) else 0
            cb = _order(sb[k]) if k < len(sb) else 0
            if ca != cb:
                return -1 if ca < cb else 1
        i, j = a.end(), b.end()
        da = _DIGITS.match(left, i)
        db = _DIGITS.match(right, j)
        assert da is not None and db is not None
        na = int(da.group() or "0")
        nb = int(db.group() or "0")
        if na != nb:
            return -1 if na < nb else 1
        i, j = da.end(), db.end()
    return 0


@functools.lru_cache(maxsize=262144)
def compare_versions(left: str, right: str) -> int:
    """-1, 0 or 1 as ``left`` is lower than, equal to or higher than ``right`` (dpkg order)."""
    if left == right:
        return 0
    a, b = parse_version(left), parse_version(right)
    if a.epoch != b.epoch:
        return -1 if a.epoch < b.epoch else 1
    result = _verrevcmp(a.upstream, b.upstream)
    if result:
        return result
    return _verrevcmp(a.revision, b.revision)


def version_satisfies(version: str, op: str | None, reference: str | None) -> bool:
    """Whether ``version`` satisfies the relation ``(op reference)``; no op means any version."""
    if op is None or reference is None:
        return True
    cmp = compare_versions(version, reference)
    if op == "=":
        return cmp == 0
    if op in (">=", ">"):
        return cmp >= 0
    if op in ("<=", "<"):
        return cmp <= 0
    if op == ">>":
        return cmp > 0
    if op == "<<":
        return cmp < 0
    raise InvalidVersionError(f"unknown relation operator {op!r}")


def sort_versions(versions: list[str], *, reverse: bool = False) -> list[str]:
    """The versions in dpkg order (ascending unless ``reverse``)."""
    return sorted(versions, key=functools.cmp_to_key(compare_versions), reverse=reverse)
