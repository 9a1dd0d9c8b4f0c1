"""Glance image records: the typed `GlanceImage`, the origin's image directory, schemas.

The origin's image directory (`cache-node serve --role origin --images DIR`):

    DIR/<stem>.json     one image record (JSON object), e.g.
                        {"id": "6d1c…-uuid", "name": "debian-12.4", "disk_format": "qcow2",
                         "container_format": "bare", "visibility": "public",
                         "owner": "project-a", "properties": {"os_distro": "debian"},
                         "tags": ["edge"], "min_disk": 0, "min_ram": 0, "protected": false,
                         "os_hidden": false, "members": ["project-b"], "data": "debian.qcow2"}
                        Only "name" is required. "id" defaults to a UUID derived from <stem>;
                        "data" (a file name in DIR) defaults to <stem>.img; "visibility"
                        defaults to "private"; "members" lists the projects
                        a "shared" image is shared with; "created_at" (ISO 8601) defaults to
                        the data file's modification time. Property values are strings.
    DIR/<stem>.img      the image data (any name given by "data")
    DIR/tokens.toml     who may see what (there is no Keystone in front of the directory):
                            [tokens."<token>"]
                            project = "project-a"
                            roles = ["member", "reader"]      # "admin" may manage caches
                        A request without a token is anonymous: it sees public and community
                        images only. An unknown token is refused (401).

The origin computes `size`, `checksum` (md5), `os_hash_algo` = "sha512", `os_hash_value`, and
the sha256 it publishes as `Repr-Digest` and at `/glance/edgedepot/v1/images/{id}/digest` (the
content-address of the data in every store; a cache's delta fetch of the next image of a
`family_key` asks for it, then the origin serves `/delta/v1/` for the directory's files). The
digests are memoised per (path, size, mtime) in `<store>/glance-origin-digests.json`, so a
restart does not hash again. The directory is re-read when any file in it changes.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HASH_CHUNK = 1 << 20
UUID_NAMESPACE = uuid.UUID("5b0c4a3e-8d2c-4e0f-9a57-0a1f3bde2c11")
VISIBILITIES = ("public", "private", "shared", "community")
STATUSES = ("queued", "saving", "active", "killed", "deleted", "uploading", "importing",
            "pending_delete", "deactivated")
BASE_FIELDS = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "checksum", "os_hash_algo",
    "os_hash_value", "owner", "size", "virtual_size", "container_format", "disk_format",
    "created_at", "updated_at", "tags", "direct_url", "min_ram", "min_disk", "self", "file",
    "stores", "schema", "locations"})
_VERSION_RE = re.compile(r"[-_. ]?v?\d+(?:[._-]\d+)*[a-z]?\d*$", re.IGNORECASE)


class ImageRecordError(ValueError):
    """An image record (from a directory or an upstream) is malformed."""


@dataclass(frozen=True)
class GlanceImage:
    """One Glance v2 image as the API shows it (plus the projects it is shared with)."""

    id: str
    name: str | None
    status: str = "active"
    visibility: str = "private"
    owner: str | None = None
    disk_format: str | None = None
    container_format: str | None = None
    size: int | None = None
    virtual_size: int | None = None
    checksum: str | None = None
    os_hash_algo: str | None = None
    os_hash_value: str | None = None
    min_disk: int = 0
    min_ram: int = 0
    protected: bool = False
    os_hidden: bool = False
    tags: tuple[str, ...] = ()
    created_at: str = ""
    updated_at: str = ""
    properties: tuple[tuple[str, str], ...] = ()
    members: tuple[str, ...] = field(default=(), compare=False)

    def prop(self, key: str) -> str | None:
        return next((v for k, v in self.properties if k == key), None)

    def value(self, key: str) -> object:
        """A base field or a property by its API name (None when absent)."""
        if key in _DATACLASS_FIELDS and key not in ("properties", "members"):
            return getattr(self, key)
        return self.prop(key)

    def to_json(self) -> dict[str, object]:
        """The document Glance returns for this image."""
        doc: dict[str, object] = dict(self.properties)
        doc.update({
            "name": self.name, "disk_format": self.disk_format,
            "container_format": self.container_format, "visibility": self.visibility,
            "size": self.size, "virtual_size": self.virtual_size, "status": self.status,
            "checksum": self.checksum, "protected": self.protected, "min_ram": self.min_ram,
            "min_disk": self.min_disk, "owner": self.owner, "os_hidden": self.os_hidden,
            "os_hash_algo": self.os_hash_algo, "os_hash_value": self.os_hash_value,
            "id": self.id, "created_at": self.created_at, "updated_at": self.updated_at,
            "tags": list(self.tags), "self": f"/v2/images/{self.id}",
            "file": f"/v2/images/{self.id}/file", "schema": "/v2/schemas/image"})
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> GlanceImage:
        """Parse a Glance image document; unknown keys become (string) properties."""
        try:
            image_id = doc["id"]
            if not isinstance(image_id, str) or not image_id:
                raise ImageRecordError("image without an id")
            props = tuple(sorted((str(k), v if isinstance(v, str) else json.dumps(v))
                                 for k, v in doc.items() if k not in BASE_FIELDS))
            return cls(
                id=image_id, name=_opt_str(doc.get("name")),
                status=str(doc.get("status") or "active"),
                visibility=str(doc.get("visibility") or "private"),
                owner=_opt_str(doc.get("owner")), disk_format=_opt_str(doc.get("disk_format")),
                container_format=_opt_str(doc.get("container_format")),
                size=_opt_int(doc.get("size")), virtual_size=_opt_int(doc.get("virtual_size")),
                checksum=_opt_str(doc.get("checksum")),
                os_hash_algo=_opt_str(doc.get("os_hash_algo")),
                os_hash_value=_opt_str(doc.get("os_hash_value")),
                min_disk=int(doc.get("min_disk") or 0), min_ram=int(doc.get("min_ram") or 0),
                protected=bool(doc.get("protected", False)),
                os_hidden=bool(doc.get("os_hidden", False)),
                tags=tuple(str(t) for t in doc.get("tags") or ()),
                created_at=str(doc.get("created_at") or ""),
                updated_at=str(doc.get("updated_at") or ""), properties=props)
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageRecordError(f"malformed image record: {exc}") from None


_DATACLASS_FIELDS = frozenset(GlanceImage.__dataclass_fields__)


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ImageRecordError(f"expected an integer, got {value!r}")
    return int(value)


def family_key(image: GlanceImage) -> str:
    """Images of one family are versions of each other (a delta basis for the next one)."""
    explicit = image.prop("edgedepot_family")
    if explicit:
        return f"family:{explicit}"
    distro, version = image.prop("os_distro"), image.prop("os_version")
    if distro and version:
        return f"os:{distro}:{version}"
    name = (image.name or image.id).strip()
    return "name:" + (_VERSION_RE.sub("", name) or name)


# -- digests -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageDigests:
    size: int
    md5: str
    sha512: str
    sha256: str


def compute_digests(path: Path) -> ImageDigests:
    md5, sha512, sha256 = hashlib.md5(), hashlib.sha512(), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            md5.update(chunk)
            sha512.update(chunk)
            sha256.update(chunk)
            size += len(chunk)
    return ImageDigests(size, md5.hexdigest(), sha512.hexdigest(), sha256.hexdigest())


class DigestMemo:
    """Digests of data files keyed by (path, size, mtime_ns), kept in a JSON file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = {}
        if path is not None and path.is_file():
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self._entries = {str(k): list(v) for k, v in loaded.items()}
            except (OSError, ValueError):
                self._entries = {}

    def digests(self, data: Path) -> ImageDigests:
        st = data.stat()
        key = f"{data.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        hit = self._entries.get(key)
        if hit is not None and len(hit) == 4:
            return ImageDigests(int(hit[0]), str(hit[1]), str(hit[2]), str(hit[3]))
        digests = compute_digests(data)
        self._entries[key] = [digests.size, digests.md5, digests.sha512, digests.sha256]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self._entries))
            tmp.replace(self.path)
        return digests


