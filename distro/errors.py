"""Errors shared by the index parsers in :mod:`distro`.

:class:`MalformedIndexError` is defined in :mod:`distro.debian_repo`; this module re-exports the
same class so that ``except MalformedIndexError`` catches Debian and PyPI index errors alike.
Construct it with keywords (``source=``, ``line=``, ``message=``).
"""

from __future__ import annotations

from distro.debian_repo import MalformedIndexError

__all__ = ["MalformedIndexError"]
