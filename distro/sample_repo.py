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
from dataclasses import dataclass
from pathlib import Path

from distro.debian_repo import SigningKey, export_public_key, make_throwaway_key

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
    if compression is None:
        compression = "xz" if spec.payload_bytes <= 64 * 1024 else "gzip"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / deb_filename(spec)
    stage = Path(tempfile.mkdtemp(prefix=f".stage-{spec.name}-", dir=out_dir))
    try:
        root = stage / "root"
        files = {
            root / "DEBIAN" / "control": control_text(spec).encode("utf-8"),
            root / "usr" / "share" / spec.name / "payload.bin": random.Random(seed).randbytes(
                spec.payload_bytes
            ),
            root / "usr" / "share" / "doc" / spec.name / "README": f"{spec.description}\n".encode(
                "utf-8"
            ),
        }
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            os.chmod(path, 0o644)
        for directory in sorted(
            {root, *(p for f in files for p in f.parents if root in p.parents)}
        ):
            os.chmod(directory, 0o755)
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in (dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)):
                os.utime(entry, (_EPOCH, _EPOCH))
        argv = ["dpkg-deb", "--build", "--root-owner-group", f"-Z{compression}"]
        if compression == "gzip":
            argv.append("-z1")
        partial = stage / "out.deb"
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(_EPOCH)}
        proc = subprocess.run(
            argv + [str(root), str(partial)],
            env=env,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
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

_ID = "edge-init-system-helpers (>= 1.54~)"
# name, version, arch, depends, pre-depends, recommends, provides, size factor, synopsis
_CoreRow = tuple[
    str, str, str, tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], float, str
]
_CORE: tuple[_CoreRow, ...] = (
    (
        "edge-libc6",
        "2.36-9+deb12u4",
        "amd64",
        ("edge-libgcc-s1",),
        (),
        (),
        (),
        3.0,
        "GNU C Library: Shared libraries",
    ),
    (
        "edge-libgcc-s1",
        "12.2.0-14",
        "amd64",
        ("edge-libc6 (>= 2.35)",),
        (),
        (),
        (),
        0.3,
        "GCC support library",
    ),
    (
        "edge-init-system-helpers",
        "1.65.2",
        "all",
        (),
        (),
        (),
        (),
        0.2,
        "helper tools for all init systems",
    ),
    (
        "edge-zlib1g",
        "1:1.2.13.dfsg-1",
        "amd64",
        ("edge-libc6 (>= 2.14)",),
        (),
        (),
        (),
        0.5,
        "compression library - runtime",
    ),
    (
        "edge-libssl3",
        "3.0.11-1~deb12u2",
        "amd64",
        ("edge-libc6 (>= 2.34)",),
        (),
        (),
        (),
        1.5,
        "Secure Sockets Layer toolkit - shared libraries",
    ),
    (
        "edge-libffi8",
        "3.4.4-1",
        "amd64",
        ("edge-libc6 (>= 2.34)",),
        (),
        (),
        (),
        0.2,
        "Foreign Function Interface library runtime",
    ),
    (
        "edge-libxml2",
        "2.9.14+dfsg-1.3~deb12u1",
        "amd64",
        ("edge-libc6 (>= 2.34)", "edge-zlib1g (>= 1:1.2.3.3)"),
        (),
        (),
        (),
        0.8,
        "GNOME XML library",
    ),
    (
        "edge-python3.11",
        "3.11.2-6",
        "amd64",
        (
            "edge-libc6 (>= 2.36)",
            "edge-libssl3 (>= 3.0.0)",
            "edge-zlib1g (>= 1:1.2.0)",
            "edge-libffi8 (>= 3.4)",
        ),
        (),
        (),
        (),
        4.0,
        "Interactive high-level object-oriented language",
    ),
    (
        "edge-python3",
        "3.11.2-1+b1",
        "amd64",
        ("edge-python3.11 (>= 3.11.2-1~)",),
        (),
        (),
        (),
        0.1,
        "interactive high-level object-oriented language (default python3 version)",
    ),
    (
        "edge-python3-oslo.config",
        "1:9.1.0-2",
        "all",
        ("edge-python3",),
        (),
        (),
        (),
        0.5,
        "Common code for OpenStack projects - configuration API",
    ),
    (
        "edge-python3-pymysql",
        "1.0.2-2",
        "all",
        ("edge-python3",),
        (),
        (),
        (),
        0.3,
        "Pure-Python MySQL driver - Python 3.x",
    ),
    (
        "edge-python3-nova",
        "2:26.2.0-1+deb12u1",
        "all",
        (
            "edge-python3",
            "edge-python3-oslo.config (>= 1:9.0.0)",
            "edge-python3-mysqldb | edge-python3-pymysql",
        ),
        (),
        (),
        (),
        3.0,
        "OpenStack Compute - libraries",
    ),
    (
        "edge-python3-neutron",
        "2:21.1.0-1",
        "all",
        ("edge-python3", "edge-python3-oslo.config (>= 1:8.0.0)"),
        (),
        (),
        (),
        2.5,
        "OpenStack virtual network service - Python library",
    ),
    (
        "edge-chrony",
        "4.3-2+deb12u1",
        "amd64",
        ("edge-libc6 (>= 2.34)",),
        (_ID,),
        (),
        ("edge-time-daemon",),
        0.5,
        "Versatile implementation of the Network Time Protocol",
    ),
    (
        "edge-libvirt0",
        "9.0.0-4",
        "amd64",
        ("edge-libc6 (>= 2.36)", "edge-libxml2 (>= 2.9.14)", "edge-libssl3 (>= 3.0.0)"),
        (),
        (),
        (),
        2.0,
        "library for interfacing with different virtualization systems",
    ),
    (
        "edge-libvirt-clients",
        "9.0.0-4",
        "amd64",
        ("edge-libvirt0 (= 9.0.0-4)",),
        (),
        (),
        (),
        0.8,
        "Programs for the libvirt library",
    ),
    (
        "edge-libvirt-daemon-system",
        "9.0.0-4",
        "amd64",
        ("edge-libvirt0 (= 9.0.0-4)",),
        (_ID,),
        ("edge-libvirt-clients",),
        (),
        1.0,
        "Libvirt daemon configuration files",
    ),
    (
        "edge-qemu-system-x86",
        "1:7.2+dfsg-7+deb12u3",
        "amd64",
        ("edge-libc6 (>= 2.36)", "edge-zlib1g (>= 1:1.2.0)"),
        (),
        (),
        (),
        8.0,
        "QEMU full system emulation binaries (x86)",
    ),
    (
        "edge-openvswitch-switch",
        "3.1.0-2",
        "amd64",
        ("edge-libc6 (>= 2.34)", "edge-libssl3 (>= 3.0.0)", "edge-python3"),
        (_ID,),
        (),
        (),
        2.0,
        "Open vSwitch switch implementations",
    ),
    (
        "edge-nova-compute",
        "2:26.2.0-1+deb12u1",
        "all",
        (
            "edge-python3-nova (= 2:26.2.0-1+deb12u1)",
            "edge-libvirt-daemon-system (>= 9.0.0)",
            "edge-qemu-system-x86 | edge-qemu-kvm",
            "edge-time-daemon",
        ),
        (),
        ("edge-libvirt-clients",),
        (),
        0.3,
        "OpenStack Compute - compute node base",
    ),
    (
        "edge-neutron-openvswitch-agent",
        "2:21.1.0-1",
        "all",
        ("edge-python3-neutron (= 2:21.1.0-1)", "edge-openvswitch-switch (>= 2.17)"),
        (),
        (),
        (),
        0.3,
        "OpenStack virtual network service - Open vSwitch agent",
    ),
    (
        TOP_PACKAGE,
        "1.0",
        "all",
        ("edge-nova-compute", "edge-neutron-openvswitch-agent"),
        (),
        (),
        (),
        0.02,
        "edgedepot sample: everything an OpenStack compute node needs",
    ),
)
_EXTRA_LIBS = (
    "edge-libyaml-0-2",
    "edge-libnuma1",
    "edge-liburing2",
    "edge-libaio1",
    "edge-libcap-ng0",
    "edge-libpcap0.8",
    "edge-libgnutls30",
    "edge-libsqlite3-0",
    "edge-libuuid1",
    "edge-libnl-3-200",
    "edge-libjson-c5",
    "edge-libseccomp2",
)
_EXTRA_PY = tuple(
    f"edge-python3-{n}"
    for n in (
        "six",
        "pbr",
        "requests",
        "urllib3",
        "yaml",
        "eventlet",
        "greenlet",
        "sqlalchemy",
        "oslo.messaging",
        "oslo.log",
        "oslo.db",
        "oslo.concurrency",
        "keystoneauth1",
        "keystonemiddleware",
        "kombu",
        "amqp",
        "routes",
        "webob",
        "netaddr",
        "cryptography",
        "lxml",
        "libvirt",
        "os-brick",
        "os-vif",
        "psutil",
        "tooz",
        "castellan",
        "novaclient",
        "neutronclient",
        "glanceclient",
        "cinderclient",
        "paste",
        "jsonschema",
        "stevedore",
    )
)
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
    if n_packages < len(_CORE):
        raise ValueError(f"n_packages must be at least {len(_CORE)}")
    rng = random.Random(seed)
    libs, pys = list(_EXTRA_LIBS), list(_EXTRA_PY)
    rng.shuffle(libs)
    rng.shuffle(pys)
    rows = [_Row(r[0], r[1], r[2], list(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in _CORE]
    extra_libs: list[tuple[str, str]] = []
    extra_pys: list[tuple[str, str]] = []
    used: set[str] = set()
    for i in range(n_packages - len(_CORE)):
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
            pre_depends=r.pre_depends,
            recommends=r.recommends,
            provides=r.provides,
            payload_bytes=max(512, int(w * scale)),
            description=f"{r.synopsis}\nSample package generated by edgedepot for demos and "
            f"tests.\n\nIts payload is seeded pseudo-random data ({r.name}).",
        )
        for r, w in zip(rows, weights)
    ]


@dataclass
class _Row:
    name: str
    version: str
    arch: str
    depends: list[str]
    pre_depends: tuple[str, ...] = ()
    recommends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
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
