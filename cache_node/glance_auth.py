"""Who may see which image: upstream answers cached per token, admin checks, offline policy.

Authorization stays with the origin. Before a node serves an image record or image bytes it
asks its upstream (a real Glance, the next node's `/glance` API, or the origin's own token
file) whether the caller's token may see that image. Answers are kept for `ttl` seconds per
(token, image); a token's listing and its admin status likewise. When the upstream cannot be
reached, the configured offline policy decides what may still be served from the cache:

    "public"  public and community images already cached (default)
    "cached"  additionally what this token was confirmed to see before (answers kept past ttl)
    "none"    nothing: every request answers 503

Tokens are never logged or stored: cache keys are their sha256.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from cache_node.answers import NotFound, ServiceError
from distro.glance_images import GlanceImage
from syncer.http_client import UpstreamTimeout, UpstreamUnavailable

OFFLINE_POLICIES = ("public", "none", "cached")
MAX_ENTRIES = 50_000
PUBLIC_VISIBILITIES = ("public", "community")


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class UpstreamOffline(ServiceError):
    """The upstream cannot confirm the caller's rights and the offline policy refuses."""

    status = 503


@dataclass(frozen=True)
class Caller:
    """The identity a request carries: the token it presented (if any), and whether it also
    presented this node's own admin token (`admin_auth`), which lets it manage the cache."""

    token: str | None
    node_admin: bool = False

    @property
    def key(self) -> str:
        if not self.token:
            return "anonymous"
        return hashlib.sha256(self.token.encode()).hexdigest()

    def upstream_headers(self) -> dict[str, str]:
        return {"X-Auth-Token": self.token} if self.token else {}


@dataclass(frozen=True)
class ListScope:
    """The listing parameters the upstream must apply itself (they decide visibility)."""

    visibility: str | None = None
    os_hidden: str | None = None
    member_status: str | None = None

    def query(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in (("visibility", self.visibility),
                                    ("os_hidden", self.os_hidden),
                                    ("member_status", self.member_status)) if v is not None]


class VisibilitySource(Protocol):
    """What an upstream answers about a caller (raises NotFound/Unauthorized/Forbidden, or
    UpstreamUnavailable/UpstreamTimeout when it cannot be reached)."""

    async def fetch_image(self, caller: Caller, image_id: str) -> GlanceImage: ...

    async def fetch_list(self, caller: Caller, scope: ListScope) -> list[GlanceImage]: ...

    async def fetch_is_admin(self, caller: Caller) -> bool: ...


@dataclass(frozen=True)
class ImageDecision:
    """The caller may see `image`; `offline` when the upstream could not be asked."""

    image: GlanceImage
    offline: bool = False


@dataclass(frozen=True)
class ListDecision:
    images: tuple[GlanceImage, ...]
    offline: bool = False


@dataclass(frozen=True)
class _Entry:
    value: object
    at: float


