"""The one HTTP client wrapper: explicit timeouts, retries with backoff, TLS trust, typed errors.

An `HttpClient` is an async context manager that owns exactly one `aiohttp.ClientSession`. The
node uses one per upstream, the delta client and the fleet scheduler one each. Responses are
taken byte for byte (no transparent decompression), because every body is verified against a
digest computed over the bytes as stored upstream.

TLS: `ClientSettings.ca_file` adds a private CA to the system's trust (it does not replace it),
and `client_cert`/`client_key` present a client certificate to an upstream that requires one.

`reconfigure(settings)` (a node's configuration reload) opens a new session for the requests
that follow, so new timeouts, trust and client certificates apply to new connections, while
requests already running finish on the old session, which is closed once they are done.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiohttp

from distro.errors import EdgedepotError, IntegrityError

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "edgedepot/0.1"


class UpstreamError(EdgedepotError):
    """The upstream could not give us what we asked for. `http_status` is what we answer."""

    http_status = 502

    def __init__(self, url: str, message: str) -> None:
        super().__init__(f"upstream {url}: {message}")
        self.url = url


class UpstreamNotFound(UpstreamError):
    http_status = 404


class UpstreamUnavailable(UpstreamError):
    http_status = 502


class UpstreamTimeout(UpstreamError):
    http_status = 504


@dataclass(frozen=True)
class ClientSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # longest silence while reading a body
    retries: int = 3            # extra attempts on 5xx and connection errors
    backoff: float = 0.5        # first retry delay, doubled each attempt
    total_timeout: float | None = None  # whole request (the scheduler's bound), None: none
    ca_file: Path | None = None          # private CA added to the system trust
    client_cert: Path | None = None      # PEM certificate presented to the upstream
    client_key: Path | None = None
    connections: int = 64
    connections_per_host: int = 32


@dataclass(frozen=True)
class HttpReply:
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes


def ssl_context(settings: ClientSettings) -> ssl.SSLContext:
    """System trust plus the private CA, and the client certificate if any. A context is
    shared while the files it was made from stay the same (path, size and modification time):
    making one reads the whole system trust store, some 15 ms of blocked event loop, too much
    for every delta fetch; a renewed certificate is a new file state, so a new context."""
    system = ssl.get_default_verify_paths().cafile
    return _context_for(_file_state(Path(system) if system else None),
                        _file_state(settings.ca_file), _file_state(settings.client_cert),
                        _file_state(settings.client_key))


FileState = tuple[str, int, int] | None


def _file_state(path: Path | None) -> FileState:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (str(path), -1, -1)  # loading it raises the error the operator needs to see
    return (str(path), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _context_for(system: FileState, ca: FileState, cert: FileState,
                 key: FileState) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        context.load_verify_locations(cafile=ca[0])
    if cert is not None:
        context.load_cert_chain(cert[0], key[0] if key is not None else None)
    return context


def describe_client_error(url: str, exc: aiohttp.ClientError) -> str:
    """What went wrong, in words an operator can act on (TLS trust and mTLS refusals)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (f"TLS: the upstream's certificate is not trusted ({exc.certificate_error}); "
                "add its CA with upstream_tls.ca")
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed: {text}"
    closed = isinstance(exc, aiohttp.ServerDisconnectedError) or (
        isinstance(exc, aiohttp.ClientOSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE))
    if url.startswith("https://") and closed:
        # A TLS 1.3 server checks the client certificate after the client's handshake is
        # done, and an asyncio server then closes (or resets) without an alert: all the
        # client sees.
        return (f"the upstream closed the TLS connection without answering ({text}); it may "
                "require a client certificate this node does not present or one from a CA "
                "it does not trust (upstream_tls.client_cert)")
    return f"connection failed: {text}"


