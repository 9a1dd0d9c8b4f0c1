"""Repeat answers to the hottest requests without the HTTP framework.

A warm regional cache spends most of its time answering the same small, unchanged files
(`InRelease`, `Packages`, wheels) to many sites. Through aiohttp each such answer costs about
60 µs of Python; the same bytes written straight from a protocol cost a few. So every
listener's connections (plain and TLS) go through `HotProtocol`: it answers a request itself
only when

- it is a plain `GET` over HTTP/1.1 without a body, `Range`, conditional or proxy headers
  (when proxies are trusted) and its exact request target is in `HotAnswers`;
- the answer there was made by the normal path for the same target (same headers, same
  bytes) and its repository still says it would give the same answer now (`valid()`: same
  snapshot, nothing changed by another worker, no revalidation due);
- the client passes the allow list.

Anything else (another method or target, a miss, a stale or expired entry, a slow reader)
goes to aiohttp's own protocol for the connection, which sees an ordinary connection. Each
answer is counted and logged exactly as the normal path would (`HotServed`).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, Protocol

MAX_ENTRIES = 4096
MAX_BYTES = 64 << 20        # bodies held at most (mostly the same objects as `HotBlobs`')
MAX_BODY = 1 << 20          # larger answers are sendfile's job, not ours
MAX_HEAD = 16 << 10         # a request head longer than this goes to aiohttp
MAX_BUFFERED_WRITES = 1 << 20  # a client that reads slower than it asks goes to aiohttp

# Request headers that change the answer or need the framework's handling.
FALLBACK_HEADERS = frozenset({
    b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match",
    b"if-unmodified-since", b"authorization", b"cookie"})
# A request that may carry a body or change protocols: the framework takes the connection.
BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})
PROXY_HEADERS = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})


@dataclass(frozen=True, slots=True)
class HotEntry:
    """One answer as the normal path gave it: everything but `Date` and `Connection`."""

    head: bytes          # status line and headers, each ending in CRLF
    body: bytes
    namespace: str
    path: str            # the request path (decoded), for counters
    raw_path: str        # as the client sent it, for the access log
    valid: Callable[[], bool]
    counts_hit: bool     # the normal path counted this answer as a cache hit
    digest: str | None   # the stored blob it came from (its LRU time is kept up to date)


class HotAnswers:
    """Request target -> the answer the normal path gave for it, while it stays valid; at
    most `max_entries` answers and `max_bytes` of bodies (least recently used go first)."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, HotEntry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def offer(self, target: bytes, entry: HotEntry) -> None:
        if len(entry.body) > self.max_bytes:
            return
        self._drop(target)
        self._entries[target] = entry
        self._bytes += len(entry.body)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def get(self, target: bytes) -> HotEntry | None:
        entry = self._entries.get(target)
        if entry is None:
            return None
        if not entry.valid():
            self._drop(target)
            return None
        return entry

    def _drop(self, target: bytes) -> None:
        entry = self._entries.pop(target, None)
        if entry is not None:
            self._bytes -= len(entry.body)


class HotServed(Protocol):
    """What the node does for each answer the fast path sent (counters, access log)."""

    def allowed(self, client: str) -> bool: ...

    def proxies_trusted(self) -> bool: ...

    def served(self, entry: HotEntry, client: str, arrived: float, started: float) -> None: ...


