"""Thin aiohttp routes: translate requests into calls on the node's cores and answers back."""

from __future__ import annotations

import dataclasses
import json
import logging

from aiohttp import HttpVersion11, web

from cache_node import hot_path
from cache_node.access_log import install_access_log
from cache_node.admin_auth import install_access_control
from cache_node.answers import (
    Answer,
    BadRequest,
    BlobAnswer,
    BytesAnswer,
    NotFound,
    ServiceError,
    safe_relpath,
)
from cache_node.client_stats import add_client_routes
from cache_node.delta_routes import add_delta_routes
from cache_node.glance_routes import add_glance_routes
from cache_node.health import add_health_routes
from cache_node.key_routes import add_key_routes
from cache_node.node import Node
from cache_node.plans import PlanRunner
from cache_node.repository import Repository
from cache_node.responses import error_middleware, send_answer
from cache_node.status import add_status_routes
from distro.digests import is_sha256_hex
from distro.wire import PlanError, parse_plan

log = logging.getLogger(__name__)

NODE_KEY: web.AppKey[Node] = web.AppKey("node", Node)


async def render_answer(request: web.Request, answer: Answer, namespace: str
                        ) -> web.StreamResponse:
    node = request.app[NODE_KEY]
    return await send_answer(request, answer, namespace, node.metrics, node.hot_blobs)


def _relpath(request: web.Request, key: str = "path") -> str:
    raw_tail = request.raw_path.split("?", 1)[0]
    return safe_relpath(request.match_info[key], raw_tail)


async def repo_handler(request: web.Request) -> web.StreamResponse:
    """`/apt/<name>/<path>` and `/pypi/<name>/<path>`: whatever repository the name is."""
    node = request.app[NODE_KEY]
    kind = request.path.split("/", 2)[1]
    repo = await node.repo(kind, request.match_info["name"])
    path = _relpath(request) if not request.match_info["path"].endswith("/") else \
        _relpath_dir(request)
    accept = request.headers.get("Accept")
    answer = await repo.answer(path, accept)
    response = await render_answer(request, answer, repo.namespace)
    if kind == "pypi":
        response.headers["Vary"] = "Accept"
    _offer_hot(request, response, answer, repo, path)
    return response


def _offer_hot(request: web.Request, response: web.StreamResponse, answer: Answer,
               repo: Repository, path: str) -> None:
    """Let the plain listener repeat this answer (`hot_path`) while the repository says it
    would not change: a whole, in-memory 200 hit to a plain GET."""
    if request.method != "GET" or request.version != HttpVersion11 or request.query_string \
            or not isinstance(response, web.Response) or response.status != 200 \
            or not isinstance(answer, (BlobAnswer, BytesAnswer)) or answer.stale:
        return
    body = response.body
    raw = request.raw_path
    if not isinstance(body, bytes) or len(body) > hot_path.MAX_BODY or not raw.isascii():
        return
    unchanged = repo.unchanged_while(path)
    if unchanged is None:
        return
    head = hot_path.response_head(200, response.reason, list(response.headers.items()),
                                  len(body))
    request.app[NODE_KEY].hot_answers.offer(raw.encode("ascii"), hot_path.HotEntry(
        head, body, repo.namespace, request.path, raw, unchanged,
        counts_hit=isinstance(answer, BlobAnswer),
        digest=answer.sha256 if isinstance(answer, BlobAnswer) else None))


