"""Realistic sample .deb packages and apt repositories for demos, tests and benchmarks."""

from __future__ import annotations

import hashlib
import math
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from distro.debian_repo import SigningKey, export_public_key
from syncer.demo.signing import make_throwaway_key

TOP_PACKAGE = "edge-compute-node"
_EPOCH = 1_700_000_000  # fixed mtimes make builds reproducible
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*")


@dataclass(frozen=True)
class SampleDeb:
    """One sample binary package; relation fields hold Debian clauses like "a (>= 1) | b"."""

    name: str
    version: str
    architecture: str
    depends: tuple[str, ...]
    pre_depends: tuple[str, ...]
    recommends: tuple[str, ...]
    provides: tuple[str, ...]
    payload_bytes: int
    description: str


@dataclass(frozen=True)
class SampleAptRepo:
    """Sample .debs ready for build_repository, plus the key to sign the repository with."""

    deb_dir: Path
    specs: tuple[SampleDeb, ...]
    signing_key: SigningKey | None
    public_keyring: Path | None
    top_package: str


def deb_filename(spec: SampleDeb) -> str:
    """The canonical file name name_version_arch.deb (epoch dropped)."""
    return f"{spec.name}_{spec.version.split(':', 1)[-1]}_{spec.architecture}.deb"


def _section(name: str) -> str:
    if name == TOP_PACKAGE:
        return "metapackages"
    if name.startswith("edge-python3-"):
        return "python"
    if name.startswith("edge-lib"):
        return "libs"
    return "admin"


def control_text(spec: SampleDeb) -> str:
    """The DEBIAN/control file for spec."""
    synopsis, _, extended = spec.description.partition("\n")
    fields = [
        ("Package", spec.name),
        ("Version", spec.version),
        ("Architecture", spec.architecture),
        ("Maintainer", "Edgedepot Sample Maintainers <samples@edgedepot.invalid>"),
        ("Installed-Size", str(max(1, math.ceil(spec.payload_bytes / 1024)))),
        ("Pre-Depends", ", ".join(spec.pre_depends)),
        ("Depends", ", ".join(spec.depends)),
        ("Recommends", ", ".join(spec.recommends)),
        ("Provides", ", ".join(spec.provides)),
        ("Section", _section(spec.name)),
        ("Priority", "optional"),
    ]
    lines = [f"{k}: {v}" for k, v in fields if v]
    lines.append(f"Description: {synopsis.strip() or spec.name}")
    for row in extended.strip("\n").split("\n") if extended.strip() else []:
        lines.append(f" {row.strip()}" if row.strip() else " .")
    return "\n".join(lines) + "\n"


