"""The benchmark's Debian repository: built once with the project's builders, cached on disk.

The repository is built with :mod:`syncer.demo.sample_repo` (synthetic but real ``.deb``
files) and :mod:`distro.debian_repo` (``dists/`` + ``pool/``), under ``benchmarks/.data/<key>/``,
keyed by the parameters, so reruns reuse it. A ``manifest.json`` written last marks a complete build.

The manifest lists the files a client fetches, in the order a client fetches them: ``InRelease``,
``Release``, every ``Packages`` variant, then every pool file in ``Packages`` order, each with the
size and sha256 its index promises (the pool files' digests come from the ``Packages`` index on
disk, the index files' from ``Release``).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from debian.deb822 import Packages, Release

#: URL path under which every peer serves the repository (the edgedepot apt layout).
REPO_URL_PREFIX = "/apt/bench/"
SUITE = "stable"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

FileKind = Literal["index", "pool"]


@dataclass(frozen=True)
class RepoFile:
    """One file a client fetches; ``path`` is relative to the repository root."""

    path: str
    size: int
    sha256: str
    kind: FileKind


@dataclass(frozen=True)
class DatasetParams:
    n_debs: int
    total_bytes: int
    seed: int

    @property
    def key(self) -> str:
        return f"debs{self.n_debs}-bytes{self.total_bytes}-seed{self.seed}"


@dataclass(frozen=True)
class Dataset:
    params: DatasetParams
    root: Path  # the directory served as REPO_URL_PREFIX (holds dists/ and pool/)
    files: tuple[RepoFile, ...]

    @property
    def unique_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def index_files(self) -> tuple[RepoFile, ...]:
        return tuple(f for f in self.files if f.kind == "index")

    @property
    def pool_files(self) -> tuple[RepoFile, ...]:
        return tuple(f for f in self.files if f.kind == "pool")

    def largest_pool_files(self, n: int) -> tuple[RepoFile, ...]:
        return tuple(sorted(self.pool_files, key=lambda f: (-f.size, f.path))[:n])

    def small_index_files(self) -> tuple[RepoFile, ...]:
        """``InRelease`` and the uncompressed ``Packages`` (the warm small-file set)."""
        wanted = [f for f in self.index_files if f.path.endswith(("/InRelease", "/Packages"))]
        return tuple(wanted) if wanted else self.index_files[:2]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _index_entry(root: Path, rel: str) -> RepoFile:
    path = root / rel
    return RepoFile(rel, path.stat().st_size, _sha256_file(path), "index")


def scan_repository(root: Path, suite: str = SUITE) -> tuple[RepoFile, ...]:
    """The fetch list of the repository at ``root``, checked against its own indexes."""
    dists = root / "dists" / suite
    release_path = dists / "Release"
    if not release_path.is_file():
        raise FileNotFoundError(f"no Release file at {release_path}")
    files: list[RepoFile] = []
    for name in ("InRelease", "Release"):
        if (dists / name).is_file():
            files.append(_index_entry(root, f"dists/{suite}/{name}"))
    release = Release(release_path.read_text(encoding="utf-8"))
    packages_uncompressed: Path | None = None
    package_indexes: list[RepoFile] = []
    packages_xz: Path | None = None
    for entry in release.get("SHA256", []):
        name = str(entry["name"])
        base = name.rsplit("/", 1)[-1]
        if base not in ("Packages", "Packages.xz"):
            continue
        path = dists / name
        if not path.is_file():
            continue  # listed (e.g. an empty variant) but not present: clients would not fetch
        item = RepoFile(f"dists/{suite}/{name}", int(entry["size"]), str(entry["sha256"]), "index")
        actual = _index_entry(root, item.path)
        if actual.sha256 != item.sha256 or actual.size != item.size:
            raise ValueError(f"{item.path} does not match its Release entry")
        package_indexes.append(item)
        if base == "Packages":
            packages_uncompressed = path
        elif base == "Packages.xz":
            packages_xz = path
    # apt's order: the xz variant first.
    files.extend(sorted(package_indexes, key=lambda f: (not f.path.endswith(".xz"), f.path)))
    if packages_uncompressed is not None:
        text = packages_uncompressed.read_text(encoding="utf-8")
    elif packages_xz is not None:
        text = lzma.decompress(packages_xz.read_bytes()).decode("utf-8")
    else:
        raise FileNotFoundError(f"Release at {release_path} lists no Packages index present")
    for para in Packages.iter_paragraphs(text.splitlines(keepends=True), use_apt_pkg=False):
        files.append(
            RepoFile(str(para["Filename"]), int(para["Size"]), str(para["SHA256"]), "pool")
        )
    if not any(f.kind == "pool" for f in files):
        raise ValueError(f"repository at {root} has no packages")
    return tuple(files)


def _write_manifest(
    base: Path, params: DatasetParams, root: Path, files: tuple[RepoFile, ...]
) -> None:
    doc = {
        "version": MANIFEST_VERSION,
        "params": asdict(params),
        "root": str(root.relative_to(base)),
        "files": [asdict(f) for f in files],
    }
    tmp = base / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    tmp.replace(base / MANIFEST_NAME)


def _kind(text: str) -> FileKind:
    return "pool" if text == "pool" else "index"


def _read_manifest(base: Path, params: DatasetParams) -> Dataset | None:
    path = base / MANIFEST_NAME
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("version") != MANIFEST_VERSION or doc.get("params") != asdict(params):
        return None
    root = base / str(doc["root"])
    files = tuple(
        RepoFile(str(f["path"]), int(f["size"]), str(f["sha256"]), _kind(str(f["kind"])))
        for f in doc["files"]
    )
    if not all((root / f.path).is_file() for f in files):
        return None
    return Dataset(params, root, files)


def build_dataset(params: DatasetParams, base: Path, log: bool = True) -> Dataset:
    """Build (or reuse) the repository for ``params`` under ``base / params.key``."""
    target = (base / params.key).resolve()
    cached = _read_manifest(target, params)
    if cached is not None:
        return cached
    # Imported here: the builders are heavy and only needed on a cache miss.
    from distro.debian_repo import build_repository, stop_gpg_agent
    from syncer.demo.sample_repo import build_sample_debs, sample_graph
    from syncer.demo.signing import make_throwaway_key

    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    if log:
        print(f"building dataset {params.key} under {target} ...", flush=True)
    specs = sample_graph(params.n_debs, total_bytes=params.total_bytes, seed=params.seed)
    deb_dir = target / "debs"
    deb_dir.mkdir()
    build_sample_debs(deb_dir, specs, seed=params.seed, jobs=2)
    key = make_throwaway_key(target / "gnupg", name="edgedepot benchmark archive")
    try:
        built = build_repository(deb_dir, target / "repo", suite=SUITE, signing_key=key)
    finally:
        stop_gpg_agent(key)
    root = Path(built.root)
    files = scan_repository(root)
    expected = {p.filename: (p.size, p.sha256) for p in built.packages}
    for f in files:
        if f.kind == "pool" and expected.get(f.path, (f.size, f.sha256)) != (f.size, f.sha256):
            raise ValueError(f"{f.path}: Packages index disagrees with BuiltRepository.packages")
    _write_manifest(target, params, root, files)
    if log:
        pool = sum(1 for f in files if f.kind == "pool")
        total = sum(f.size for f in files)
        print(f"dataset ready: {pool} debs, {total / 1e6:.1f} MB", flush=True)
    return Dataset(params, root, files)


def load_tree(root: Path, params: DatasetParams | None = None) -> Dataset:
    """A :class:`Dataset` for an existing repository tree (no building)."""
    files = scan_repository(root)
    pool = [f for f in files if f.kind == "pool"]
    return Dataset(params or DatasetParams(len(pool), sum(f.size for f in pool), 0), root, files)