class HttpClient:
    """One session; `on_request()` and `on_bytes(n)` feed the caller's metrics."""

    def __init__(self, label: str, settings: ClientSettings | None = None,
                 on_request: Callable[[], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self.label = label
        self.settings = settings or ClientSettings()
        self._on_request = on_request or (lambda: None)
        self._on_bytes = on_bytes or (lambda n: None)
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                         **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        self._users: dict[aiohttp.ClientSession, int] = {}  # requests running per session
        self._retired: set[aiohttp.ClientSession] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def _new_session(self) -> aiohttp.ClientSession:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.total_timeout, connect=s.connect_timeout,
                                        sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        return aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, headers=self._headers,
            read_bufsize=1 << 20,
            connector=aiohttp.TCPConnector(limit=s.connections, limit_per_host=s.connections_per_host,
                                           ssl=ssl_context(s)))

    async def __aenter__(self) -> HttpClient:
        self._session = self._new_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        for old in list(self._retired):
            await old.close()
        self._retired.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def reconfigure(self, settings: ClientSettings) -> None:
        """Use `settings` from the next request on: a new session, so certificate files are
        read again even when their paths stayed the same. Requests running now finish on the
        old session, which closes when the last of them is done. Raises OSError/ssl.SSLError
        (and changes nothing) when the TLS files cannot be loaded."""
        old_settings, self.settings = self.settings, settings
        if self._session is None:
            return
        try:
            fresh = self._new_session()
        except Exception:
            self.settings = old_settings
            raise
        old, self._session = self._session, fresh
        self._retire(old)

    def _retire(self, session: aiohttp.ClientSession) -> None:
        if self._users.get(session, 0):
            self._retired.add(session)
            return
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _enter(self) -> aiohttp.ClientSession:
        session = self.session
        self._users[session] = self._users.get(session, 0) + 1
        return session

    def _leave(self, session: aiohttp.ClientSession) -> None:
        left = self._users[session] - 1
        if left:
            self._users[session] = left
            return
        del self._users[session]
        if session in self._retired:
            self._retired.discard(session)
            self._retire(session)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"HTTP client {self.label} is used outside 'async with'")
        return self._session

    def count_bytes(self, n: int) -> None:
        self._on_bytes(n)

    async def _backoff(self, attempt: int) -> None:
        delay = self.settings.backoff * (2 ** attempt)
        await asyncio.sleep(delay * (0.75 + random.random() / 2))

    @asynccontextmanager
    async def open(self, url: str, headers: Mapping[str, str] | None = None,
                   method: str = "GET", retries: int | None = None, *,
                   params: Mapping[str, str] | None = None, data: bytes | None = None,
                   statuses: Literal["checked", "any"] = "checked",
                   ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a response, retrying connection errors (and, when `statuses` is "checked",
        5xx answers); 404/410 then raise `UpstreamNotFound`, other 4xx are yielded so the
        caller may decide (a 416 on a resumed range, a 304 on revalidation). With "any",
        every response is yielded as it came."""
        attempts = (self.settings.retries if retries is None else retries) + 1
        last: UpstreamError | None = None
        for attempt in range(attempts):
            if attempt:
                await self._backoff(attempt - 1)
            self._on_request()
            session = self._enter()
            try:
                try:
                    resp = await session.request(method, url, headers=headers, params=params,
                                                 data=data, allow_redirects=True)
                except TimeoutError:
                    last = UpstreamTimeout(url, "no answer within "
                                                f"{self.settings.connect_timeout}s")
                    log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
                    continue
                except aiohttp.ClientError as exc:
                    last = UpstreamUnavailable(url, describe_client_error(url, exc))
                    log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
                    continue
                if statuses == "checked":
                    if resp.status in RETRY_STATUSES:
                        last = UpstreamUnavailable(url, f"answered {resp.status} {resp.reason}")
                        log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
                        resp.release()
                        continue
                    if resp.status in (404, 410):
                        resp.release()
                        raise UpstreamNotFound(url, f"{resp.status} {resp.reason}")
                try:
                    yield resp
                finally:
                    resp.release()
                return
            finally:
                self._leave(session)
        assert last is not None
        raise last

    async def fetch_small(self, url: str, headers: Mapping[str, str] | None = None,
                          max_bytes: int = 512 << 20) -> HttpReply:
        """Fetch a whole (index-sized) response into memory, retrying body failures too."""
        attempts = self.settings.retries + 1
        last: EdgedepotError | None = None
        for attempt in range(attempts):
            if attempt:
                await self._backoff(attempt - 1)
            try:
                async with self.open(url, headers, retries=0) as resp:
                    if resp.status >= 400:
                        raise UpstreamUnavailable(url, f"answered {resp.status} {resp.reason}")
                    if resp.content_length is not None and resp.content_length > max_bytes:
                        raise IntegrityError(
                            f"upstream {url}: response too large ({resp.content_length} bytes)")
                    body = await resp.read()
                    self._on_bytes(len(body))
                    if resp.content_length is not None and len(body) != resp.content_length:
                        raise IntegrityError(f"upstream {url}: truncated body: {len(body)} of "
                                             f"{resp.content_length} bytes")
                    return HttpReply(str(resp.url), resp.status, dict(resp.headers), body)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                last = UpstreamUnavailable(url, f"body interrupted: {exc}")
            except TimeoutError:
                last = UpstreamTimeout(url, f"body stalled for {self.settings.read_timeout}s")
            except (IntegrityError, UpstreamUnavailable, UpstreamTimeout) as exc:
                last = exc
            log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
        assert last is not None
        raise last
