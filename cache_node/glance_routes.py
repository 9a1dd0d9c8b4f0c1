"""Thin aiohttp routes of the Glance v2 API under `/glance` over `GlanceService`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from cache_node.answers import ServiceError
from cache_node.fetch import FetchFailed
from cache_node.glance_auth import Caller
from cache_node.glance_core import (
    NAMESPACE,
    GlanceService,
    LocalImageData,
    RangeNotSatisfiable,
    StreamingImageData,
    parse_range,
    stream_image,
)
from distro.digests import format_repr_digest
from distro.glance_images import image_schema, images_schema

log = logging.getLogger(__name__)

PREFIX = "/glance"
OFFLINE_HEADER = "X-Edgedepot-Offline"

GetService = Callable[[web.Request], GlanceService | None]
Route = Callable[[web.Request, GlanceService], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200, offline: bool = False) -> web.Response:
    headers = {OFFLINE_HEADER: "1", "Warning": '110 - "upstream unreachable; served from '
               'cache under the offline policy"'} if offline else None
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _error(status: int, message: str, extra: dict[str, str] | None = None) -> web.Response:
    title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
             416: "Requested Range Not Satisfiable", 503: "Service Unavailable"}.get(
        status, "Error")
    body = {"error": {"code": status, "title": title, "message": message}}
    resp = web.Response(text=json.dumps(body), status=status, content_type="application/json")
    resp.headers.update(extra or {})
    return resp


def _caller(request: web.Request) -> Caller:
    return Caller(request.headers.get("X-Auth-Token") or None)


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}{PREFIX}/"


def add_glance_routes(app: web.Application, get_service: GetService) -> None:
    """Mount the Glance API (read API and cache management) under `/glance`."""

    def service_of(request: web.Request) -> GlanceService:
        service = get_service(request)
        if service is None:
            raise ServiceError("this node has no image source", 404)
        return service

    def handler(fn: Route) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await fn(request, service_of(request))
            except RangeNotSatisfiable as exc:
                return _error(416, str(exc), {"Content-Range": f"bytes */{exc.size}"})
            except ServiceError as exc:
                if exc.status == 204:
                    return web.Response(status=204)
                if exc.status >= 500:
                    log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc)
                return _error(exc.status, str(exc))
        return wrapped

    async def versions(request: web.Request, service: GlanceService) -> web.Response:
        status = 200 if request.path.rstrip("/").endswith("/versions") else 300
        return _json(service.versions(_base_url(request)), status)

    async def schema_image(request: web.Request, service: GlanceService) -> web.Response:
        return _json(image_schema())

    async def schema_images(request: web.Request, service: GlanceService) -> web.Response:
        return _json(images_schema())

    async def list_images(request: web.Request, service: GlanceService) -> web.Response:
        result = await service.list_images(_caller(request), list(request.query.items()))
        body: dict[str, object] = {"images": [i.to_json() for i in result.images],
                                   "first": result.first, "schema": "/v2/schemas/images"}
        if result.next is not None:
            body["next"] = result.next
        return _json(body, offline=result.offline)

    async def show_image(request: web.Request, service: GlanceService) -> web.Response:
        view = await service.show_image(_caller(request), request.match_info["image_id"])
        return _json(view.image.to_json(), offline=view.offline)

    async def image_file(request: web.Request, service: GlanceService) -> web.StreamResponse:
        answer = await service.image_data(_caller(request), request.match_info["image_id"])
        headers = {"Content-Type": "application/octet-stream"}
        if answer.image.checksum:
            headers["Content-MD5"] = answer.image.checksum
        if isinstance(answer, LocalImageData):
            headers["Repr-Digest"] = format_repr_digest(answer.sha256)
            headers["ETag"] = f'"{answer.sha256}"'
            headers["X-Edgedepot-Cache"] = "HIT"
            if answer.offline:
                headers[OFFLINE_HEADER] = "1"
            if request.headers.get("Range"):
                parse_range(request.headers["Range"], answer.size)  # 416 the Glance way
            service.metrics.served_bytes.inc(NAMESPACE, answer.size)
            return web.FileResponse(answer.path, headers=headers)
        return await _stream(request, answer, headers, service)

    async def _stream(request: web.Request, answer: StreamingImageData,
                      headers: dict[str, str], service: GlanceService) -> web.StreamResponse:
        ifetch = answer.fetch
        try:
            head = await ifetch.fetch.head
        except FetchFailed as exc:
            raise ServiceError(str(exc), exc.http_status) from None
        size = head.size if head.size is not None else answer.image.size
        if size is None:
            raise ServiceError("image size unknown upstream", 502)
        span = parse_range(request.headers.get("Range"), size)
        start, end = (span.start, span.end) if span else (0, size)
        response = web.StreamResponse(status=206 if span else 200, headers=headers)
        response.headers["X-Edgedepot-Cache"] = "MISS"
        if head.sha256 and not span:
            response.headers["Repr-Digest"] = format_repr_digest(head.sha256)
        if span:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response.content_length = end - start
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        sent = 0

        async def write(chunk: bytes) -> None:
            nonlocal sent
            await response.write(chunk)
            sent += len(chunk)

        try:
            await stream_image(ifetch, write, start, end)
        except ConnectionError:
            log.info("client left %s after %d bytes; the fetch goes on", request.path, sent)
            service.metrics.served_bytes.inc(NAMESPACE, sent)
            return response
        except FetchFailed as exc:
            log.error("aborting image download %s after %d bytes: %s", request.path, sent, exc)
            service.metrics.errors.inc(NAMESPACE)
            if request.transport is not None:
                request.transport.abort()
            service.metrics.served_bytes.inc(NAMESPACE, sent)
            return response  # aborted: the client sees a truncated body, never a whole one
        service.metrics.served_bytes.inc(NAMESPACE, sent)
        await response.write_eof()
        return response

    async def image_digest(request: web.Request, service: GlanceService) -> web.Response:
        """edgedepot's own: the sha256 of an image's data, for a downstream cache's delta."""
        digest = await service.image_digest(_caller(request), request.match_info["image_id"])
        return _json({"sha256": digest.sha256, "size": digest.size})

    async def cache_list(request: web.Request, service: GlanceService) -> web.Response:
        state = await service.cache_state(_caller(request))
        return _json({"cached_images": [
            {"image_id": c.image_id, "hits": c.hits, "last_accessed": c.last_accessed,
             "last_modified": c.last_modified, "size": c.size} for c in state.cached],
            "queued_images": list(state.queued)})

    async def cache_queue(request: web.Request, service: GlanceService) -> web.Response:
        await service.cache_queue(_caller(request), request.match_info["image_id"])
        return web.Response(status=202)

    async def cache_delete(request: web.Request, service: GlanceService) -> web.Response:
        await service.cache_delete(_caller(request), request.match_info["image_id"])
        return web.Response(status=204)

    async def cache_clear(request: web.Request, service: GlanceService) -> web.Response:
        target = request.headers.get("x-image-cache-clear-target", "")
        await service.cache_clear(_caller(request), target)
        return web.Response(status=204)

    async def cache_clean(request: web.Request, service: GlanceService) -> web.Response:
        await service.cache_clean(_caller(request))
        return web.Response(status=200)

    async def cache_prune(request: web.Request, service: GlanceService) -> web.Response:
        result = await service.cache_prune(_caller(request))
        return _json({"total_files_pruned": result.files, "total_bytes_pruned": result.bytes})

    r = app.router
    r.add_get(PREFIX, handler(versions))
    r.add_get(PREFIX + "/", handler(versions))
    r.add_get(PREFIX + "/versions", handler(versions))
    r.add_get(PREFIX + "/v2/schemas/image", handler(schema_image))
    r.add_get(PREFIX + "/v2/schemas/images", handler(schema_images))
    r.add_get(PREFIX + "/v2/images", handler(list_images))
    r.add_get(PREFIX + "/v2/images/{image_id}", handler(show_image))
    r.add_get(PREFIX + "/v2/images/{image_id}/file", handler(image_file))
    r.add_get(PREFIX + "/edgedepot/v1/images/{image_id}/digest", handler(image_digest))
    r.add_get(PREFIX + "/v2/cache", handler(cache_list))
    r.add_delete(PREFIX + "/v2/cache", handler(cache_clear))
    r.add_post(PREFIX + "/v2/cache/clean", handler(cache_clean))
    r.add_post(PREFIX + "/v2/cache/prune", handler(cache_prune))
    r.add_put(PREFIX + "/v2/cache/{image_id}", handler(cache_queue))
    r.add_delete(PREFIX + "/v2/cache/{image_id}", handler(cache_delete))
