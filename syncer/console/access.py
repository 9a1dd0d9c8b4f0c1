"""Who may see the console: a viewer token (Bearer header, or a session cookie set by the
login form) guards the page and its API; sites reach only their bootstrap script and the
report route, with the inventory's onboarding token.

The console shows the whole fleet (addresses, health, what every site installs), so on a
network it needs a token, and a token needs TLS: `check_exposure` refuses a non-loopback
listener without both, unless the operator says the management network is isolated.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

COOKIE = "edgedepot_console"
OPEN_PREFIXES = ("/static/",)  # the page's script and styles: nothing about the fleet


class ExposureError(ValueError):
    """A listener that would show the fleet, or send its token, to anyone on a network."""


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_exposure(host: str, token: bool, tls: bool, open_to_network: bool) -> None:
    """Refuse (one line) a console reachable from a network without a token over TLS."""
    if is_loopback(host) or open_to_network:
        return
    if not token:
        raise ExposureError(
            f"--listen {host} is reachable from the network and the console shows the whole "
            "fleet: give --token-file (and --tls-cert/--tls-key), or --open-to-network on an "
            "isolated management network")
    if not tls:
        raise ExposureError(
            f"--listen {host} without --tls-cert/--tls-key would carry the viewer token in "
            "clear: add a certificate, or --open-to-network on an isolated management network")


@dataclass(frozen=True)
class ConsoleAccess:
    """The viewer token (None: no login, e.g. on loopback) and whether the listener is TLS."""

    token: str | None = field(default=None, repr=False)
    secure: bool = False

    def session(self) -> str:
        """The cookie value: derived from the token, so the token itself never sits in a
        browser's cookie store and a new token ends every session."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"edgedepot console session",
                        hashlib.sha256).hexdigest()

    def viewer(self, request: web.Request) -> bool:
        """Whether the request may see the fleet (constant-time comparisons)."""
        if self.token is None:
            return True
        if bearer_matches(request, self.token):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session().encode())


def bearer_matches(request: web.Request, token: str) -> bool:
    sent = request.headers.get("Authorization", "")
    return hmac.compare_digest(sent.encode(), f"Bearer {token}".encode())


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgedepot console: sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;background:#f4f6f8;display:flex;
justify-content:center;padding-top:12vh}}form{{background:#fff;padding:2em;border-radius:8px;
box-shadow:0 1px 4px #0002;min-width:20em}}input{{width:100%;padding:.5em;margin:.5em 0 1em;
box-sizing:border-box}}button{{padding:.5em 1.5em}}.err{{color:#b00020}}</style></head>
<body><form method="post" action="/login"><h2>edgedepot console</h2>{message}
<label for="token">Viewer token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus>
<button type="submit">Sign in</button></form></body></html>
"""


def login_page(message: str = "", status: int = 200) -> web.Response:
    shown = f'<p class="err">{html.escape(message)}</p>' if message else ""
    return web.Response(text=LOGIN_PAGE.format(message=shown), status=status,
                        content_type="text/html",
                        headers={"Cache-Control": "no-store"})


def access_middleware(access: ConsoleAccess, site_routes: Callable[[str], bool]
                      ) -> Middleware:
    """Viewers need the token; `site_routes(path)` are left to their handlers (they check
    the onboarding token themselves); the login form and static assets are open."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if access.token is None or path == "/login" or path.startswith(OPEN_PREFIXES) \
                or site_routes(path) or access.viewer(request):
            return await handler(request)
        if path == "/" and request.method == "GET":
            return login_page(status=401)
        sent = "Authorization" in request.headers
        status, code = (403, "forbidden") if sent else (401, "unauthorized")
        return web.json_response(
            {"error": code, "message": "a valid viewer token is required"
             if sent else "this console needs its viewer token (Bearer, or sign in at /)"},
            status=status, headers={"WWW-Authenticate": "Bearer"} if not sent else None)

    return middleware


async def login(request: web.Request, access: ConsoleAccess) -> web.StreamResponse:
    """POST /login: the form's token, compared in constant time; a session cookie on success."""
    if access.token is None:
        return web.Response(status=303, headers={"Location": "/"})
    form = await request.post()
    given = form.get("token")
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(),
                                                             access.token.encode()):
        return login_page("That is not the viewer token.", status=403)
    response = web.Response(status=303, headers={"Location": "/", "Cache-Control": "no-store"})
    response.set_cookie(COOKIE, access.session(), httponly=True, samesite="Strict",
                        secure=access.secure, path="/")
    return response


__all__ = ["COOKIE", "ConsoleAccess", "ExposureError", "access_middleware", "bearer_matches",
           "check_exposure", "is_loopback", "login", "login_page"]