class _Date:
    """The `Date` header value, formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


_DATE = _Date()


class HotProtocol(asyncio.Protocol):
    """A plain-HTTP connection in front of aiohttp's protocol for it (see the module doc).

    aiohttp's protocol is attached to the same transport from the start and gets every
    request this one does not answer, in order. A request is answered here only while the
    framework is idle on the connection (parked waiting for its next request, nothing queued
    or running), so pipelined answers never overtake each other. Requests with a body, or
    anything this parser does not follow, turn the rest of the connection over to aiohttp.
    """

    def __init__(self, answers: HotAnswers, served: HotServed,
                 framework: Callable[[], asyncio.Protocol]) -> None:
        self.answers = answers
        self.node = served
        self.inner = framework()
        self.transport: asyncio.Transport | None = None
        self.client = "-"
        self._buffer = b""
        self._passthrough = False

    # -- asyncio.Protocol: everything reaches the framework's protocol too --------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer: Any = transport.get_extra_info("peername")
        self.client = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._passthrough:
            self.inner.data_received(data)
            return
        buffer = self._buffer + data if self._buffer else data
        self._buffer = b""
        while buffer:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    break
                self._buffer = buffer  # the rest of the head is still to come
                return
            verdict = self._answer(buffer[:end])
            if verdict is _Verdict.ANSWERED:
                buffer = buffer[end + 4:]
            elif verdict is _Verdict.FRAMEWORK:  # a request without a body: its head is all
                self.inner.data_received(buffer[:end + 4])
                buffer = buffer[end + 4:]
            else:
                break
        if buffer:  # a body, a head too long, something odd: aiohttp's from here on
            self._passthrough = True
            self.inner.data_received(buffer)

    # -- one request -----------------------------------------------------------------------
    def _answer(self, head: bytes) -> _Verdict:
        """Answer one request head (without its final CRLF CRLF) or say whose it is."""
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return _Verdict.PASS  # aiohttp answers 400 and closes
        ours = parts[0] == b"GET" and parts[2] == b"HTTP/1.1"
        close = False
        if line_end >= 0:
            for line in head[line_end + 2:].split(b"\r\n"):
                name, sep, value = line.partition(b":")
                if not sep or not name or name != name.strip():
                    return _Verdict.PASS  # folded lines, a space before the colon: refused
                name = name.lower()
                if name in BODY_HEADERS:
                    return _Verdict.PASS
                if name in FALLBACK_HEADERS or name in PROXY_HEADERS and self.node.proxies_trusted():
                    ours = False
                elif name == b"connection":
                    close = b"close" in {t.strip().lower() for t in value.split(b",")}
        if not ours:
            return _Verdict.FRAMEWORK
        entry = self.answers.get(parts[1])
        transport = self.transport
        if entry is None or transport is None or transport.is_closing() \
                or transport.get_write_buffer_size() > MAX_BUFFERED_WRITES \
                or not _idle(self.inner) or not self.node.allowed(self.client):
            return _Verdict.FRAMEWORK
        arrived, started = time.time(), time.monotonic()
        transport.write(b"".join((
            entry.head, b"Date: ", _DATE.value(),
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n", entry.body)))
        self.node.served(entry, self.client, arrived, started)
        if close:
            transport.close()
        return _Verdict.ANSWERED


class _Verdict(enum.Enum):
    ANSWERED = "answered here"
    FRAMEWORK = "this request is aiohttp's"
    PASS = "the rest of the connection is aiohttp's"


def _idle(framework: asyncio.Protocol) -> bool:
    """aiohttp's protocol is parked waiting for the next request: nothing queued, nothing
    being answered, not closing (private attributes of aiohttp 3.x: if they are not there,
    the fast path stays out of the way)."""
    state: Any = framework
    try:
        waiter = state._waiter
        return waiter is not None and not waiter.done() and not state._messages \
            and not state._request_in_progress and not state._close and not state._force_close
    except AttributeError:
        return False


def response_head(status: int, reason: str, headers: list[tuple[str, str]],
                  body_length: int) -> bytes:
    """The status line and headers of an answer the normal path gave, for `HotEntry.head`
    (hop-by-hop and per-response headers left out: the fast path adds its own)."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    for name, value in headers:
        if name.lower() in ("date", "connection", "keep-alive", "content-length",
                            "transfer-encoding"):
            continue
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {body_length}\r\n")
    return "".join(lines).encode("latin-1")


__all__ = ["HotAnswers", "HotEntry", "HotProtocol", "HotServed", "response_head"]
