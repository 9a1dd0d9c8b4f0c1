"""Where a node's images come from: the origin's image directory or a Glance v2 API over HTTP.

  * `DirectoryBackend`: the origin's own image directory (see `distro.glance_images`);
  * `HttpGlanceBackend`: a real Glance API (origin, `--glance-upstream URL`) or the next
    node's `/glance` API (cache role); the caller's `X-Auth-Token` is passed through.

Besides the Glance v2 API, an edgedepot node answers
`GET /glance/edgedepot/v1/images/{id}/digest` -> `{"sha256": "<hex>", "size": N}` (authorized
like `/file`): the content address of the image's data, which a real Glance does not publish
(it has md5 and sha512 only). A cache uses it to fetch a new image as a delta
(`/delta/v1/blobs/<sha256>`) against an older one of the same family; see `glance_delta`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp

from cache_node.answers import BadRequest, NotFound, ServiceError
from cache_node.config import NodeConfig
from cache_node.glance_auth import Caller, Forbidden, ListScope, Unauthorized
from distro.glance_images import (
    LIST_LIMIT_MAX,
    DigestMemo,
    DirectoryImage,
    GlanceImage,
    ImageDirectory,
    ImageRecordError,
    family_key,
    load_image_directory,
)
from syncer.http_client import (
    HttpClient,
    UpstreamError,
    UpstreamNotFound,
    UpstreamUnavailable,
)

SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageDigest:
    """The content address of an image's data, and the record digests (md5 `checksum`,
    `os_hash_value`) the node answering verified those bytes against: what it vouches for."""

    sha256: str
    size: int
    md5: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None

    @staticmethod
    def of(sha256: str, size: int, image: GlanceImage) -> ImageDigest:
        return ImageDigest(sha256, size, image.checksum, image.os_hash_algo, image.os_hash_value)

    def to_json(self) -> dict[str, object]:
        return {"sha256": self.sha256, "size": self.size, "md5": self.md5,
                "os_hash_algo": self.os_hash_algo, "os_hash_value": self.os_hash_value}


@dataclass(frozen=True)
class LocalSource:
    path: Path
    sha256: str


@dataclass(frozen=True)
class RemoteSource:
    """Where to fetch an image's data, with whose token, and whether the upstream is an
    edgedepot tier whose `Repr-Digest` vouches for the record digests."""

    url: str
    headers: tuple[tuple[str, str], ...]
    client: HttpClient
    vouches: bool


class Backend(Protocol):
    """Where a node's image records and data come from; also what authorizes callers."""

    async def fetch_image(self, caller: Caller, image_id: str) -> GlanceImage: ...

    async def fetch_list(self, caller: Caller, scope: ListScope) -> list[GlanceImage]: ...

    async def fetch_is_admin(self, caller: Caller) -> bool: ...

    async def fetch_digest(self, caller: Caller, image_id: str) -> ImageDigest | None: ...

    def source(self, caller: Caller, image: GlanceImage) -> LocalSource | RemoteSource: ...

    def path_for_digest(self, sha256: str) -> Path | None: ...

    def local_sha256(self, image_id: str) -> str | None:
        """The sha256 of an image's data when it is a file of this node's own (no request)."""
        ...

    def describe(self) -> str:
        """Where the images come from, for the status page."""
        ...

    def reconfigure(self, config: NodeConfig) -> bool:
        """Take a reloaded configuration; True when the images now come from elsewhere."""
        ...


