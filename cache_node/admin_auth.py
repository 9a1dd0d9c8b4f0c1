"""Who may call what: the client allow-list and the admin bearer token, as one middleware.

Every request first passes `allow` (config): a client outside every listed network gets one
403 JSON error, whatever it asked for. Then the route decides:

* **Admin** (`/admin/...`: plans, `has`, `refresh`, `served`): with an admin token configured,
  `Authorization: Bearer <token>` is required: none (or another scheme) answers 401 with
  `WWW-Authenticate: Bearer`, a wrong one 403. Without a token configured the node does not
  stay open across a network: admin calls answer only loopback clients, and a loopback request
  that carries proxy headers (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) counts as remote,
  so a reverse proxy on the same host does not open them to everyone.
* **Glance cache management** (`/glance/v2/cache...`): a valid bearer admin token lets the
  caller in as this node's admin; without a bearer token the Glance rule applies as before (the
  upstream confirms the caller's `X-Auth-Token` is a Glance admin), so `glance cache-*` clients
  and the caches below this node (which ask it exactly that) keep working. A wrong bearer token
  is 403. The bearer token is never forwarded upstream.
* Everything else is open: apt, pip, the Glance read API, `/keys/`, `/healthz`, `/metrics`
  (the status page shows the same counters) and `/delta/v1/` (content-addressed reads of blobs
  the node already holds, which caches call on their upstream in normal operation; who may
  reach them is decided by `allow` and, between tiers, client certificates).

Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from enum import Enum

from aiohttp import web
from aiohttp.typedefs import Handler

from cache_node.config import NodeConfig
from cache_node.responses import error_response

BEARER_CHALLENGE = 'Bearer realm="edgedepot"'
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


class Access(Enum):
    OPEN = "open"
    ADMIN = "admin"
    GLANCE_ADMIN = "glance-admin"


def classify(path: str) -> Access:
    """Which rule a request path falls under (the router matches the same decoded path)."""
    if path == "/admin" or path.startswith("/admin/"):
        return Access.ADMIN
    if path == "/glance/v2/cache" or path.startswith("/glance/v2/cache/"):
        return Access.GLANCE_ADMIN
    return Access.OPEN


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def bearer_token(request: web.Request) -> str | None:
    """The token of an `Authorization: Bearer ...` header (scheme case-insensitive)."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class AccessPolicy:
    """The allow-list and admin token in force; `update()` swaps in a reloaded config."""

    def __init__(self, config: NodeConfig) -> None:
        self.update(config)

    def update(self, config: NodeConfig) -> None:
        self.config = config
        token = config.admin.token
        self._token_digest = _digest(token) if token is not None else None

    @property
    def has_token(self) -> bool:
        return self._token_digest is not None

    def token_matches(self, given: str) -> bool:
        """Constant time whatever the lengths: both sides are hashed first."""
        return self._token_digest is not None and \
            hmac.compare_digest(_digest(given), self._token_digest)

    def refusal(self, request: web.Request) -> web.Response | None:
        """The error this request gets, or None when it may go on."""
        remote = request.remote or ""
        if not self.config.client_allowed(remote):
            return error_response(403, f"client {remote or '(unknown)'} is not in this node's "
                                  "allow list", code="client_not_allowed")
        access = classify(request.path)
        if access is Access.OPEN:
            return None
        given = bearer_token(request)
        if access is Access.GLANCE_ADMIN:
            if not self.has_token:
                return None  # the Glance rule: the upstream vouches for the X-Auth-Token
            if given is None:
                return None if request.headers.get("X-Auth-Token") else _challenge()
            if self.token_matches(given):
                request[NODE_ADMIN_KEY] = True
                return None
            return _wrong_token()
        if not self.has_token:
            if is_loopback(remote) and not any(h in request.headers for h in PROXY_HEADERS):
                return None
            return error_response(
                403, "admin endpoints answer only loopback clients while this node has no "
                "admin token (set admin.token_file or EDGEDEPOT_ADMIN_TOKEN)",
                code="admin_loopback_only")
        if given is None:
            return _challenge()
        if not self.token_matches(given):
            return _wrong_token()
        return None


def _challenge() -> web.Response:
    return error_response(401, "this endpoint needs the node's admin token "
                          "(Authorization: Bearer TOKEN)",
                          headers={"WWW-Authenticate": BEARER_CHALLENGE})


def _wrong_token() -> web.Response:
    return error_response(403, "the admin token is not valid for this node",
                          headers={"WWW-Authenticate":
                                   f'{BEARER_CHALLENGE}, error="invalid_token"'})


NODE_ADMIN_KEY: web.RequestKey[bool] = web.RequestKey("edgedepot_node_admin", bool)
ACCESS_POLICY: web.AppKey[AccessPolicy] = web.AppKey("access_policy", AccessPolicy)


def is_node_admin(request: web.Request) -> bool:
    """The request presented this node's admin token (the Glance API lets it manage caches)."""
    return bool(request.get(NODE_ADMIN_KEY, False))


def install_access_control(app: web.Application, config: NodeConfig) -> AccessPolicy:
    """Put the allow-list and token checks in front of every route (inserted as the outermost
    middleware so far; install the access log after it so refusals are logged too)."""
    policy = AccessPolicy(config)
    app[ACCESS_POLICY] = policy

    @web.middleware
    async def access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = policy.refusal(request)
        if refusal is not None:
            return refusal
        return await handler(request)

    app.middlewares.insert(0, access_control)
    return policy


def startup_warning(config: NodeConfig) -> str | None:
    """One line for the operator when admin endpoints are unprotected on a network listener."""
    if config.admin.token is not None:
        return None
    hosts = [a.host for a in (config.listen, config.tls.listen) if a is not None]
    if all(is_loopback(h) for h in hosts):
        return None
    return ("no admin token is configured (admin.token_file or EDGEDEPOT_ADMIN_TOKEN): "
            "admin endpoints answer loopback clients only")
