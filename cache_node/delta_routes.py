"""HTTP routes of the delta engine under ``/delta/v1/`` (thin: the work is in DeltaService).

    GET  /delta/v1/blobs/{sha256}                       the blob (Range), Repr-Digest
    GET  /delta/v1/blobs/{sha256}/signature[?block_size=N]
    GET  /delta/v1/blobs/{target}/patch?basis={sha256}[&wait=0]  (Range; 404 JSON if basis/target
                                                        unknown; wait=0: 409 + offer if not ready)
    POST /delta/v1/blobs/{sha256}/ranges                zstd body, Edgedepot-Payload-Sha256
    POST /delta/v1/blobs/{sha256}/hashes?block_size=N   sub-block hashes of the ranges asked for
    GET  /delta/v1/blobs/{target}/offer?basis={sha256}  JSON: what is ready (patch, signature)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from aiohttp import web

from cache_node.answers import BadRequest, BlobAnswer, BytesAnswer, ServiceError
from cache_node.delta_service import DeltaService, ServedFile
from cache_node.responses import send_answer
from distro.digests import is_sha256_hex
from syncer.delta_wire import (
    API_PREFIX,
    HASHES_TYPE,
    PATCH_TYPE,
    PAYLOAD_LENGTH_HEADER,
    PAYLOAD_SHA256_HEADER,
    SIGNATURE_TYPE,
    ZSTD_TYPE,
)

MAX_RANGES_BODY = 64 << 20
_CHUNK = 1 << 18

ServiceFor = Callable[[web.Request], DeltaService]
NAMESPACE = "delta"


def _sha(request: web.Request, key: str = "sha256") -> str:
    value = request.match_info[key]
    if not is_sha256_hex(value):
        raise BadRequest(f"not a sha256: {key}", code="bad_digest")
    return value


def _block_size(request: web.Request) -> int | None:
    raw = request.query.get("block_size")
    if raw is None:
        return None
    if not raw.isdigit():
        raise BadRequest("block_size must be an integer", code="bad_block_size")
    return int(raw)


def add_delta_routes(app: web.Application, service_for_request: ServiceFor) -> None:
    """Register the ``/delta/v1/`` routes on ``app``."""

    async def send(request: web.Request, served: ServedFile, content_type: str
                   ) -> web.StreamResponse:
        """A content-addressed file: its Repr-Digest, Range, cacheable forever."""
        answer = BlobAnswer(served.path, served.size, served.sha256, content_type,
                            immutable=True)
        return await send_answer(request, answer, NAMESPACE,
                                 service_for_request(request).metrics)

    async def get_blob(request: web.Request) -> web.StreamResponse:
        service = service_for_request(request)
        return await send(request, service.blob(_sha(request)), "application/octet-stream")

    async def get_signature(request: web.Request) -> web.StreamResponse:
        sha = _sha(request)
        block_size = _block_size(request)
        service = service_for_request(request)
        return await send(request, await service.signature(sha, block_size), SIGNATURE_TYPE)

    async def get_patch(request: web.Request) -> web.StreamResponse:
        target = _sha(request)
        basis = request.query.get("basis", "")
        if not is_sha256_hex(basis):
            raise BadRequest("query parameter basis must be a sha256 hex digest",
                             code="bad_basis")
        service = service_for_request(request)
        if request.query.get("wait") == "0":  # only a patch that is ready, else the offer
            ready = service.ready_patch(target, basis)
            if ready is None:
                service.metrics.requests.inc(NAMESPACE)
                return web.json_response(service.offer(target, basis).to_json(), status=409,
                                         headers={"Cache-Control": "no-store"})
            return await send(request, ready, PATCH_TYPE)
        return await send(request, await service.patch(target, basis), PATCH_TYPE)

    async def get_offer(request: web.Request) -> web.StreamResponse:
        target = _sha(request)
        basis = request.query.get("basis", "")
        if not is_sha256_hex(basis):
            raise BadRequest("query parameter basis must be a sha256 hex digest",
                             code="bad_basis")
        service = service_for_request(request)
        service.metrics.requests.inc(NAMESPACE)
        return web.json_response(service.offer(target, basis).to_json(),
                                 headers={"Cache-Control": "no-store"})

    async def post_ranges(request: web.Request) -> web.StreamResponse:
        sha = _sha(request)
        if request.content_length is not None and request.content_length > MAX_RANGES_BODY:
            raise ServiceError("ranges request body too large", 413)
        body = await request.read()
        service = service_for_request(request)
        payload = await service.ranges(sha, body)
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
                    service.metrics.served_bytes.inc(NAMESPACE, len(chunk))
            await response.write_eof()
            return response
        finally:
            payload.release()

    async def post_hashes(request: web.Request) -> web.StreamResponse:
        sha = _sha(request)
        sub_block = _block_size(request)
        if sub_block is None:
            raise BadRequest("block_size (the sub-block size) is required",
                             code="bad_block_size")
        if request.content_length is not None and request.content_length > MAX_RANGES_BODY:
            raise ServiceError("hashes request body too large", 413)
        body = await request.read()
        service = service_for_request(request)
        data = await service.sub_hashes(sha, body, sub_block)
        answer = BytesAnswer(data, HASHES_TYPE, hashlib.sha256(data).hexdigest())
        return await send_answer(request, answer, NAMESPACE, service.metrics)

    prefix = API_PREFIX
    app.router.add_get(prefix + "/blobs/{sha256}", get_blob)
    app.router.add_get(prefix + "/blobs/{sha256}/signature", get_signature)
    app.router.add_get(prefix + "/blobs/{sha256}/patch", get_patch)
    app.router.add_post(prefix + "/blobs/{sha256}/ranges", post_ranges)
    app.router.add_post(prefix + "/blobs/{sha256}/hashes", post_hashes)
    app.router.add_get(prefix + "/blobs/{sha256}/offer", get_offer)
