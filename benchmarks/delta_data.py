"""Datasets for the delta benchmark, built once and cached under ``benchmarks/.data/``.

* ``image``: two ext4 images (``mke2fs -d``, no mounting) of root file systems made with
  ``debootstrap --variant=minbase``: v1 plain, v2 with ``bookworm-updates`` as an extra suite and
  four more packages. The mirror URL is read at run time from the machine's apt sources. If
  debootstrap cannot run, a synthetic "filesystem-like" pair is built instead, and labelled so.
* ``synthetic``: a compressible file from a fixed seed; v2 has 1% scattered 4 KiB rewrites,
  20 insertions/deletions and a new tail.
* ``shifted``: the same kind of file, but the 4 KiB rewrites sit on v1's 4 KiB grid (as a file
  system rewrites its blocks), then small insertions and deletions shift everything after them
  (as a grown file does), then a new tail: every rewrite straddles two of v2's blocks.
* ``packages``: a Debian ``Packages`` index (the machine's own apt list, else a generated one)
  and a copy with stanzas changed and added.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / ".data"
EXTRA_PACKAGES = ("less", "curl", "vim-tiny", "iproute2")
FIXED_UUID = "6f1c2d7e-3a4b-4c5d-9e8f-0a1b2c3d4e5f"


@dataclass(frozen=True)
class Pair:
    name: str  # dataset key: image, synthetic, packages
    label: str  # what it is, for the table
    basis: Path
    target: Path
    note: str = ""


def _done(directory: Path, params: dict[str, object]) -> bool:
    marker = directory / "params.json"
    return marker.exists() and json.loads(marker.read_text()) == params


def _finish(directory: Path, params: dict[str, object], pair: Pair) -> Pair:
    (directory / "pair.json").write_text(json.dumps({k: str(v) for k, v in asdict(pair).items()}))
    (directory / "params.json").write_text(json.dumps(params))
    return pair


def _load(directory: Path) -> Pair:
    raw = json.loads((directory / "pair.json").read_text())
    return Pair(raw["name"], raw["label"], Path(raw["basis"]), Path(raw["target"]), raw["note"])


# -- synthetic -----------------------------------------------------------------------------------

def _compressible(rng: np.random.Generator, n: int) -> bytes:
    """About 3x compressible with zstd: a small alphabet, skewed."""
    alphabet = np.frombuffer(b"etaoinshr dlu\n", dtype=np.uint8)
    probs = np.linspace(2.0, 0.5, alphabet.size)
    probs /= probs.sum()
    return alphabet[rng.choice(alphabet.size, size=n, p=probs)].tobytes()


def build_synthetic(size: int, seed: int = 1234, data_dir: Path = DATA_DIR) -> Pair:
    params: dict[str, object] = {"kind": "synthetic", "size": size, "seed": seed, "v": 1}
    directory = data_dir / f"synthetic-{size >> 20}M-{seed}"
    if _done(directory, params):
        return _load(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    basis = bytearray()
    while len(basis) < size:
        basis += _compressible(rng, min(32 << 20, size - len(basis)))
    target = bytearray(basis)
    for _ in range(size // 4096 // 100):  # 1% of blocks rewritten, at any offset
        at = int(rng.integers(0, len(target) - 4096))
        target[at:at + 4096] = _compressible(rng, 4096)
    for i in range(20):
        at = int(rng.integers(0, len(target)))
        n = int(rng.integers(1, 65536))
        if i % 2:
            target[at:at] = _compressible(rng, n)
        else:
            del target[at:at + n]
    target += _compressible(rng, size // 64)
    (directory / "v1.bin").write_bytes(basis)
    (directory / "v2.bin").write_bytes(target)
    pair = Pair("synthetic", f"{size >> 20} MiB file, 1% 4 KiB rewrites, 20 ins/del, new tail",
                directory / "v1.bin", directory / "v2.bin")
    return _finish(directory, params, pair)


def build_shifted(size: int, seed: int = 4321, data_dir: Path = DATA_DIR) -> Pair:
    """Aligned rewrites (1% of v1's 4 KiB blocks, in place), then 20 insertions/deletions of
    1..4095 bytes (never a whole block, so the grid really shifts), then a new tail."""
    params: dict[str, object] = {"kind": "shifted", "size": size, "seed": seed, "v": 1}
    directory = data_dir / f"shifted-{size >> 20}M-{seed}"
    if _done(directory, params):
        return _load(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    basis = bytearray()
    while len(basis) < size:
        basis += _compressible(rng, min(32 << 20, size - len(basis)))
    target = bytearray(basis)
    n_blocks = size // 4096
    for block in rng.choice(n_blocks, size=n_blocks // 100, replace=False).tolist():
        target[block * 4096:(block + 1) * 4096] = _compressible(rng, 4096)
    for i in range(20):
        at = int(rng.integers(0, len(target)))
        n = int(rng.integers(1, 4096))
        if i % 2:
            target[at:at] = _compressible(rng, n)
        else:
            del target[at:at + n]
    target += _compressible(rng, size // 64)
    (directory / "v1.bin").write_bytes(basis)
    (directory / "v2.bin").write_bytes(target)
    pair = Pair("shifted", f"{size >> 20} MiB file, 1% 4 KiB rewrites on v1's block grid, "
                           "then 20 small ins/del shifting them, new tail",
                directory / "v1.bin", directory / "v2.bin")
    return _finish(directory, params, pair)


def build_fs_like(size: int, seed: int = 99, data_dir: Path = DATA_DIR) -> Pair:
    """A stand-in for the image pair: 4 KiB-aligned files in zeros, some files changed/added."""
    params: dict[str, object] = {"kind": "fs-like", "size": size, "seed": seed, "v": 2}
    directory = data_dir / f"fslike-{size >> 20}M-{seed}"
    if _done(directory, params):
        return _load(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blocks = size // 4096
    files: list[tuple[int, bytes]] = []
    pos = 256
    while pos < blocks * 0.4:
        n = int(rng.integers(1, 200))
        files.append((pos, _compressible(rng, n * 4096 - int(rng.integers(0, 4096)))))
        pos += n + int(rng.integers(0, 20))
    v1 = bytearray(size)
    v2 = bytearray(size)
    for p, data in files:
        v1[p * 4096:p * 4096 + len(data)] = data
    changed = rng.random(len(files)) < 0.15
    for (p, data), ch in zip(files, changed, strict=True):
        new = bytearray(data)
        if ch:
            for _ in range(max(1, len(new) // 20000)):
                at = int(rng.integers(0, len(new)))
                new[at:at + 64] = _compressible(rng, 64)
            # upgraded files move: the new version is written elsewhere
            q = int(rng.integers(int(blocks * 0.45), int(blocks * 0.9)))
            v2[q * 4096:q * 4096 + len(new)] = new
        else:
            v2[p * 4096:p * 4096 + len(new)] = new
    at = int(blocks * 0.92) * 4096  # new packages: new content
    v2[at:at + size // 50] = _compressible(rng, size // 50)
    (directory / "v1.img").write_bytes(v1)
    (directory / "v2.img").write_bytes(v2)
    pair = Pair("image", f"SYNTHETIC filesystem-like {size >> 20} MiB pair (not debootstrap)",
                directory / "v1.img", directory / "v2.img",
                note="debootstrap image not built; synthetic stand-in")
    return _finish(directory, params, pair)


# -- image ---------------------------------------------------------------------------------------

def codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    m = re.search(r"^VERSION_CODENAME=(\S+)", text, re.M)
    return m.group(1).strip('"') if m else "bookworm"


def mirror_url(suite: str) -> str | None:
    """The first apt source carrying ``suite`` (read now, never stored in the repository)."""
    candidates: list[tuple[str, list[str]]] = []
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb":
                rest = [p for p in parts[1:] if not p.startswith("[")]
                candidates.append((rest[0], rest[1:2]))
    d = Path("/etc/apt/sources.list.d")
    for f in sorted(d.glob("*.sources")) if d.exists() else []:
        for stanza in f.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split():
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
    for uri, suites in candidates:
        if suite in suites and uri.startswith(("http://", "https://")):
            return uri
    return None


def _debootstrap(target: Path, suite: str, mirror: str, cache: Path, extra: list[str],
                 log: Path) -> None:
    if (target / "etc" / "os-release").exists() and (target / ".complete").exists():
        return
    shutil.rmtree(target, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", "--variant=minbase", f"--cache-dir={cache}", *extra, suite,
           str(target), mirror]
    with open(log, "ab") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, timeout=1800)
    (target / ".complete").touch()


def _mkfs(tree: Path, image: Path, size: int) -> None:
    image.unlink(missing_ok=True)
    with open(image, "wb") as fh:
        fh.truncate(size)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"}
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-U", FIXED_UUID,
                    "-E", f"root_owner=0:0,hash_seed={FIXED_UUID}", "-d", str(tree),
                    str(image)], check=True, env=env, timeout=900)


def build_image(size: int = 1 << 30, data_dir: Path = DATA_DIR) -> Pair:
    suite = codename()
    params: dict[str, object] = {"kind": "image", "size": size, "suite": suite,
                                 "extra": list(EXTRA_PACKAGES), "v": 1}
    directory = data_dir / f"image-{suite}-{size >> 20}M"
    if _done(directory, params):
        return _load(directory)
    mirror = mirror_url(suite)
    if mirror is None or shutil.which("debootstrap") is None or shutil.which("mke2fs") is None:
        raise RuntimeError("no apt source for the suite, or debootstrap/mke2fs missing")
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "build.log"
    cache = data_dir / "debootstrap-cache"
    _debootstrap(directory / "root-v1", suite, mirror, cache, [], log)
    _debootstrap(directory / "root-v2", suite, mirror, cache,
                 [f"--extra-suites={suite}-updates", "--include=" + ",".join(EXTRA_PACKAGES)],
                 log)
    _mkfs(directory / "root-v1", directory / "v1.img", size)
    _mkfs(directory / "root-v2", directory / "v2.img", size)
    pair = Pair("image", f"{size >> 30 or size >> 20}{'GiB' if size >= 1 << 30 else 'MiB'} "
                         f"ext4 image, debootstrap minbase {suite}; v2 + {suite}-updates "
                         f"+ {len(EXTRA_PACKAGES)} packages",
                directory / "v1.img", directory / "v2.img")
    return _finish(directory, params, pair)


# -- packages ------------------------------------------------------------------------------------

def _local_packages_index() -> bytes | None:
    lists = Path("/var/lib/apt/lists")
    helper = Path("/usr/lib/apt/apt-helper")
    if not helper.exists():
        return None
    found = sorted(lists.glob(f"*_dists_{codename()}_main_binary-*_Packages*"))
    for f in found:
        try:
            out = subprocess.run([str(helper), "cat-file", str(f)], check=True,
                                 capture_output=True, timeout=300).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if len(out) > 1 << 20:
            return out
    return None


def _generated_index(rng: np.random.Generator, n: int) -> bytes:
    stanzas = []
    for i in range(n):
        name = f"pkg{i:05d}-{rng.integers(1 << 30):x}"
        stanzas.append(
            f"Package: {name}\nVersion: {rng.integers(1, 9)}.{rng.integers(0, 99)}-1\n"
            f"Installed-Size: {rng.integers(10, 99999)}\nMaintainer: Debian <x@debian.org>\n"
            f"Architecture: amd64\nDepends: libc6 (>= 2.36), lib{name}-common\n"
            f"Description: generated package {i}\n"
            f"Filename: pool/main/{name[0]}/{name}/{name}_1_amd64.deb\n"
            f"Size: {rng.integers(1000, 9999999)}\n"
            f"SHA256: {rng.bytes(32).hex()}\n")
    return "\n".join(stanzas).encode()


def build_packages(limit: int | None = None, seed: int = 7, data_dir: Path = DATA_DIR) -> Pair:
    changed, added = (300, 50) if limit is None else (60, 10)
    params: dict[str, object] = {"kind": "packages", "limit": limit, "seed": seed, "v": 1}
    directory = data_dir / f"packages-{limit or 'full'}-{seed}"
    if _done(directory, params):
        return _load(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    raw = _local_packages_index()
    source = "the machine's apt list"
    if raw is None:
        raw = _generated_index(rng, 60_000 if limit is None else 12_000)
        source = "generated"
    if limit is not None:
        raw = raw[:limit]
        raw = raw[:raw.rfind(b"\n\n") + 1]
    stanzas = raw.rstrip(b"\n").split(b"\n\n")
    new = list(stanzas)
    for i in rng.choice(len(new), size=min(changed, len(new)), replace=False).tolist():
        st = new[i]
        st = re.sub(rb"(?m)^Version: (.*)$", lambda m: b"Version: " + m.group(1) + b"+deb12u1",
                    st)
        st = re.sub(rb"(?m)^SHA256: .*$", b"SHA256: " + rng.bytes(32).hex().encode(), st)
        st = re.sub(rb"(?m)^Size: .*$", b"Size: %d" % int(rng.integers(1000, 9999999)), st)
        st = re.sub(rb"(?m)^MD5sum: .*$", b"MD5sum: " + rng.bytes(16).hex().encode(), st)
        new[i] = st
    for _ in range(added):
        at = int(rng.integers(0, len(new)))
        template = new[int(rng.integers(0, len(new)))]
        name = b"newpkg-%x" % int(rng.integers(1 << 40))
        st = re.sub(rb"(?m)^Package: .*$", b"Package: " + name, template)
        st = re.sub(rb"(?m)^SHA256: .*$", b"SHA256: " + rng.bytes(32).hex().encode(), st)
        new.insert(at, st)
    (directory / "Packages.v1").write_bytes(b"\n\n".join(stanzas) + b"\n")
    (directory / "Packages.v2").write_bytes(b"\n\n".join(new) + b"\n")
    size_mb = (directory / "Packages.v1").stat().st_size / 1e6
    pair = Pair("packages", f"{size_mb:.0f} MB Packages index ({source}), {changed} stanzas "
                            f"changed, {added} added",
                directory / "Packages.v1", directory / "Packages.v2")
    return _finish(directory, params, pair)
