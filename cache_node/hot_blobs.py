"""A bounded in-memory LRU of small, immutable, verified blobs (index files, metadata).

Hot small files are what thousands of clients ask for at once (`Packages`, project pages'
metadata); answering them from memory avoids a file open, a stat and a sendfile per request.
Entries are keyed by sha256 and read from a verified store blob or the origin's own tree, so
they can never go stale.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

MAX_ITEM_BYTES = 1 << 20
DEFAULT_CAPACITY = 64 << 20


class HotBlobs:
    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_item: int = MAX_ITEM_BYTES) -> None:
        self.capacity = capacity
        self.max_item = max_item
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def eligible(self, size: int) -> bool:
        return size <= self.max_item

    def get(self, digest: str, path: Path, size: int) -> bytes | None:
        """The blob's bytes from memory, loading it once; None if it cannot be read whole."""
        data = self._items.get(digest)
        if data is not None:
            self._items.move_to_end(digest)
            return data
        try:
            with open(path, "rb") as fh:
                data = fh.read(size + 1)
        except OSError:
            return None
        if len(data) != size:
            return None
        self._items[digest] = data
        self._bytes += size
        while self._bytes > self.capacity and self._items:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)
        return data

    def discard(self, digest: str) -> None:
        data = self._items.pop(digest, None)
        if data is not None:
            self._bytes -= len(data)
