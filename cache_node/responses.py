"""The one way a node turns an answer into an HTTP response, and the one error shape.

Every content route (apt, pip, Glance image data, delta blobs) ends here: conditional requests
(`If-None-Match`), one `Range` (206, or 416 with `Content-Range: bytes */size`), `HEAD`, the
body by sendfile from a finished file or from the file a shared fetch is still growing (last
byte held back until verified), and one served-bytes count of the bytes really sent. Errors
are `{"error": code, "message": text}` with the status the core chose.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import IO

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from cache_node.answers import (
    Answer,
    BlobAnswer,
    BytesAnswer,
    RedirectAnswer,
    ServiceError,
    StreamAnswer,
    parse_range,
)
from cache_node.fetch import FetchFailed, stream_fetch
from cache_node.hot_blobs import HotBlobs
from cache_node.metrics import Metrics
from cache_node.request_note import CacheStatus, note_of
from distro.digests import format_repr_digests

log = logging.getLogger(__name__)

STALE_HEADER = "X-Edgedepot-Stale"
CACHE_HEADER = "X-Edgedepot-Cache"
IMMUTABLE = "public, max-age=31536000, immutable"
# Where sendfile cannot work (TLS: bytes are encrypted in user space), each file read becomes
# one write: large reads keep the per-chunk Python work small against the encryption.
COPY_CHUNK = 1 << 20
SENDFILE_STEP = 8 << 20

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 416: "range_not_satisfiable",
          500: "internal", 502: "bad_upstream", 503: "unavailable", 504: "upstream_timeout",
          507: "store_full"}


def error_code(status: int) -> str:
    return _CODES.get(status, "error")


def error_response(status: int, message: str, code: str | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The node's one error shape."""
    return web.json_response({"error": code or error_code(status), "message": message},
                             status=status, headers=headers)


def error_middleware(on_request: Callable[[web.Request], None] | None = None,
                     on_server_error: Callable[[web.Request, int, str], None] | None = None,
                     ) -> Middleware:
    """Every failure of a handler leaves as the one error shape; hooks count and log."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if on_request is not None:
            on_request(request)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ServiceError as exc:
            if exc.status == 204:
                return web.Response(status=204)
            if exc.status >= 500 and on_server_error is not None:
                on_server_error(request, exc.status, str(exc))
            return error_response(exc.status, str(exc), exc.code, exc.headers)
        except FetchFailed as exc:
            if on_server_error is not None:
                on_server_error(request, exc.http_status, str(exc))
            return error_response(exc.http_status, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason,
                                  headers={k: v for k, v in exc.headers.items()
                                           if k.lower() == "allow"})

    return middleware


def _headers(answer: BlobAnswer | BytesAnswer | StreamAnswer, sha256: str | None,
             cache: str) -> dict[str, str]:
    headers = {"Content-Type": answer.content_type}
    # What this node vouches for: the sha256 (once known) and the other digests the bytes
    # are verified against; a stream is aborted before its last byte if they do not match.
    digests = dict(answer.vouched) if not isinstance(answer, BytesAnswer) else {}
    if sha256:
        digests["sha256"] = sha256
        headers["ETag"] = f'"{sha256}"'
    if digests:
        headers["Repr-Digest"] = format_repr_digests(digests)
    if isinstance(answer, (BlobAnswer, BytesAnswer)):
        if answer.immutable:
            headers["Cache-Control"] = IMMUTABLE
        if answer.stale:
            headers[STALE_HEADER] = "1"
            headers["Warning"] = '110 - "Response is Stale"'
    if not isinstance(answer, BytesAnswer):
        headers.update(answer.headers)
        headers[CACHE_HEADER] = cache
    return headers


def _not_modified(request: web.Request, etag: str | None) -> bool:
    match = request.headers.get("If-None-Match")
    if not match or not etag:
        return False
    return any(tag.strip() in (etag, "*", f"W/{etag}") for tag in match.split(","))


async def send_answer(request: web.Request, answer: Answer, namespace: str, metrics: Metrics,
                      hot: HotBlobs | None = None) -> web.StreamResponse:
    """Answer a request from a core's answer; counts the request and the bytes sent."""
    metrics.requests.inc(namespace)
    if isinstance(answer, RedirectAnswer):
        raise web.HTTPMovedPermanently(answer.location)
    note = note_of(request)
    note.cache = cache_status(answer)
    note.sent = 0
    if isinstance(answer, StreamAnswer):
        try:
            head = await answer.fetch.head
        except FetchFailed as exc:
            raise ServiceError(str(exc), exc.http_status) from None
        size, sha256, cache = head.size, head.sha256, "MISS"
    elif isinstance(answer, BlobAnswer):
        size, sha256, cache = answer.size, answer.sha256, "HIT"
    else:
        size, sha256, cache = len(answer.body), answer.sha256, "HIT"
    headers = _headers(answer, sha256, cache)
    if isinstance(answer, BytesAnswer) and answer.last_modified:
        headers["Last-Modified"] = answer.last_modified
        ims = request.headers.get("If-Modified-Since")
        if ims and ims == answer.last_modified:
            return web.Response(status=304, headers=headers)
    if _not_modified(request, headers.get("ETag")):
        return web.Response(status=304, headers=headers)
    span = None
    if size is not None:
        headers["Accept-Ranges"] = "bytes"
        if "Range" in request.headers and _if_range_ok(request, headers.get("ETag")):
            span = parse_range(request.headers["Range"], size)  # RangeNotSatisfiable: 416
    start, end = (span.start, span.end) if span else (0, size)
    head_only = request.method == "HEAD"

    if isinstance(answer, BytesAnswer) or (
            isinstance(answer, BlobAnswer) and span is None and hot is not None
            and answer.sha256 and hot.eligible(answer.size)):
        if isinstance(answer, BytesAnswer):
            body: bytes | None = answer.body
        else:
            body = hot.get(answer.sha256, answer.path, answer.size) if hot and answer.sha256 \
                else None
        if body is not None:
            if span is not None:
                body = body[span.start:span.end]
                headers["Content-Range"] = f"bytes {span.start}-{span.end - 1}/{size}"
            if not head_only:
                metrics.served_bytes.inc(namespace, len(body))
                note.sent = len(body)
            return web.Response(status=206 if span else 200, body=None if head_only else body,
                                headers=headers)

    response = web.StreamResponse(status=206 if span else 200, headers=headers)
    if span is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1 if end else 0}/{size}"
    if end is not None:
        response.content_length = end - start
    await response.prepare(request)
    if head_only:
        return response
    sender = _Sender(request, response)
    try:
        if isinstance(answer, StreamAnswer):
            await stream_fetch(answer.fetch, sender.write, start, end,
                               send_range=sender.send_range if end is not None else None)
        else:
            assert isinstance(answer, BlobAnswer) and end is not None
            fd = os.open(answer.path, os.O_RDONLY)
            try:
                await sender.send_file(fd, start, end)
            finally:
                os.close(fd)
    except FetchFailed as exc:
        log.error("aborting response for %s after %d bytes: %s", request.path, sender.sent, exc)
        metrics.errors.inc(namespace)
        if request.transport is not None:
            request.transport.abort()
        return response  # aborted: the client sees a truncated body, never a whole wrong one
    except (ConnectionError, asyncio.CancelledError):
        log.info("client left %s after %d bytes", request.path, sender.sent)
        raise
    finally:
        metrics.served_bytes.inc(namespace, sender.sent)
        note.sent = sender.sent
        sender.close()
    await response.write_eof()
    return response


