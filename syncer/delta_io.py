"""Where rebuilt bytes go and where transfer bytes come from, while both are still moving.

A rebuild (patch applied, blocks assembled) runs in a worker thread and writes the target, in
order, to a `Sink`: a file of its own (`FileSink`, the command line and index updates) or the
node's partial file that clients are already streaming from. Its input (the patch, or the range
payload) is a `GrowingFile`: the event loop appends what the network delivers and the worker
reads behind it, waiting where it is ahead, so a target is rebuilt while its delta still
downloads and its first bytes can be served before the last delta byte arrived.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol


class Sink(Protocol):
    """Receives the target's bytes in order. ``size`` bytes are there already (a resumed
    rebuild skips them); ``write`` may block and is called from a worker thread."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes | memoryview) -> None: ...


class FileSink:
    """Appends to a new file and hashes what it writes (sha256)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = open(path, "xb")
        self._sha = hashlib.sha256()
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | memoryview) -> None:
        self._fh.write(data)
        self._sha.update(data)
        self._size += len(data)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()

    def close(self) -> None:
        self._fh.close()


class TransferBroken(Exception):
    """The bytes a rebuild waited for will not come (the download broke off or failed)."""


class GrowingFile:
    """A file one side appends to (``append`` on the event loop, or ``grow`` after writing it
    itself) while a worker thread reads it (``read_at``), waiting for bytes not there yet.

    ``finish`` says no more bytes will come; ``fail`` wakes the reader with the error."""

    def __init__(self, path: Path, size: int | None = None, *, complete: bool = False) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size if size is None else size
        self._done = complete
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    @property
    def size(self) -> int:
        return self._size

    def grow(self, size: int) -> None:
        with self._cond:
            self._size = max(self._size, size)
            self._cond.notify_all()

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def wait_for(self, end: int) -> int:
        """Block until ``end`` bytes are there, or no more will come; the size then."""
        with self._cond:
            while self._size < end and not self._done and self._error is None:
                self._cond.wait()
            if self._size < end and self._error is not None:
                raise TransferBroken(str(self._error)) from self._error
            return self._size

    def read_at(self, offset: int, n: int) -> bytes:
        """``n`` bytes from ``offset`` (fewer only at the end of a finished file)."""
        have = self.wait_for(offset + n)
        n = max(0, min(n, have - offset))
        out = os.pread(self._fd, n, offset)
        if len(out) != n:
            raise TransferBroken(f"{self.path.name} is shorter than announced")
        return out

    def close(self) -> None:
        os.close(self._fd)


class StreamReader:
    """Sequential reads over a `GrowingFile` (for parsing a patch as it arrives)."""

    def __init__(self, source: GrowingFile, offset: int = 0) -> None:
        self.source = source
        self.offset = offset

    def read(self, n: int) -> bytes:
        data = self.source.read_at(self.offset, n)
        self.offset += len(data)
        return data

    def at_end(self) -> bool:
        """True when nothing follows (waits until that is known)."""
        return self.source.wait_for(self.offset + 1) <= self.offset
