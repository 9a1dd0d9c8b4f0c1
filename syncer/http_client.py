"""The one HTTP client wrapper: explicit timeouts, retries with backoff, TLS trust, typed errors.

An `HttpClient` is an async context manager that owns exactly one `aiohttp.ClientSession`. The
node uses one per upstream, the delta client and the fleet scheduler one each. Responses are
taken byte for byte (no transparent decompression), because every body is verified against a
digest computed over the bytes as stored upstream.

TLS: `ClientSettings.ca_file` adds a private CA to the system's trust (it does not replace it),
and `client_cert`/`client_key` present a client certificate to an upstream that requires one.
"""

from __future__ import annotations

import asyncio
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
    """System trust plus the private CA, and the client certificate if any."""
    context = ssl.create_default_context()
    if settings.ca_file is not None:
        context.load_verify_locations(cafile=str(settings.ca_file))
    if settings.client_cert is not None:
        context.load_cert_chain(str(settings.client_cert),
                                str(settings.client_key) if settings.client_key else None)
    return context


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

    async def __aenter__(self) -> HttpClient:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.total_timeout, connect=s.connect_timeout,
                                        sock_connect=s.connect_timeout, sock_read=s.read_timeout)
        self._session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, headers=self._headers,
            read_bufsize=1 << 20,
            connector=aiohttp.TCPConnector(limit=s.connections, limit_per_host=s.connections_per_host,
                                           ssl=ssl_context(s)))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

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
            try:
                resp = await self.session.request(method, url, headers=headers, params=params,
                                                  data=data, allow_redirects=True)
            except TimeoutError:
                last = UpstreamTimeout(url, f"no answer within {self.settings.connect_timeout}s")
                log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
                continue
            except aiohttp.ClientError as exc:
                last = UpstreamUnavailable(url, f"connection failed: {exc}")
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