def cache_status(answer: Answer) -> CacheStatus:
    """How the node came by an answer's bytes, as the access log reports it."""
    if isinstance(answer, StreamAnswer):
        return "coalesced" if answer.coalesced else "delta" if answer.delta else "miss"
    if isinstance(answer, RedirectAnswer):
        return "-"
    if answer.stale:
        return "stale"
    if isinstance(answer, BlobAnswer) and answer.delta:
        return "delta"
    return "hit"


def _if_range_ok(request: web.Request, etag: str | None) -> bool:
    """`If-Range` with an ETag other than ours means: send the whole, current body."""
    if_range = request.headers.get("If-Range")
    return if_range is None or (etag is not None and if_range.strip() == etag)


class _Sender:
    """Writes file bytes to one response by sendfile, or, on a TLS connection (where the
    bytes must be encrypted in user space), by copying them through Python in COPY_CHUNK
    reads; counts what was sent. Measured (benchmarks/tls.py): the copy path costs about
    0.5 CPU-seconds per GB served whether the chunk is 64 KiB or 1 MiB and whether the TLS
    write buffer is 512 KiB or 4 MiB: the encryption and its buffer copies dominate."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.sent = 0
        self._files: dict[int, IO[bytes]] = {}
        transport = request.transport
        self._sendfile = transport is None or transport.get_extra_info("sslcontext") is None

    async def write(self, chunk: bytes) -> None:
        await self.response.write(chunk)
        self.sent += len(chunk)

    async def send_range(self, fd: int, offset: int, count: int) -> bool:
        if not self._sendfile:
            return False
        transport = self.request.transport
        if transport is None:
            raise ConnectionResetError("client went away")
        fileobj = self._files.get(fd)
        if fileobj is None:
            fileobj = self._files[fd] = os.fdopen(os.dup(fd), "rb")
        loop = asyncio.get_running_loop()
        first, end = offset, offset + count
        while offset < end:
            # In steps, as nginx's sendfile_max_chunk: on loopback one sendfile call can move
            # a hundred megabytes while the worker's event loop waits for it.
            step = min(SENDFILE_STEP, end - offset)
            try:
                await loop.sendfile(transport, fileobj, offset, step, fallback=False)
            except (NotImplementedError, RuntimeError):
                if offset == first:  # nothing sent yet: the caller copies instead
                    self._sendfile = False
                    return False
                raise
            offset += step
            self.sent += step
        return True

    async def send_file(self, fd: int, start: int, end: int) -> None:
        """Bytes [start, end) of a finished, verified file."""
        offset = start
        if offset < end and await self.send_range(fd, offset, end - offset):
            return
        while offset < end:
            chunk = os.pread(fd, min(COPY_CHUNK, end - offset), offset)
            if not chunk:
                raise ConnectionResetError("file shorter than announced")
            await self.write(chunk)
            offset += len(chunk)

    def close(self) -> None:
        for fileobj in self._files.values():
            fileobj.close()
        self._files.clear()
