"""TTL revalidation shared by the index cores (apt snapshots, pip project pages).

An entry is *fresh* until its TTL has passed since it last validated upstream; after a failed
revalidation it is *backing off* (served stale without asking upstream again) for a short
while; otherwise it is *due*, and one refresh per key runs at a time, shared by every caller
and not cancelled when one of them goes away.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

RETRY_FAILED_AFTER = 15.0  # seconds a failed revalidation is not retried (capped by the TTL)

Freshness = Literal["fresh", "backing-off", "due"]


class Validated(Protocol):
    validated_at: float
    failed_at: float | None


def freshness(entry: Validated, ttl: float) -> Freshness:
    now = time.monotonic()
    if now - entry.validated_at < ttl:
        return "fresh"
    if entry.failed_at is not None and now - entry.failed_at < min(ttl, RETRY_FAILED_AFTER):
        return "backing-off"
    return "due"


def mark_valid(entry: Validated) -> None:
    entry.validated_at, entry.failed_at = time.monotonic(), None


def mark_failed(entry: Validated) -> None:
    entry.failed_at = time.monotonic()


def mark_due(entry: Validated) -> None:
    """Make the next request revalidate now, whatever the TTL (a forced refresh)."""
    entry.validated_at, entry.failed_at = float("-inf"), None
