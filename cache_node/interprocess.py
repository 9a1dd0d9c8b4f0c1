"""What the worker processes of one node share besides the store: file locks.

A node may run several worker processes over one store (`--workers`). Work that must happen
once per node, not once per worker (an upstream download, a Release revalidation, a
repository rebuild, the plan executor), is guarded by an flock(2) on a file under
`<store>/locks/`. The kernel releases the lock when its holder dies, so a killed worker never
leaves a lock behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

POLL = 0.01


class FileLock:
    """An exclusive lock on one file, held by at most one process (and one holder in it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self) -> bool:
        """Take the lock, waiting for another process to release it. True when it was free
        at once (nobody else was doing the work)."""
        if self.try_acquire():
            return True
        while not self.try_acquire():
            await asyncio.sleep(POLL)
        return False

    @contextlib.contextmanager
    def blocking(self) -> Iterator[None]:
        """Hold the lock around synchronous work (in a worker thread), waiting for it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def __aenter__(self) -> FileLock:
        await self.acquire()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