class DirectoryBackend:
    """The origin's image directory; tokens from its `tokens.toml` (Glance's visibility rules)."""

    def __init__(self, root: Path, memo_path: Path) -> None:
        self.root = root
        self._memo = DigestMemo(memo_path)
        self._dir = ImageDirectory((), ())
        self._stamp: tuple[int, ...] = ()
        self._lock = asyncio.Lock()

    async def refresh(self) -> ImageDirectory:
        """Re-read the directory when any file in it changed (records, data, tokens)."""
        stamp = tuple(sorted(hash((p.name, st.st_mtime_ns, st.st_size))
                             for p in self.root.iterdir() for st in (p.stat(),)))
        if stamp != self._stamp:
            async with self._lock:
                if stamp != self._stamp:
                    try:
                        self._dir = await asyncio.to_thread(load_image_directory, self.root,
                                                            self._memo)
                    except ImageRecordError as exc:
                        raise ServiceError(f"image directory is invalid: {exc}", 500) from None
                    self._stamp = stamp
        return self._dir

    async def _who(self, caller: Caller) -> tuple[str | None, bool]:
        directory = await self.refresh()
        if not caller.token:
            return None, False
        grant = directory.grant(caller.token)
        if grant is None:
            raise Unauthorized("the token is not valid")
        return grant.project, grant.is_admin

    @staticmethod
    def _may_see(image: GlanceImage, project: str | None, admin: bool) -> bool:
        return (admin or image.visibility in ("public", "community")
                or (project is not None and image.owner == project)
                or (image.visibility == "shared" and project in image.members))

    def latest_versions(self) -> list[tuple[str, str, str, str]]:
        """Per image family with two or more images: (newest image id, its sha256, the image
        id before it, that one's sha256), the pairs whose patches an origin prepares."""
        by_family: dict[str, list[DirectoryImage]] = {}
        for entry in self._dir.images:
            if entry.image.status == "active" and entry.data_path.is_file():
                by_family.setdefault(family_key(entry.image), []).append(entry)
        pairs = []
        for members in by_family.values():
            if len(members) < 2:
                continue
            members.sort(key=lambda e: (e.image.created_at or "", e.image.id), reverse=True)
            newest, previous = members[0], members[1]
            if newest.sha256 != previous.sha256:
                pairs.append((newest.image.id, newest.sha256, previous.image.id,
                              previous.sha256))
        return pairs

    async def fetch_image(self, caller: Caller, image_id: str) -> GlanceImage:
        project, admin = await self._who(caller)
        entry = self._dir.find(image_id)
        if entry is None or not self._may_see(entry.image, project, admin):
            raise NotFound(f"No image found with ID {image_id}")
        return entry.image

    async def fetch_list(self, caller: Caller, scope: ListScope) -> list[GlanceImage]:
        project, admin = await self._who(caller)
        out = []
        for entry in self._dir.images:
            image = entry.image
            if not self._may_see(image, project, admin):
                continue
            if scope.visibility in (None, "all"):
                if (scope.visibility is None and image.visibility == "community"
                        and image.owner != project and not admin):
                    continue
            elif image.visibility != scope.visibility:
                continue
            hidden = scope.os_hidden == "true"
            if image.os_hidden != hidden:
                continue
            out.append(image)
        return out

    async def fetch_is_admin(self, caller: Caller) -> bool:
        return (await self._who(caller))[1]

    def describe(self) -> str:
        return str(self.root)

    def reconfigure(self, config: NodeConfig) -> bool:
        return False  # another directory needs a restart

    def path_for_digest(self, sha256: str) -> Path | None:
        """The data file of a directory image with this sha256 (for the delta endpoints)."""
        for entry in self._dir.images:
            if entry.sha256 == sha256 and entry.data_path.is_file():
                return entry.data_path
        return None

    async def fetch_digest(self, caller: Caller, image_id: str) -> ImageDigest | None:
        image = await self.fetch_image(caller, image_id)
        entry = self._dir.find(image_id)
        if entry is None or image.size is None:
            return None
        return ImageDigest.of(entry.sha256, image.size, image)

    def local_sha256(self, image_id: str) -> str | None:
        entry = self._dir.find(image_id)
        return entry.sha256 if entry is not None else None

    def source(self, caller: Caller, image: GlanceImage) -> LocalSource | RemoteSource:
        entry = self._dir.find(image.id)
        if entry is None:
            raise NotFound(f"No image found with ID {image.id}")
        return LocalSource(entry.data_path, entry.sha256)


DIGEST_HEADER = "X-Edgedepot-Image-Sha256"  # on a record: the sha256 of its data, if known
KNOWN_DIGESTS = 4096  # records' data digests remembered from an edgedepot upstream


