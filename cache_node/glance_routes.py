"""Thin aiohttp routes of the Glance v2 API under `/glance` over `GlanceService`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from cache_node.admin_auth import is_node_admin
from cache_node.answers import ServiceError
from cache_node.glance_auth import Caller
from cache_node.glance_backends import DIGEST_HEADER
from cache_node.glance_core import NAMESPACE, OFFLINE_HEADER, GlanceService
from cache_node.responses import send_answer
from distro.glance_images import image_schema, images_schema

log = logging.getLogger(__name__)

PREFIX = "/glance"

GetService = Callable[[web.Request], GlanceService | None]
Route = Callable[[web.Request, GlanceService], Awaitable[web.StreamResponse]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: object, status: int = 200, offline: bool = False) -> web.Response:
    headers = {OFFLINE_HEADER: "1", "Warning": '110 - "upstream unreachable; served from '
               'cache under the offline policy"'} if offline else None
    return web.Response(text=json.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def _caller(request: web.Request) -> Caller:
    return Caller(request.headers.get("X-Auth-Token") or None, is_node_admin(request))


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
            return await fn(request, service_of(request))  # errors: the app's one shape
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
        response = _json(view.image.to_json(), offline=view.offline)
        if view.sha256 is not None:
            response.headers[DIGEST_HEADER] = view.sha256
        return response

    async def image_file(request: web.Request, service: GlanceService) -> web.StreamResponse:
        answer = await service.image_data(_caller(request), request.match_info["image_id"])
        return await send_answer(request, answer, NAMESPACE, service.metrics)

    async def image_digest(request: web.Request, service: GlanceService) -> web.Response:
        """edgedepot's own: the sha256 of an image's data, for a downstream cache's delta."""
        digest = await service.image_digest(_caller(request), request.match_info["image_id"])
        return _json(digest.to_json())

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