# -- the image directory -----------------------------------------------------------------------

@dataclass(frozen=True)
class TokenGrant:
    token: str
    project: str
    roles: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


@dataclass(frozen=True)
class DirectoryImage:
    image: GlanceImage
    data_path: Path
    sha256: str


@dataclass(frozen=True)
class ImageDirectory:
    images: tuple[DirectoryImage, ...]
    tokens: tuple[TokenGrant, ...]

    def find(self, image_id: str) -> DirectoryImage | None:
        return next((d for d in self.images if d.image.id == image_id), None)

    def grant(self, token: str) -> TokenGrant | None:
        return next((t for t in self.tokens if t.token == token), None)


def _isotime(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_image_record(record_path: Path, memo: DigestMemo) -> DirectoryImage:
    try:
        doc = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageRecordError(f"{record_path.name}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ImageRecordError(f"{record_path.name}: a JSON object with a 'name' is required")
    stem = record_path.stem
    data_name = str(doc.get("data") or f"{stem}.img")
    data_path = record_path.parent / data_name
    if "/" in data_name or not data_path.is_file():
        raise ImageRecordError(f"{record_path.name}: data file {data_name!r} not found")
    visibility = str(doc.get("visibility") or "private")
    if visibility not in VISIBILITIES:
        raise ImageRecordError(f"{record_path.name}: visibility {visibility!r} is not one of "
                               f"{', '.join(VISIBILITIES)}")
    props = doc.get("properties") or {}
    if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
        raise ImageRecordError(f"{record_path.name}: 'properties' must map names to strings")
    clash = BASE_FIELDS & set(props)
    if clash:
        raise ImageRecordError(f"{record_path.name}: properties may not be named {sorted(clash)}")
    image_id = str(doc.get("id") or uuid.uuid5(UUID_NAMESPACE, stem))
    try:
        uuid.UUID(image_id)
    except ValueError:
        raise ImageRecordError(f"{record_path.name}: id {image_id!r} is not a UUID") from None
    digests = memo.digests(data_path)
    mtime = _isotime(data_path.stat().st_mtime)
    created = str(doc.get("created_at") or mtime)
    image = GlanceImage(
        id=image_id, name=doc["name"], status="active", visibility=visibility,
        owner=_opt_str(doc.get("owner")), disk_format=str(doc.get("disk_format") or "raw"),
        container_format=str(doc.get("container_format") or "bare"), size=digests.size,
        virtual_size=_opt_int(doc.get("virtual_size")), checksum=digests.md5,
        os_hash_algo="sha512", os_hash_value=digests.sha512,
        min_disk=int(doc.get("min_disk") or 0), min_ram=int(doc.get("min_ram") or 0),
        protected=bool(doc.get("protected", False)), os_hidden=bool(doc.get("os_hidden", False)),
        tags=tuple(str(t) for t in doc.get("tags") or ()), created_at=created,
        updated_at=str(doc.get("updated_at") or created),
        properties=tuple(sorted(props.items())),
        members=tuple(str(m) for m in doc.get("members") or ()))
    return DirectoryImage(image, data_path, digests.sha256)


def load_tokens(path: Path) -> tuple[TokenGrant, ...]:
    if not path.is_file():
        return ()
    try:
        tree = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ImageRecordError(f"{path.name}: {exc}") from None
    grants = []
    for token, table in dict(tree.get("tokens", {})).items():
        if not isinstance(table, dict) or not isinstance(table.get("project"), str):
            raise ImageRecordError(f"{path.name}: tokens.{token} needs a 'project'")
        roles = tuple(str(r).lower() for r in table.get("roles", ("member", "reader")))
        grants.append(TokenGrant(str(token), table["project"], roles))
    return tuple(grants)


def load_image_directory(root: Path, memo: DigestMemo) -> ImageDirectory:
    """Read every record of an image directory (hashing new or changed data files)."""
    images = [load_image_record(p, memo) for p in sorted(root.glob("*.json"))]
    seen: set[str] = set()
    for entry in images:
        if entry.image.id in seen:
            raise ImageRecordError(f"duplicate image id {entry.image.id}")
        seen.add(entry.image.id)
    return ImageDirectory(tuple(images), load_tokens(root / "tokens.toml"))


def write_image(root: Path, stem: str, data: bytes | Path, **record: Any) -> Path:
    """Add an image to a directory (tests, demos): data file plus record."""
    root.mkdir(parents=True, exist_ok=True)
    data_path = root / f"{stem}.img"
    if isinstance(data, Path):
        if data != data_path:
            data_path.write_bytes(data.read_bytes())
    else:
        data_path.write_bytes(data)
    record.setdefault("name", stem)
    (root / f"{stem}.json").write_text(json.dumps(record, indent=2))
    return data_path


# -- schemas (what Glance serves under /v2/schemas) ---------------------------------------------

def image_schema() -> dict[str, object]:
    nullable_str: dict[str, object] = {"type": ["null", "string"]}
    read_only_str: dict[str, object] = {"type": "string", "readOnly": True}
    props: dict[str, object] = {
        "id": {"type": "string", "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
               "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"},
        "name": {"type": ["null", "string"], "maxLength": 255},
        "status": {"type": "string", "readOnly": True, "enum": list(STATUSES)},
        "visibility": {"type": "string", "enum": list(VISIBILITIES)},
        "protected": {"type": "boolean"}, "os_hidden": {"type": "boolean"},
        "checksum": {"type": ["null", "string"], "readOnly": True, "maxLength": 32},
        "os_hash_algo": {"type": ["null", "string"], "readOnly": True, "maxLength": 64},
        "os_hash_value": {"type": ["null", "string"], "readOnly": True, "maxLength": 128},
        "owner": {"type": ["null", "string"], "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True},
        "container_format": {**nullable_str, "enum": [None, "ami", "ari", "aki", "bare", "ovf",
                                                      "ova", "docker", "compressed"]},
        "disk_format": {**nullable_str, "enum": [None, "ami", "ari", "aki", "vhd", "vhdx", "vmdk",
                                                 "raw", "qcow2", "vdi", "iso", "ploop"]},
        "created_at": read_only_str, "updated_at": read_only_str,
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 255}},
        "direct_url": read_only_str, "min_ram": {"type": "integer"},
        "min_disk": {"type": "integer"}, "self": read_only_str, "file": read_only_str,
        "stores": read_only_str, "schema": read_only_str,
        "locations": {"type": "array", "items": {"type": "object", "properties": {
            "url": {"type": "string", "maxLength": 255}, "metadata": {"type": "object"}},
            "required": ["url", "metadata"]}},
    }
    return {"name": "image", "properties": props, "additionalProperties": {"type": "string"},
            "links": [{"rel": "self", "href": "{self}"}, {"rel": "enclosure", "href": "{file}"},
                      {"rel": "describedby", "href": "{schema}"}]}


def images_schema() -> dict[str, object]:
    return {"name": "images",
            "properties": {"images": {"type": "array", "items": image_schema()},
                           "schema": {"type": "string"}, "first": {"type": "string"},
                           "next": {"type": "string"}},
            "links": [{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"},
                      {"rel": "describedby", "href": "{schema}"}]}


# -- listing: Glance's image-list semantics (filters, sorting, paging) --------------------

SCOPE_KEYS = ("visibility", "os_hidden", "member_status")
_BOOL_FILTERS = ("protected", "os_hidden")


class ImageQueryError(ValueError):
    """An image-list query Glance would refuse (400)."""


LIST_LIMIT_DEFAULT = 25
LIST_LIMIT_MAX = 1000
SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at",
             "updated_at")
VISIBILITY_FILTERS = ("community", "public", "private", "shared", "all")


@dataclass(frozen=True)
class ImagePage:
    images: tuple[GlanceImage, ...]
    first: str
    next: str | None


def scope_params(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The parameters that decide visibility: the upstream Glance applies these itself."""
    return {k: v for k, v in params if k in SCOPE_KEYS}


def list_page(images: Sequence[GlanceImage], params: Sequence[tuple[str, str]]) -> ImagePage:
    """Filter, sort and page `images` (in the upstream's order) as Glance's image-list does."""
    params = list(params)
    validate_list_params(params)
    order = _sorting(params)
    reserved = {"limit", "marker", "sort", "sort_key", "sort_dir", *SCOPE_KEYS}
    filters = [(k, v) for k, v in params if k not in reserved]
    kept = [i for i in images
            if all(v in i.tags if k == "tag" else _matches(i, k, v) for k, v in filters)]
    return _page(_sort_images(kept, order), params)



def _sorting(params: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    keys = [v.strip() for k, v in params if k == "sort_key"]
    dirs = [v.strip() for k, v in params if k == "sort_dir"]
    sort = [v for k, v in params if k == "sort"]
    if sort:
        if keys or dirs:
            raise ImageQueryError("Old and new sorting syntax cannot be combined")
        for item in sort[-1].strip().split(","):
            key, _, direction = item.partition(":")
            keys.append(key.strip())
            dirs.append(direction.strip() or "desc")
    for key in keys:
        if key not in SORT_KEYS:
            raise ImageQueryError(f"Invalid sort key: {key}. It must be one of the following: "
                             f"{', '.join(SORT_KEYS)}.")
    for direction in dirs:
        if direction not in ("asc", "desc"):
            raise ImageQueryError(f"Invalid sort direction: {direction}")
    if len(dirs) > 1 and len(dirs) != len(keys):
        raise ImageQueryError("Number of sort dirs does not match the number of sort keys")
    keys = keys or ["created_at"]
    dirs = dirs or ["desc"]
    if len(dirs) == 1:
        dirs = dirs * len(keys)
    order = [(k, d == "desc") for k, d in zip(keys, dirs, strict=True)]
    for extra in ("created_at", "id"):  # Glance's database adds these for a stable order
        if extra not in keys:
            order.append((extra, True))
    return order


def _sort_images(images: list[GlanceImage], order: list[tuple[str, bool]]) -> list[GlanceImage]:
    """Glance's order. The API shows timestamps to the second while Glance's database sorts
    them to the microsecond; the upstream's own (default created_at desc) order of `images`
    breaks ties between timestamps of the same second the way the database would."""
    rank = {image.id: n for n, image in enumerate(images)}
    for key, desc in reversed(order):  # stable sorts, least significant key first
        images.sort(key=_sort_key(key, rank), reverse=desc)
    return images


def _sort_key(key: str, rank: dict[str, int]
              ) -> Callable[[GlanceImage], tuple[bool, int, str, int]]:
    def value(image: GlanceImage) -> tuple[bool, int, str, int]:
        v = image.value(key)  # NULLs first when ascending, as in Glance's database
        tie = -rank[image.id] if key == "created_at" else 0
        if isinstance(v, int) and not isinstance(v, bool):
            return (True, v, "", tie)
        return (v is not None, 0, "" if v is None else str(v), tie)
    return value


def _matches(image: GlanceImage, key: str, wanted: str) -> bool:
    if key in ("size_min", "size_max"):
        try:
            bound = int(wanted)
        except ValueError:
            raise ImageQueryError(f"Invalid {key} value: {wanted}") from None
        if image.size is None:
            return False
        return image.size >= bound if key == "size_min" else image.size <= bound
    actual = image.value(key)
    if isinstance(actual, bool):
        return actual == (wanted == "true")
    text = "" if actual is None else str(actual)
    if wanted.startswith("in:"):
        return text in [w.strip().strip('"') for w in wanted[3:].split(",")]
    if wanted.startswith("eq:"):
        wanted = wanted[3:]
    return text == wanted


def validate_list_params(params: Sequence[tuple[str, str]]) -> None:
    for key, value in params:
        if key == "visibility" and value not in VISIBILITY_FILTERS:
            raise ImageQueryError(f"Invalid visibility value: {value}")
        if key in _BOOL_FILTERS and value not in ("true", "false"):
            raise ImageQueryError(f"Invalid value '{value}' for '{key}' filter. "
                             "Valid values are 'true' or 'false'.")
        if key == "member_status" and value not in ("pending", "accepted", "rejected", "all"):
            raise ImageQueryError(f"Invalid status: {value}")
        if key == "changes-since":
            raise ImageQueryError('The "changes-since" filter is no longer available on v2.')


def _page(images: list[GlanceImage], params: list[tuple[str, str]]) -> ImagePage:
    last: dict[str, str] = {}
    for key, value in params:  # what Glance's dict(request.params) keeps: the last value
        last[key] = value
    last.pop("marker", None)
    query = urlencode(last)
    first = "/v2/images" + (f"?{query}" if query else "")
    limit_text = next((v for k, v in reversed(params) if k == "limit"), None)
    limit = LIST_LIMIT_DEFAULT
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            raise ImageQueryError("limit param must be an integer") from None
        if limit < 0:
            raise ImageQueryError("limit param must be positive")
    limit = min(limit, LIST_LIMIT_MAX)
    marker = next((v for k, v in reversed(params) if k == "marker"), None)
    start = 0
    if marker is not None:
        index = next((n for n, i in enumerate(images) if i.id == marker), None)
        if index is None:
            raise ImageQueryError(f"marker {marker} could not be found.")
        start = index + 1
    page = images[start:start + limit]
    nxt = None
    if page and len(page) == limit:
        nxt = "/v2/images?" + urlencode({**last, "marker": page[-1].id})
    return ImagePage(tuple(page), first, nxt)
