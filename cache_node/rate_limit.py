"""A token bucket that caps the bytes per second a node pulls for a prefetch plan.

A plan's `bandwidth` is a real rate limit on every byte the node's fetches take from the
upstream for that plan: the fetch loop takes tokens for each chunk before reading the next, so
TCP's flow control slows the sender down to the cap. A site client that joins a capped fetch
lifts the cap for it (a site waiting to install must not wait for a pre-warm budget).

The bucket reaches the fetch through a context variable the plan runner sets in its workers,
so the repository cores between them need not know plans exist.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextvars import ContextVar

MIN_BURST = 64 << 10


class TokenBucket:
    """`rate` bytes per second on average; bursts up to a tenth of a second's worth."""

    def __init__(self, rate: float, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else max(rate / 10, MIN_BURST))
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self, n: int) -> None:
        """Spend n bytes' worth, waiting as long as the bucket is in debt (FIFO among the
        transfers sharing it)."""
        async with self._lock:
            self._refill()
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


# The bucket of the plan on whose behalf the current task fetches (None: a client request).
PLAN_LIMITER: ContextVar[TokenBucket | None] = ContextVar("plan_limiter", default=None)
