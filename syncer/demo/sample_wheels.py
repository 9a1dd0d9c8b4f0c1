"""Real, pip-installable sample distributions for demos, tests and benchmarks.

Wheels are pure-python ``py3-none-any`` archives written with :mod:`zipfile` following the
binary distribution format (``.dist-info/METADATA``, ``WHEEL``, ``RECORD``). Output is
deterministic: the same spec and seed always give the same bytes, so digests are stable.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import os
import random
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SampleWheel",
    "build_sample_sdist",
    "build_sample_wheels",
    "build_wheel",
    "sample_wheel_set",
    "wheel_filename",
]

_GENERATOR = "edgedepot-sample-wheels 1.0"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_PAYLOAD_NAME = "payload.bin"
_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class SampleWheel:
    """What to put in a sample wheel. ``requires`` are PEP 508 requirement strings."""

    name: str
    version: str
    requires: tuple[str, ...]
    payload_bytes: int
    requires_python: str | None = ">=3.8"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", self.name):
            raise ValueError(f"invalid project name {self.name!r}")
        if self.payload_bytes < 0:
            raise ValueError("payload_bytes must be >= 0")

    @property
    def module(self) -> str:
        """The import name of the wheel's package (``edge-agent`` -> ``edge_agent``)."""
        return _escape(self.name)


def _escape(name: str) -> str:
    """Project name as used in wheel file names and dist-info directories."""
    return re.sub(r"[-_.]+", "_", name).lower()


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def wheel_filename(spec: SampleWheel) -> str:
    return f"{_escape(spec.name)}-{spec.version}-py3-none-any.whl"


def _metadata(spec: SampleWheel) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {spec.name}",
        f"Version: {spec.version}",
        f"Summary: edgedepot sample package {spec.name}",
        "License: MIT",
    ]
    if spec.requires_python is not None:
        lines.append(f"Requires-Python: {spec.requires_python}")
    lines.extend(f"Requires-Dist: {requirement}" for requirement in spec.requires)
    return ("\n".join(lines) + "\n\n" + f"Sample package {spec.name} {spec.version}.\n").encode()


def _module_source(spec: SampleWheel) -> bytes:
    dependencies = []
    for requirement in spec.requires:
        match = _REQUIREMENT_NAME.match(requirement)
        if match is not None:
            dependencies.append(_escape(match.group(1)))
    return f'''"""edgedepot sample package {spec.name}."""

import importlib
from importlib import resources

__version__ = {spec.version!r}
DEPENDENCIES = {tuple(dependencies)!r}


def describe():
    """Name and version of this package."""
    return "{spec.name} " + __version__


def dependency_versions():
    """Import every dependency and report its version (proves the closure is installed)."""
    return {{name: importlib.import_module(name).__version__ for name in DEPENDENCIES}}


def payload_size():
    """Size of the bundled data file."""
    return len(resources.files(__name__).joinpath({_PAYLOAD_NAME!r}).read_bytes())
'''.encode()


def _zip_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.external_attr = 0o100644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def _atomic_write(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
    return target


def build_wheel(spec: SampleWheel, out_dir: Path, *, seed: int = 1) -> Path:
    """Write ``spec`` as a ``py3-none-any`` wheel into ``out_dir``; returns its path."""
    module = spec.module
    dist_info = f"{module}-{spec.version}.dist-info"
    wheel_meta = (
        f"Wheel-Version: 1.0\nGenerator: {_GENERATOR}\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files: list[tuple[str, bytes]] = [
        (f"{module}/__init__.py", _module_source(spec)),
        (f"{module}/{_PAYLOAD_NAME}", random.Random(seed).randbytes(spec.payload_bytes)),
        (f"{dist_info}/METADATA", _metadata(spec)),
        (f"{dist_info}/WHEEL", wheel_meta.encode()),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files)
    record += f"{dist_info}/RECORD,,\n"
    files.append((f"{dist_info}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            _zip_entry(archive, name, data)
    return _atomic_write(out_dir / wheel_filename(spec), buffer.getvalue())


def build_sample_sdist(
    name: str, version: str, out_dir: Path, *, requires_python: str | None = ">=3.8"
) -> Path:
    """Write a minimal ``<name>-<version>.tar.gz`` sdist (PKG-INFO, pyproject.toml, setup.cfg,
    one module). It is well-formed but not meant to be built."""
    spec = SampleWheel(name, version, (), 0, requires_python)
    base = f"{spec.module}-{version}"
    pyproject = (
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        f'\n[project]\nname = "{name}"\nversion = "{version}"\n'
    )
    setup_cfg = f"[metadata]\nname = {name}\nversion = {version}\n"
    members = [
        (f"{base}/PKG-INFO", _metadata(spec)),
        (f"{base}/pyproject.toml", pyproject.encode()),
        (f"{base}/setup.cfg", setup_cfg.encode()),
        (f"{base}/{spec.module}/__init__.py", f"__version__ = {version!r}\n".encode()),
    ]
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as archive,
    ):
        for member_name, data in members:
            info = tarfile.TarInfo(member_name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    return _atomic_write(out_dir / f"{base}.tar.gz", buffer.getvalue())


def sample_wheel_set() -> list[SampleWheel]:
    """A small dependency chain: edge-agent -> edge-common (1.0 and 1.1) -> edge-proto."""
    return [
        SampleWheel("edge-proto", "0.3.0", (), 10 * 1024),
        SampleWheel("edge-common", "1.0.0", ("edge-proto>=0.3",), 200 * 1024),
        SampleWheel("edge-common", "1.1.0", ("edge-proto>=0.3",), 256 * 1024),
        SampleWheel("edge-agent", "2.0.0", ("edge-common>=1.0", "edge-proto"), 2 * 1024 * 1024),
    ]


def build_sample_wheels(out_dir: Path, specs: Sequence[SampleWheel] | None = None) -> list[Path]:
    """Build ``specs`` (default :func:`sample_wheel_set`) into ``out_dir``; each wheel gets its
    own payload seed (its position + 1) so no two payloads are identical."""
    chosen = sample_wheel_set() if specs is None else list(specs)
    return [build_wheel(spec, out_dir, seed=index + 1) for index, spec in enumerate(chosen)]
