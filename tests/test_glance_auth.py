"""GlanceAuthorizer: per-token answers cached for the ttl, admin checks, offline policies."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from cache_node.answers import NotFound, ServiceError
from cache_node.glance_auth import (
    Caller,
    Forbidden,
    GlanceAuthorizer,
    ListScope,
    Unauthorized,
    UpstreamOffline,
)
from distro.glance_images import GlanceImage, ImageQueryError, list_page
from syncer.http_client import UpstreamUnavailable

PUBLIC = GlanceImage(id="p", name="public", visibility="public", owner="x")
PRIVATE_A = GlanceImage(id="a", name="private-a", visibility="private", owner="proj-a")


@dataclass
class FakeSource:
    """Project A sees both images, project B only the public one; 'admin' is an admin."""

    down: bool = False
    calls: list[str] = field(default_factory=list)

    def _check(self, caller: Caller) -> None:
        self.calls.append(caller.token or "")
        if self.down:
            raise UpstreamUnavailable("http://upstream/", "connection refused")
        if caller.token == "bad":
            raise Unauthorized("bad token")

    async def fetch_image(self, caller: Caller, image_id: str) -> GlanceImage:
        self._check(caller)
        visible = {"p": PUBLIC, "a": PRIVATE_A if caller.token == "tok-a" else None}
        image = visible.get(image_id)
        if image is None:
            raise NotFound(image_id)
        return image

    async def fetch_list(self, caller: Caller, scope: ListScope) -> list[GlanceImage]:
        self._check(caller)
        return [PRIVATE_A, PUBLIC] if caller.token == "tok-a" else [PUBLIC]

    async def fetch_is_admin(self, caller: Caller) -> bool:
        self._check(caller)
        return caller.token == "admin"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _auth(policy: str = "public") -> tuple[GlanceAuthorizer, FakeSource, Clock]:
    source, clock = FakeSource(), Clock()
    return GlanceAuthorizer(source, 30.0, policy, clock), source, clock


def test_answers_are_cached_per_token_for_the_ttl() -> None:
    auth, source, clock = _auth()

    async def run() -> None:
        a, b = Caller("tok-a"), Caller("tok-b")
        assert (await auth.image(a, "a", None)).image == PRIVATE_A
        assert (await auth.image(a, "a", None)).image == PRIVATE_A
        assert source.calls == ["tok-a"]
        with pytest.raises(ServiceError) as exc:
            await auth.image(b, "a", PRIVATE_A)  # cached here, still not B's
        assert exc.value.status == 404
        with pytest.raises(ServiceError):
            await auth.image(b, "a", PRIVATE_A)
        assert source.calls == ["tok-a", "tok-b"]  # the denial is cached too
        clock.now = 31
        await auth.image(a, "a", None)
        assert source.calls == ["tok-a", "tok-b", "tok-a"]
        with pytest.raises(Unauthorized):
            await auth.image(Caller("bad"), "p", PUBLIC)

    asyncio.run(run())


@pytest.mark.parametrize("policy", ["public", "cached", "none"])
def test_offline_policies(policy: str) -> None:
    auth, source, clock = _auth(policy)

    async def run() -> None:
        a = Caller("tok-a")
        await auth.image(a, "a", None)
        await auth.listing(a, ListScope(), [])
        source.down = True
        clock.now = 100  # every answer expired
        if policy == "none":
            with pytest.raises(UpstreamOffline):
                await auth.image(a, "p", PUBLIC)
            with pytest.raises(UpstreamOffline):
                await auth.listing(a, ListScope(), [PUBLIC, PRIVATE_A])
            return
        decision = await auth.image(a, "p", PUBLIC)
        assert decision.offline and decision.image == PUBLIC
        with pytest.raises(UpstreamOffline):
            await auth.image(a, "p", None)  # nothing cached: nothing to serve
        listing = await auth.listing(a, ListScope(), [PUBLIC, PRIVATE_A])
        assert listing.offline
        if policy == "public":
            with pytest.raises(UpstreamOffline):
                await auth.image(a, "a", PRIVATE_A)
            assert listing.images == (PUBLIC,)
        else:  # "cached": what this token was confirmed to see before
            assert (await auth.image(a, "a", PRIVATE_A)).image == PRIVATE_A
            with pytest.raises(UpstreamOffline):
                await auth.image(Caller("tok-b"), "a", PRIVATE_A)
            assert set(listing.images) == {PUBLIC, PRIVATE_A}

    asyncio.run(run())


def test_admin_checks() -> None:
    auth, source, _clock = _auth()

    async def run() -> None:
        with pytest.raises(Unauthorized):
            await auth.require_admin(Caller(None))
        with pytest.raises(Forbidden):
            await auth.require_admin(Caller("tok-a"))
        await auth.require_admin(Caller("admin"))
        await auth.require_admin(Caller("admin"))
        assert source.calls.count("admin") == 1
        source.down = True
        auth._cache.ttl = 0  # expired: the default policy does not trust a stale admin answer
        with pytest.raises(UpstreamOffline):
            await auth.require_admin(Caller("other-admin"))

    asyncio.run(run())


def test_list_page_semantics() -> None:
    images = [GlanceImage(id=f"id{n}", name=f"img{n % 3}", size=n, created_at=f"2026-01-0{n}")
              for n in range(1, 6)]
    page = list_page(images, [("limit", "2"), ("sort_key", "size"), ("sort_dir", "asc")])
    assert [i.id for i in page.images] == ["id1", "id2"]
    assert page.first == "/v2/images?limit=2&sort_key=size&sort_dir=asc"
    assert page.next == "/v2/images?limit=2&sort_key=size&sort_dir=asc&marker=id2"
    page = list_page(images, [("limit", "2"), ("sort_key", "size"), ("sort_dir", "asc"),
                              ("marker", "id4")])
    assert [i.id for i in page.images] == ["id5"] and page.next is None
    assert [i.id for i in list_page(images, [("name", "img1")]).images] == ["id4", "id1"]
    assert [i.id for i in list_page(images, [("size_min", "4")]).images] == ["id5", "id4"]
    for bad in ([("marker", "nope")], [("limit", "-1")], [("sort_dir", "up")],
                [("sort", "name"), ("sort_key", "name")], [("protected", "maybe")]):
        with pytest.raises(ImageQueryError):
            list_page(images, bad)