class HttpGlanceBackend:
    """A Glance v2 API over HTTP: a real Glance, or the next node's `/glance/` API."""

    def __init__(self, base_url: str, client: HttpClient, vouches: bool) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.client = client
        self.vouches = vouches  # an edgedepot tier (cache role), not a real Glance
        # image id -> (sha256 of its data, the record it came with), from `DIGEST_HEADER`:
        # a delta fetch then needs no digest request (an image's data never changes)
        self._known: OrderedDict[str, tuple[str, GlanceImage]] = OrderedDict()

    async def _get_json(self, caller: Caller, path: str,
                        headers_seen: dict[str, str] | None = None) -> Any:
        url = self.base_url + path.lstrip("/")
        try:
            async with self.client.open(url, {**caller.upstream_headers(),
                                              "Accept": "application/json"}) as resp:
                body = await resp.read()
                if headers_seen is not None:
                    headers_seen.update(resp.headers)
                self.client.count_bytes(len(body))
                if resp.status == 401:
                    raise Unauthorized("the upstream refused the token (401)")
                if resp.status == 403:
                    raise Forbidden("the upstream refused access (403)")
                if resp.status == 400:
                    raise BadRequest(f"upstream: {body[:200].decode(errors='replace')}")
                if resp.status != 200:
                    raise UpstreamUnavailable(url, f"answered {resp.status}")
        except UpstreamNotFound:
            raise NotFound(f"not found upstream: {path}") from None
        except aiohttp.ClientPayloadError as exc:
            raise UpstreamUnavailable(url, f"body interrupted: {exc}") from None
        try:
            return json.loads(body)
        except ValueError:
            raise ServiceError(f"upstream sent malformed JSON for {path}", 502) from None

    async def fetch_image(self, caller: Caller, image_id: str) -> GlanceImage:
        headers: dict[str, str] = {}
        doc = await self._get_json(caller, f"v2/images/{image_id}", headers)
        try:
            image = GlanceImage.from_json(doc)
        except ImageRecordError as exc:
            raise ServiceError(f"upstream image record is malformed: {exc}", 502) from None
        sha256 = headers.get(DIGEST_HEADER, "")
        if self.vouches and SHA256_RE.fullmatch(sha256) and image.id == image_id:
            self._known[image_id] = (sha256, image)
            self._known.move_to_end(image_id)
            while len(self._known) > KNOWN_DIGESTS:
                self._known.popitem(last=False)
        return image

    async def fetch_list(self, caller: Caller, scope: ListScope) -> list[GlanceImage]:
        path = "v2/images?" + urlencode([("limit", str(LIST_LIMIT_MAX)), *scope.query()])
        out: list[GlanceImage] = []
        for _ in range(10_000):
            doc = await self._get_json(caller, path)
            if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
                raise ServiceError("upstream image list is malformed", 502)
            try:
                out.extend(GlanceImage.from_json(d) for d in doc["images"])
            except (ImageRecordError, TypeError) as exc:
                raise ServiceError(f"upstream image list is malformed: {exc}", 502) from None
            nxt = doc.get("next")
            if not doc["images"] or not isinstance(nxt, str):
                break
            path = nxt.lstrip("/")
        return out

    async def fetch_is_admin(self, caller: Caller) -> bool:
        """Only admins may read the cache-management API (Glance's `manage_image_cache`)."""
        try:
            await self._get_json(caller, "v2/cache")
        except (Unauthorized, Forbidden, NotFound):
            return False
        return True

    async def fetch_digest(self, caller: Caller, image_id: str) -> ImageDigest | None:
        """The sha256 of an image's data as the next edgedepot node knows it
        (`GET {base}edgedepot/v1/images/{id}/digest`, unless the record came with it);
        None when it cannot tell (e.g. a node without that endpoint, or a real Glance)."""
        known = self._known.get(image_id)
        if known is not None and known[1].size is not None:
            return ImageDigest.of(known[0], known[1].size, known[1])
        try:
            doc = await self._get_json(caller, f"edgedepot/v1/images/{image_id}/digest")
        except (ServiceError, UpstreamError):  # NotFound, refusals, unreachable, timeout
            return None
        if not isinstance(doc, dict):
            return None
        sha256, size = doc.get("sha256"), doc.get("size")
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256) \
                or not isinstance(size, int) or isinstance(size, bool):
            return None
        md5, algo, value = (doc.get(k) for k in ("md5", "os_hash_algo", "os_hash_value"))
        return ImageDigest(sha256, size, md5 if isinstance(md5, str) else None,
                           algo if isinstance(algo, str) else None,
                           value if isinstance(value, str) else None)

    def source(self, caller: Caller, image: GlanceImage) -> LocalSource | RemoteSource:
        return RemoteSource(f"{self.base_url}v2/images/{image.id}/file",
                            tuple(caller.upstream_headers().items()), self.client, self.vouches)

    def path_for_digest(self, sha256: str) -> Path | None:
        return None  # data of a remote Glance lives in the store once fetched

    def local_sha256(self, image_id: str) -> str | None:
        return None

    def describe(self) -> str:
        return self.base_url

    def reconfigure(self, config: NodeConfig) -> bool:
        """Follow the upstream (the next node, or the origin's Glance) to a new URL; requests
        already running finish where they started."""
        base = config.glance_upstream
        if base is None or base.rstrip("/") + "/" == self.base_url:
            return False
        self.base_url = base.rstrip("/") + "/"
        return True


__all__ = ["DIGEST_HEADER", "Backend", "DirectoryBackend", "HttpGlanceBackend", "ImageDigest",
           "LocalSource", "RemoteSource"]