def build_deb(spec: SampleDeb, out_dir: Path, *, seed: int, compression: str | None = None) -> Path:
    """Build a real .deb with dpkg-deb; the payload is seeded pseudo-random bytes.

    compression is dpkg-deb's -Z type; by default xz for small payloads, fast gzip otherwise.
    """
    if not _NAME.fullmatch(spec.name) or not _VERSION.fullmatch(spec.version):
        raise ValueError(f"bad package name or version: {spec.name} {spec.version}")
    relations = (*spec.depends, *spec.pre_depends, *spec.recommends, *spec.provides)
    if any("\n" in value for value in (*relations, spec.architecture)):
        raise ValueError(f"{spec.name}: newline in a relation or architecture field")
    if compression is None:
        compression = "xz" if spec.payload_bytes <= 64 * 1024 else "gzip"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / deb_filename(spec)
    stage = Path(tempfile.mkdtemp(prefix=f".stage-{spec.name}-", dir=out_dir))
    try:
        root = stage / "root"
        share = root / "usr" / "share"
        files = {
            root / "DEBIAN" / "control": control_text(spec).encode(),
            share / spec.name / "payload.bin": random.Random(seed).randbytes(spec.payload_bytes),
            share / "doc" / spec.name / "README": f"{spec.description}\n".encode(),
        }
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for dirpath, _, filenames in os.walk(root):
            os.chmod(dirpath, 0o755)
            os.utime(dirpath, (_EPOCH, _EPOCH))
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
                os.utime(os.path.join(dirpath, name), (_EPOCH, _EPOCH))
        argv = ["dpkg-deb", "--build", "--root-owner-group", f"-Z{compression}"]
        if compression == "gzip":
            argv.append("-z1")
        partial = stage / "out.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(_EPOCH)}
        argv += [str(root), str(partial)]
        proc = subprocess.run(
            argv, env=env, capture_output=True, stdin=subprocess.DEVNULL, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"dpkg-deb failed for {spec.name}: {proc.stderr.decode()[-2000:]}")
        os.replace(partial, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return target


def _spec_seed(seed: int, spec: SampleDeb) -> int:
    """Per-package seed: changing one package does not change the bytes of the others."""
    digest = hashlib.sha256(f"{seed}:{spec.name}:{spec.version}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def build_sample_debs(
    out_dir: Path, specs: Sequence[SampleDeb], *, seed: int = 1, jobs: int = 2
) -> list[Path]:
    """Build every spec into out_dir (a small thread pool of dpkg-deb processes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(build_deb, s, out_dir, seed=_spec_seed(seed, s)) for s in specs]
        return [f.result() for f in futures]


# --------------------------------------------------------------------------- dependency graph


def _words(text: str) -> list[str]:
    return text.split()


# The fixed part of the graph. A header line "name version arch size-factor synopsis" is
# followed by indented relation lines: D(epends), P(re-Depends), R(ecommends), V (provides).
_CORE_TABLE = """
edge-libc6 2.36-9+deb12u4 amd64 3.0 GNU C Library: Shared libraries
  D edge-libgcc-s1
edge-libgcc-s1 12.2.0-14 amd64 0.3 GCC support library
  D edge-libc6 (>= 2.35)
edge-init-system-helpers 1.65.2 all 0.2 helper tools for all init systems
edge-zlib1g 1:1.2.13.dfsg-1 amd64 0.5 compression library - runtime
  D edge-libc6 (>= 2.14)
edge-libssl3 3.0.11-1~deb12u2 amd64 1.5 Secure Sockets Layer toolkit - shared libraries
  D edge-libc6 (>= 2.34)
edge-libffi8 3.4.4-1 amd64 0.2 Foreign Function Interface library runtime
  D edge-libc6 (>= 2.34)
edge-libxml2 2.9.14+dfsg-1.3~deb12u1 amd64 0.8 GNOME XML library
  D edge-libc6 (>= 2.34), edge-zlib1g (>= 1:1.2.3.3)
edge-python3.11 3.11.2-6 amd64 4.0 Interactive high-level object-oriented language
  D edge-libc6 (>= 2.36), edge-libssl3 (>= 3.0.0), edge-zlib1g (>= 1:1.2.0), edge-libffi8 (>= 3.4)
edge-python3 3.11.2-1+b1 amd64 0.1 interactive high-level object-oriented language (default)
  D edge-python3.11 (>= 3.11.2-1~)
edge-python3-oslo.config 1:9.1.0-2 all 0.5 Common code for OpenStack projects - configuration API
  D edge-python3
edge-python3-pymysql 1.0.2-2 all 0.3 Pure-Python MySQL driver - Python 3.x
  D edge-python3
edge-python3-nova 2:26.2.0-1+deb12u1 all 3.0 OpenStack Compute - libraries
  D edge-python3, edge-python3-oslo.config (>= 1:9.0.0), edge-python3-mysqldb | edge-python3-pymysql
edge-python3-neutron 2:21.1.0-1 all 2.5 OpenStack virtual network service - Python library
  D edge-python3, edge-python3-oslo.config (>= 1:8.0.0)
edge-chrony 4.3-2+deb12u1 amd64 0.5 Versatile implementation of the Network Time Protocol
  D edge-libc6 (>= 2.34)
  P edge-init-system-helpers (>= 1.54~)
  V edge-time-daemon
edge-libvirt0 9.0.0-4 amd64 2.0 library for interfacing with different virtualization systems
  D edge-libc6 (>= 2.36), edge-libxml2 (>= 2.9.14), edge-libssl3 (>= 3.0.0)
edge-libvirt-clients 9.0.0-4 amd64 0.8 Programs for the libvirt library
  D edge-libvirt0 (= 9.0.0-4)
edge-libvirt-daemon-system 9.0.0-4 amd64 1.0 Libvirt daemon configuration files
  D edge-libvirt0 (= 9.0.0-4)
  P edge-init-system-helpers (>= 1.54~)
  R edge-libvirt-clients
edge-qemu-system-x86 1:7.2+dfsg-7+deb12u3 amd64 8.0 QEMU full system emulation binaries (x86)
  D edge-libc6 (>= 2.36), edge-zlib1g (>= 1:1.2.0)
edge-openvswitch-switch 3.1.0-2 amd64 2.0 Open vSwitch switch implementations
  D edge-libc6 (>= 2.34), edge-libssl3 (>= 3.0.0), edge-python3
  P edge-init-system-helpers (>= 1.54~)
edge-nova-compute 2:26.2.0-1+deb12u1 all 0.3 OpenStack Compute - compute node base
  D edge-python3-nova (= 2:26.2.0-1+deb12u1), edge-libvirt-daemon-system (>= 9.0.0),
    edge-qemu-system-x86 | edge-qemu-kvm, edge-time-daemon
  R edge-libvirt-clients
edge-neutron-openvswitch-agent 2:21.1.0-1 all 0.3 OpenStack virtual network service - OVS agent
  D edge-python3-neutron (= 2:21.1.0-1), edge-openvswitch-switch (>= 2.17)
edge-compute-node 1.0 all 0.02 edgedepot sample: everything an OpenStack compute node needs
  D edge-nova-compute, edge-neutron-openvswitch-agent
"""


def _core_rows() -> list[_Row]:
    """Parse _CORE_TABLE."""
    rows: list[_Row] = []
    last = ""
    for line in _CORE_TABLE.strip("\n").split("\n"):
        if not line.startswith(" "):
            name, version, arch, factor, synopsis = line.split(" ", 4)
            rows.append(_Row(name, version, arch, [], factor=float(factor), synopsis=synopsis))
            continue
        if line.startswith("    "):  # continuation of the previous relation line
            kind, text = last, line.strip()
        else:
            kind, _, text = line.strip().partition(" ")
        last = kind
        row = rows[-1]
        target = {"D": row.depends, "P": row.pre_depends, "R": row.recommends, "V": row.provides}
        target[kind].extend(c.strip() for c in text.split(",") if c.strip())
    return rows


_EXTRA_LIBS = _words("""edge-libyaml-0-2 edge-libnuma1 edge-liburing2 edge-libaio1 edge-libcap-ng0
    edge-libpcap0.8 edge-libgnutls30 edge-libsqlite3-0 edge-libuuid1 edge-libnl-3-200
    edge-libjson-c5 edge-libseccomp2""")
_EXTRA_PY = [
    f"edge-python3-{n}"
    for n in _words("""six pbr requests urllib3 yaml eventlet greenlet
    sqlalchemy oslo.messaging oslo.log oslo.db oslo.concurrency keystoneauth1 keystonemiddleware
    kombu amqp routes webob netaddr cryptography lxml libvirt os-brick os-vif psutil tooz
    castellan novaclient neutronclient glanceclient cinderclient paste jsonschema
    stevedore""")
]
LIB_CONSUMERS = ("edge-libvirt0", "edge-qemu-system-x86", "edge-python3.11")
PY_CONSUMERS = ("edge-python3-nova", "edge-python3-neutron")


def sample_graph(
    n_packages: int = 40, *, total_bytes: int = 20_000_000, seed: int = 1
) -> list[SampleDeb]:
    """A deterministic OpenStack-compute-node-like package graph with edge-compute-node on top.

    Features: a Depends cycle (libc6/libgcc-s1), epochs and '~' versions, versioned and
    exact (=) Depends, an or-group whose first alternative does not exist, a virtual package
    (edge-time-daemon, provided by edge-chrony), Pre-Depends and Recommends.
    """
    rows = _core_rows()
    if n_packages < len(rows):
        raise ValueError(f"n_packages must be at least {len(rows)}")
    rng = random.Random(seed)
    libs, pys = list(_EXTRA_LIBS), list(_EXTRA_PY)
    rng.shuffle(libs)
    rng.shuffle(pys)
    extra_libs: list[tuple[str, str]] = []
    extra_pys: list[tuple[str, str]] = []
    used: set[str] = set()
    for i in range(n_packages - len(rows)):
        version = f"{rng.randint(0, 4)}.{rng.randint(0, 30)}.{rng.randint(0, 12)}"
        version += rng.choice(("", "", "+dfsg", "+ds")) + f"-{rng.randint(1, 5)}"
        version += rng.choice(("", "", "", "~deb12u1", "+b1"))
        if (i % 4 == 3 or not pys) and libs:
            row = _Row(
                libs.pop(),
                version,
                "amd64",
                [f"edge-libc6 (>= 2.{rng.randint(14, 36)})"],
                factor=0.6,
            )
            row.synopsis = f"shared library {row.name.removeprefix('edge-')}"
            if extra_libs and rng.random() < 0.3:
                row.depends.append(_pick(rng, extra_libs, used))
            extra_libs.append((row.name, version))
        else:
            name = pys.pop() if pys else f"edge-python3-oslo-plugin{i:03d}"
            row = _Row(
                name,
                version,
                "all",
                ["edge-python3"],
                factor=0.4,
                synopsis=f"Python 3 module {name.removeprefix('edge-python3-')}",
            )
            for _ in range(rng.randint(0, 2) if extra_pys else 0):
                row.depends.append(_pick(rng, extra_pys, used))
            if extra_libs and rng.random() < 0.3:
                row.depends.append(_pick(rng, extra_libs, used))
                row.arch = "amd64"  # a compiled extension
            extra_pys.append((row.name, version))
        row.depends = list(dict.fromkeys(row.depends))
        rows.append(row)
    by_name = {r.name: r for r in rows}
    for group, consumers in ((extra_libs, LIB_CONSUMERS), (extra_pys, PY_CONSUMERS)):
        for name, _ in group:
            if name not in used:
                by_name[rng.choice(consumers)].depends.append(name)
    weights = [math.exp(rng.uniform(math.log(4e3), math.log(3e6))) * r.factor for r in rows]
    scale = total_bytes / sum(weights)
    return [
        SampleDeb(
            name=r.name,
            version=r.version,
            architecture=r.arch,
            depends=tuple(r.depends),
            pre_depends=tuple(r.pre_depends),
            recommends=tuple(r.recommends),
            provides=tuple(r.provides),
            payload_bytes=max(512, int(w * scale)),
            description=f"{r.synopsis}\nSample package generated by edgedepot for demos and "
            f"tests.\n\nIts payload is seeded pseudo-random data ({r.name}).",
        )
        for r, w in zip(rows, weights, strict=True)
    ]


@dataclass
class _Row:
    name: str
    version: str
    arch: str
    depends: list[str]
    pre_depends: list[str] = field(default_factory=list)
    recommends: list[str] = field(default_factory=list)
    provides: list[str] = field(default_factory=list)
    factor: float = 1.0
    synopsis: str = ""


def _pick(rng: random.Random, pool: list[tuple[str, str]], used: set[str]) -> str:
    name, version = rng.choice(pool)
    used.add(name)
    if rng.random() < 0.5:
        return name
    upstream = version.rsplit("-", 1)[0]
    return f"{name} (>= {upstream})"


def build_sample_apt_repo(
    work_dir: Path,
    *,
    n_packages: int = 40,
    total_bytes: int = 20_000_000,
    seed: int = 1,
    signed: bool = True,
    jobs: int = 2,
) -> SampleAptRepo:
    """Build sample .debs into work_dir/debs (replacing its content) and, if signed, a key.

    The dists tree is not built here: the origin builds it from deb_dir with build_repository.
    """
    specs = sample_graph(n_packages, total_bytes=total_bytes, seed=seed)
    deb_dir = work_dir / "debs"
    if deb_dir.exists():
        shutil.rmtree(deb_dir)
    build_sample_debs(deb_dir, specs, seed=seed, jobs=jobs)
    key: SigningKey | None = None
    keyring: Path | None = None
    if signed:
        key = make_throwaway_key(work_dir / "gnupg", name="edgedepot sample archive")
        keyring = export_public_key(key, work_dir / "edgedepot-archive-keyring.gpg")
    return SampleAptRepo(deb_dir, tuple(specs), key, keyring, TOP_PACKAGE)