class _TTLCache:
    """Bounded LRU of answers; expired entries are kept (the "cached" offline policy)."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.clock = clock
        self._data: OrderedDict[tuple[str, ...], _Entry] = OrderedDict()

    def get(self, key: tuple[str, ...], allow_expired: bool = False) -> _Entry | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if not allow_expired and self.clock() - entry.at > self.ttl:
            return None
        self._data.move_to_end(key)
        return entry

    def clear(self) -> None:
        self._data.clear()

    def put(self, key: tuple[str, ...], value: object) -> None:
        self._data[key] = _Entry(value, self.clock())
        self._data.move_to_end(key)
        while len(self._data) > MAX_ENTRIES:
            self._data.popitem(last=False)


_DENIED = "denied"


class GlanceAuthorizer:
    """Asks the upstream, caches the answers, applies the offline policy."""

    def __init__(self, source: VisibilitySource, ttl: float, offline_policy: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if offline_policy not in OFFLINE_POLICIES:
            raise ValueError(f"unknown offline policy {offline_policy!r}")
        self.source = source
        self.offline_policy = offline_policy
        self._cache = _TTLCache(ttl, clock)

    def reconfigure(self, ttl: float, offline_policy: str) -> None:
        """A reload: answers already cached now expire after the new TTL."""
        if offline_policy not in OFFLINE_POLICIES:
            raise ValueError(f"unknown offline policy {offline_policy!r}")
        self._cache.ttl, self.offline_policy = ttl, offline_policy

    def forget(self) -> None:
        """Drop every cached answer (the upstream that gave them is no longer asked)."""
        self._cache.clear()

    async def image(self, caller: Caller, image_id: str,
                    cached_record: GlanceImage | None) -> ImageDecision:
        """May `caller` see `image_id`? Raises NotFound (not visible), 401, or 503 offline.

        `cached_record` is the record this node holds (used only when the upstream is down).
        """
        key = ("image", caller.key, image_id)
        entry = self._cache.get(key)
        if entry is not None:
            return self._from_entry(entry, image_id)
        try:
            image = await self.source.fetch_image(caller, image_id)
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            return self._offline_image(caller, image_id, cached_record, exc)
        except ServiceError as exc:
            if exc.status in (403, 404):
                self._cache.put(key, _DENIED)
                raise _not_found(image_id) from None
            raise
        self._cache.put(key, image)
        return ImageDecision(image)

    def _from_entry(self, entry: _Entry, image_id: str, offline: bool = False) -> ImageDecision:
        if isinstance(entry.value, GlanceImage):
            return ImageDecision(entry.value, offline)
        raise _not_found(image_id)

    def _offline_image(self, caller: Caller, image_id: str, cached: GlanceImage | None,
                       exc: Exception) -> ImageDecision:
        if self.offline_policy != "none" and cached is not None:
            if cached.visibility in PUBLIC_VISIBILITIES:
                return ImageDecision(cached, offline=True)
            if self.offline_policy == "cached":
                entry = self._cache.get(("image", caller.key, image_id), allow_expired=True)
                if entry is not None:
                    return self._from_entry(entry, image_id, offline=True)
        raise UpstreamOffline(
            f"upstream unreachable ({exc}); offline policy {self.offline_policy!r} does not "
            f"allow serving image {image_id} to this caller")

    async def listing(self, caller: Caller, scope: ListScope,
                      cached: Sequence[GlanceImage]) -> ListDecision:
        """The images `caller` may list under `scope` (before local filters and paging)."""
        key = ("list", caller.key, *(f"{k}={v}" for k, v in scope.query()))
        entry = self._cache.get(key)
        if entry is not None and isinstance(entry.value, tuple):
            return ListDecision(entry.value)
        try:
            images = tuple(await self.source.fetch_list(caller, scope))
        except (UpstreamUnavailable, UpstreamTimeout):
            return ListDecision(self._offline_list(caller, key, scope, cached), offline=True)
        self._cache.put(key, images)
        for image in images:  # a listed image is a visible image
            self._cache.put(("image", caller.key, image.id), image)
        return ListDecision(images)

    def _offline_list(self, caller: Caller, key: tuple[str, ...], scope: ListScope,
                      cached: Sequence[GlanceImage]) -> tuple[GlanceImage, ...]:
        if self.offline_policy == "none":
            raise UpstreamOffline(
                "upstream unreachable; offline policy 'none' serves no images")
        allowed: dict[str, GlanceImage] = {}
        wanted = scope.visibility
        for image in cached:
            listable = {"public": (None, "public", "all"), "community": ("community", "all")}
            if wanted in listable.get(image.visibility, ()):
                allowed[image.id] = image
        if self.offline_policy == "cached":
            cached_ids = {i.id for i in cached}
            entry = self._cache.get(key, allow_expired=True)
            if entry is not None and isinstance(entry.value, tuple):
                for image in entry.value:
                    if isinstance(image, GlanceImage) and image.id in cached_ids:
                        allowed.setdefault(image.id, image)
        return tuple(allowed.values())

    async def require_admin(self, caller: Caller) -> None:
        """Raise 401/403 unless `caller` is this node's admin or the upstream confirms it is a
        Glance admin."""
        if caller.node_admin:
            return
        if not caller.token:
            raise Unauthorized("the cache-management API needs an admin token")
        key = ("admin", caller.key)
        entry = self._cache.get(key)
        if entry is None:
            try:
                    admin = await self.source.fetch_is_admin(caller)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                stale = self._cache.get(key, allow_expired=True)
                if self.offline_policy == "cached" and stale is not None and stale.value is True:
                    return
                raise UpstreamOffline(f"upstream unreachable ({exc}); cannot confirm an "
                                      "admin token") from None
            self._cache.put(key, admin)
            entry = self._cache.get(key)
        if entry is None or entry.value is not True:
            raise Forbidden("the cache-management API needs an admin token")


def _not_found(image_id: str) -> NotFound:
    return NotFound(f"No image found with ID {image_id}")