def _relpath_dir(request: web.Request) -> str:
    """A directory path (pip's `simple/` pages end in '/'): validated without its slash."""
    raw = request.match_info["path"]
    stripped = raw.rstrip("/")
    raw_tail = request.raw_path.split("?", 1)[0].rstrip("/")
    return (safe_relpath(stripped, raw_tail) if stripped else "") + "/"


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    await node.metrics.refresh_peers()
    return web.Response(text=node.metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def served_paths(request: web.Request) -> web.Response:
    """Per-path request counts (what tests and operators use to prove 'fetched once')."""
    node = request.app[NODE_KEY]
    await node.metrics.refresh_peers()
    return web.json_response(dict(node.metrics.node_served_paths()))


def _plans(request: web.Request) -> PlanRunner:
    runner = request.app[NODE_KEY].plans
    if runner is None:
        raise ServiceError("node is starting", 503)
    return runner


async def put_plan(request: web.Request) -> web.Response:
    try:
        document = await request.json()
    except ValueError:
        raise BadRequest("the plan must be a JSON document") from None
    try:
        spec = parse_plan(document)
    except PlanError as exc:
        raise BadRequest(f"invalid plan: {exc}") from None
    if spec.plan_id != request.match_info["plan_id"]:
        raise BadRequest("plan_id in the body differs from the URL")
    return web.json_response(_plans(request).submit(spec).to_json(), status=202)


async def get_plan(request: web.Request) -> web.Response:
    status = _plans(request).status(request.match_info["plan_id"])
    if status is None:
        raise NotFound(f"no plan {request.match_info['plan_id']!r}")
    return web.json_response(status.to_json())


async def list_plans(request: web.Request) -> web.Response:
    runner = _plans(request)
    statuses = [runner.status(pid) for pid in runner.plan_ids()]
    return web.json_response([s.to_json() for s in statuses if s is not None])


async def delete_plan(request: web.Request) -> web.Response:
    if not _plans(request).delete(request.match_info["plan_id"]):
        raise NotFound(f"no plan {request.match_info['plan_id']!r}")
    return web.json_response({"deleted": request.match_info["plan_id"]})


async def refresh_indexes(request: web.Request) -> web.Response:
    """Revalidate every index this node mirrors now; report bytes moved per index."""
    reports = await request.app[NODE_KEY].refresh_all()
    return web.json_response([dataclasses.asdict(r) for r in reports])


async def has_blobs(request: web.Request) -> web.Response:
    """Which of the given sha256 digests this node holds (never triggers a fetch)."""
    try:
        document = await request.json()
        digests = document["sha256"]
        if not isinstance(digests, list) or len(digests) > 100_000:
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise BadRequest('expected {"sha256": [hex, ...]}') from None
    store = request.app[NODE_KEY].store
    present = [d for d in digests if isinstance(d, str) and is_sha256_hex(d) and store.has(d)]
    return web.json_response({"present": present})


def _count_path(request: web.Request) -> None:
    if request.path.startswith(("/apt/", "/pypi/", "/delta/", "/glance/", "/keys/")):
        request.app[NODE_KEY].metrics.count_served_path(request.path)


def _server_error(request: web.Request, status: int, message: str) -> None:
    node = request.app[NODE_KEY]
    node.metrics.errors.inc(request.path.split("/")[1] if "/" in request.path else "")
    log.warning("%s %s -> %d: %s", request.method, request.path, status, message)


def build_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[error_middleware(_count_path, _server_error)])
    app[NODE_KEY] = node
    policy = install_access_control(app, node.config)  # allow-list, admin token (admin_auth)
    sink = install_access_log(app, node.config)  # outermost: refusals are logged too
    node.reload_listeners.append(lambda old, new: policy.update(new))
    if sink is not None:
        node.reload_listeners.append(sink.reconfigure)
    add_health_routes(app, node)
    add_status_routes(app, node)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/served", served_paths)
    add_client_routes(app, node.metrics, None if node.worker is None
                      else (node.config.store_dir / "clients", node.worker))
    app.router.add_get("/admin/plans", list_plans)
    app.router.add_post("/admin/has", has_blobs)
    app.router.add_post("/admin/refresh", refresh_indexes)
    app.router.add_put("/admin/plans/{plan_id}", put_plan)
    app.router.add_get("/admin/plans/{plan_id}", get_plan)
    app.router.add_delete("/admin/plans/{plan_id}", delete_plan)
    app.router.add_get("/apt/{name}/{path:.+}", repo_handler)
    app.router.add_get("/pypi/{name}/{path:.+}", repo_handler)
    add_delta_routes(app, lambda request: request.app[NODE_KEY].delta)
    add_glance_routes(app, lambda request: request.app[NODE_KEY].glance)
    keys = add_key_routes(app, node.config, node.signing_key)
    node.reload_listeners.append(keys.reconfigure)
    return app


__all__ = ["build_app", "NODE_KEY", "BadRequest", "json"]
