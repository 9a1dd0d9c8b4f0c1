"""The one HTTP client wrapper for synchronous callers (the planner, the pip resolver).

Resolution is synchronous (resolvelib, the apt resolver), but its pages and indexes must come
through the same client as everything else: same timeouts, retries, TLS trust and client
certificate. `BlockingHttp` runs an `HttpClient` on an event loop in a background thread and
offers a blocking `get`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from syncer.http_client import ClientSettings, HttpClient

T = TypeVar("T")


class BlockingHttp:
    """`with BlockingHttp(settings) as http: body, content_type = http.get(url)`."""

    def __init__(self, settings: ClientSettings | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        self._client = HttpClient("blocking", settings, headers=headers)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="http",
                                        daemon=True)

    def __enter__(self) -> BlockingHttp:
        self._thread.start()
        self._run(self._client.__aenter__())
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._run(self._client.__aexit__(None, None, None))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def get(self, url: str, accept: str | None = None,
            headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
        """The body and Content-Type of a 2xx answer; raises the client's typed errors
        (`UpstreamError` subclasses, `IntegrityError`) otherwise."""
        merged = {**(headers or {}), **({"Accept": accept} if accept else {})}
        reply = self._run(self._client.fetch_small(url, merged))
        return reply.body, reply.headers.get("Content-Type", "")
