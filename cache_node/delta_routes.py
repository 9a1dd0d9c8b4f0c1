"""HTTP routes of the delta engine under ``/delta/v1/`` (thin: the work is in DeltaService).

    GET  /delta/v1/blobs/{sha256}                       the blob (Range), Repr-Digest
    GET  /delta/v1/blobs/{sha256}/signature[?block_size=N]
    GET  /delta/v1/blobs/{target}/patch?basis={sha256}  (Range; 404 JSON if basis/target unknown)
    POST /delta/v1/blobs/{sha256}/ranges                zstd body, Edgedepot-Payload-Sha256
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from cache_node.delta_service import BadRequest, DeltaService, ServedFile, UnknownBlob
from distro.digests import format_repr_digest, is_sha256_hex
from syncer.delta_wire import (
    API_PREFIX,
    PATCH_TYPE,
    PAYLOAD_LENGTH_HEADER,
    PAYLOAD_SHA256_HEADER,
    SIGNATURE_TYPE,
    ZSTD_TYPE,
)

MAX_RANGES_BODY = 64 << 20
_CHUNK = 1 << 18

ServiceFor = Callable[[web.Request], DeltaService]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


def _sha(request: web.Request, key: str = "sha256") -> str:
    value = request.match_info[key]
    if not is_sha256_hex(value):
        raise web.HTTPBadRequest(text=f'{{"error":"bad_digest","message":"not a sha256: {key}"}}',
                                 content_type="application/json")
    return value


def _immutable_file(served: ServedFile, content_type: str) -> web.FileResponse:
    """A content-addressed file: its Repr-Digest, cacheable forever."""
    return web.FileResponse(served.path, headers={
        "Content-Type": content_type,
        "Repr-Digest": format_repr_digest(served.sha256),
        "Cache-Control": "public, max-age=31536000, immutable",
    })


def add_delta_routes(app: web.Application, service_for_request: ServiceFor) -> None:
    """Register the ``/delta/v1/`` routes on ``app``."""

    async def get_blob(request: web.Request) -> web.StreamResponse:
        sha = _sha(request)
        try:
            served = service_for_request(request).blob(sha)
        except UnknownBlob as exc:
            return _error(404, "unknown_blob", str(exc))
        return _immutable_file(served, "application/octet-stream")

    async def get_signature(request: web.Request) -> web.StreamResponse:
        sha = _sha(request)
        raw = request.query.get("block_size")
        block_size: int | None = None
        if raw is not None:
            if not raw.isdigit():
                return _error(400, "bad_block_size", "block_size must be an integer")
            block_size = int(raw)
        try:
            served = await service_for_request(request).signature(sha, block_size)
        except UnknownBlob as exc:
            return _error(404, "unknown_blob", str(exc))
        except BadRequest as exc:
            return _error(400, "bad_block_size", str(exc))
        return _immutable_file(served, SIGNATURE_TYPE)

    async def get_patch(request: web.Request) -> web.StreamResponse:
        target = _sha(request)
        basis = request.query.get("basis", "")
        if not is_sha256_hex(basis):
            return _error(400, "bad_basis", "query parameter basis must be a sha256 hex digest")
        try:
            served = await service_for_request(request).patch(target, basis)
        except UnknownBlob as exc:
            return _error(404, "unknown_blob", str(exc))
        return _immutable_file(served, PATCH_TYPE)

    async def post_ranges(request: web.Request) -> web.StreamResponse:
        sha = _sha(request)
        if request.content_length is not None and request.content_length > MAX_RANGES_BODY:
            return _error(413, "too_large", "ranges request body too large")
        body = await request.read()
        try:
            payload = await service_for_request(request).ranges(sha, body)
        except UnknownBlob as exc:
            return _error(404, "unknown_blob", str(exc))
        except BadRequest as exc:
            return _error(400, "bad_ranges", str(exc))
        try:
            response = web.StreamResponse(headers={
                "Content-Type": ZSTD_TYPE,
                PAYLOAD_SHA256_HEADER: payload.payload_sha256,
                PAYLOAD_LENGTH_HEADER: str(payload.payload_size),
                "Cache-Control": "no-store",
            })
            response.content_length = payload.compressed_size
            await response.prepare(request)
            with open(payload.path, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            payload.release()

    prefix = API_PREFIX
    app.router.add_get(prefix + "/blobs/{sha256}", get_blob)
    app.router.add_get(prefix + "/blobs/{sha256}/signature", get_signature)
    app.router.add_get(prefix + "/blobs/{sha256}/patch", get_patch)
    app.router.add_post(prefix + "/blobs/{sha256}/ranges", post_ranges)
