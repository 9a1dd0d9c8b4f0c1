"""The demo's image part: two versions of an image family at the origin, fetched by a region."""

from __future__ import annotations

import hashlib
import json
import random
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from syncer.demo.node_process import NodeProcess

FAMILY = "edge-os"


@dataclass(frozen=True)
class ImageFetch:
    image_id: str
    name: str
    size: int
    upstream_bytes: int
    verified: bool


def build_image_pair(images_dir: Path, size: int = 24 << 20, seed: int = 5) -> tuple[str, str]:
    """v1: pseudo-random bytes; v2: v1 with scattered 4 KiB rewrites, an insertion, a new tail."""
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    v1 = bytearray(rng.randbytes(size))
    v2 = bytearray(v1)
    for _ in range(24):
        at = rng.randrange(0, len(v2) - 4096) & ~4095
        v2[at:at + 4096] = rng.randbytes(4096)
    at = rng.randrange(0, len(v2))
    v2[at:at] = rng.randbytes(64 << 10)
    v2 += rng.randbytes(256 << 10)
    ids = []
    for version, data in (("1.0", v1), ("1.1", v2)):
        stem = f"{FAMILY}-{version}"
        (images_dir / f"{stem}.img").write_bytes(bytes(data))
        record = {"name": stem, "visibility": "public", "disk_format": "raw",
                  "container_format": "bare",
                  "properties": {"edgedepot_family": FAMILY, "os_version": version}}
        (images_dir / f"{stem}.json").write_text(json.dumps(record))
        ids.append(stem)
    return ids[0], ids[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as resp:
        data: bytes = resp.read()
        return data


def image_id_by_name(node: NodeProcess, name: str) -> tuple[str, dict[str, object]]:
    doc = json.loads(_get(f"{node.url}/glance/v2/images?name={name}"))
    images = doc["images"]
    if len(images) != 1:
        raise RuntimeError(f"expected one image named {name}, got {len(images)}")
    return str(images[0]["id"]), images[0]


def fetch_image(node: NodeProcess, name: str) -> ImageFetch:
    """Download an image through `node` and verify it against its record (md5 and sha512)."""
    image_id, record = image_id_by_name(node, name)
    before = node.metric_total("edgedepot_upstream_bytes_total")
    data = _get(f"{node.url}/glance/v2/images/{image_id}/file")
    moved = int(node.metric_total("edgedepot_upstream_bytes_total") - before)
    verified = hashlib.md5(data).hexdigest() == record.get("checksum") and \
        hashlib.sha512(data).hexdigest() == record.get("os_hash_value")
    return ImageFetch(image_id, name, len(data), moved, verified)
