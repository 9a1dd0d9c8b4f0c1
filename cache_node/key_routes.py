"""`/keys/`: the public key that signs this node's repositories, for sites to pin.

    GET /keys/repository.gpg   binary OpenPGP key (apt: signed-by=/usr/share/keyrings/x.gpg)
    GET /keys/repository.asc   the same key, ASCII-armored
    GET /keys/                 {"fingerprint": ..., "binary": ..., "armored": ...}

Every answer carries `X-Edgedepot-Key-Fingerprint`, computed from the key bytes served. An
origin serves the key it signs with; a cache serves its upstream's (404 when there is none).
"""

from __future__ import annotations

from aiohttp import web

from cache_node.answers import NotFound, ServiceError
from cache_node.config import NodeConfig
from cache_node.keys import ARMORED_NAME, BINARY_NAME, KEY_DIR, KeyService, PublicKey
from distro.debian_repo import SigningKey
from distro.errors import EdgedepotError

KEY_SERVICE: web.AppKey[KeyService] = web.AppKey("key_service", KeyService)
FINGERPRINT_HEADER = "X-Edgedepot-Key-Fingerprint"


def key_service(app: web.Application) -> KeyService:
    """The app's key service (its `.fingerprint` is what the status page and /healthz show)."""
    return app[KEY_SERVICE]


async def _key(request: web.Request) -> tuple[PublicKey, dict[str, str]]:
    try:
        key, stale = await request.app[KEY_SERVICE].current()
    except EdgedepotError as exc:
        raise ServiceError(str(exc), exc.http_status) from None
    if key is None:
        raise NotFound("this node's repositories are not signed by an edgedepot key")
    headers = {FINGERPRINT_HEADER: key.fingerprint, "ETag": f'"{key.sha256}"',
               "Cache-Control": "no-cache"}
    if stale:
        headers["X-Edgedepot-Stale"] = "1"
    return key, headers


async def _binary(request: web.Request) -> web.Response:
    key, headers = await _key(request)
    return web.Response(body=key.data, content_type="application/pgp-keys", headers=headers)


async def _armored(request: web.Request) -> web.Response:
    key, headers = await _key(request)
    return web.Response(body=key.armored, content_type="application/pgp-keys", headers=headers)


async def _index(request: web.Request) -> web.Response:
    key, headers = await _key(request)
    body = {"fingerprint": key.fingerprint, "binary": f"/{KEY_DIR}/{BINARY_NAME}",
            "armored": f"/{KEY_DIR}/{ARMORED_NAME}", "sha256": key.sha256}
    return web.json_response(body, headers=headers)


def add_key_routes(app: web.Application, config: NodeConfig,
                   signing_key: SigningKey | None) -> KeyService:
    """Register `/keys/...`; the service starts and stops with the app."""
    service = KeyService(config, signing_key)
    app[KEY_SERVICE] = service

    async def start(_: web.Application) -> None:
        await service.start()

    async def stop(_: web.Application) -> None:
        await service.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get(f"/{KEY_DIR}/{BINARY_NAME}", _binary)
    app.router.add_get(f"/{KEY_DIR}/{ARMORED_NAME}", _armored)
    app.router.add_get(f"/{KEY_DIR}/", _index)
    return service
