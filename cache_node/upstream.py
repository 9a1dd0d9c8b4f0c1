"""HTTP client for one upstream: explicit timeouts, retries with backoff, typed errors.

An `UpstreamClient` is an async context manager that owns exactly one `aiohttp.ClientSession`.
Responses are taken byte for byte (no transparent decompression), because every body is
verified against a digest that was computed over the bytes as stored upstream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

import aiohttp

from cache_node.config import UpstreamSettings

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
USER_AGENT = "edgedepot-cache-node/0.1"


class UpstreamError(Exception):
    """The upstream could not give us the artifact. `http_status` is what we answer."""

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


class UpstreamIntegrityError(UpstreamError):
    """Bytes from upstream did not match what was promised (digest, size, format)."""

    http_status = 502


@dataclass(frozen=True)
class UpstreamReply:
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes


class UpstreamClient:
    """One session per upstream. `on_request(n_bytes)` feeds the metrics."""

    def __init__(self, label: str, settings: UpstreamSettings,
                 on_request: Callable[[], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self.label = label
        self.settings = settings
        self._on_request = on_request or (lambda: None)
        self._on_bytes = on_bytes or (lambda n: None)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> UpstreamClient:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.settings.connect_timeout,
            sock_connect=self.settings.connect_timeout, sock_read=self.settings.read_timeout)
        self._session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False,
            connector=aiohttp.TCPConnector(limit=64, limit_per_host=32),
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"upstream client {self.label} is not open")
        return self._session

    def count_bytes(self, n: int) -> None:
        self._on_bytes(n)

    async def _backoff(self, attempt: int) -> None:
        delay = self.settings.backoff * (2 ** attempt)
        await asyncio.sleep(delay * (0.75 + random.random() / 2))

    @asynccontextmanager
    async def open(self, url: str, headers: Mapping[str, str] | None = None,
                   method: str = "GET", retries: int | None = None,
                   ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a response whose status is < 500, retrying 5xx and connection errors.

        404/410 raise `UpstreamNotFound`; other 4xx are yielded so the caller may decide
        (a 416 on a resumed range, a 304 on revalidation).
        """
        attempts = (self.settings.retries if retries is None else retries) + 1
        last: UpstreamError | None = None
        for attempt in range(attempts):
            if attempt:
                await self._backoff(attempt - 1)
            self._on_request()
            try:
                resp = await self.session.request(method, url, headers=headers,
                                                  allow_redirects=True)
            except TimeoutError:
                last = UpstreamTimeout(url, f"no answer within {self.settings.connect_timeout}s")
                log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
                continue
            except aiohttp.ClientError as exc:
                last = UpstreamUnavailable(url, f"connection failed: {exc}")
                log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
                continue
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
                          max_bytes: int = 512 << 20) -> UpstreamReply:
        """Fetch a whole (index-sized) response into memory, retrying body failures too."""
        attempts = self.settings.retries + 1
        last: UpstreamError | None = None
        for attempt in range(attempts):
            if attempt:
                await self._backoff(attempt - 1)
            try:
                async with self.open(url, headers, retries=0) as resp:
                    if resp.status >= 400:
                        raise UpstreamUnavailable(url, f"answered {resp.status} {resp.reason}")
                    if resp.content_length is not None and resp.content_length > max_bytes:
                        raise UpstreamIntegrityError(url, f"response too large ({resp.content_length} bytes)")
                    body = await resp.read()
                    self._on_bytes(len(body))
                    if resp.content_length is not None and len(body) != resp.content_length:
                        raise UpstreamIntegrityError(
                            url, f"truncated body: {len(body)} of {resp.content_length} bytes")
                    return UpstreamReply(str(resp.url), resp.status, dict(resp.headers), body)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                last = UpstreamUnavailable(url, f"body interrupted: {exc}")
            except TimeoutError:
                last = UpstreamTimeout(url, f"body stalled for {self.settings.read_timeout}s")
            except (UpstreamIntegrityError, UpstreamUnavailable, UpstreamTimeout) as exc:
                last = exc
            log.warning("%s (attempt %d/%d)", last, attempt + 1, attempts)
        assert last is not None
        raise last
