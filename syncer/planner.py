"""Turn an inventory into one ordered prefetch plan per region.

For each region, the union of its sites' profiles: apt packages resolved exactly as apt would
(closure in install order) against the origin's current indexes, pip requirements pinned with
hashes against the origin's PEP 691 index, images by id. The plan id is derived from the
content, so pushing an unchanged plan again is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from distro.debian_repo import parse_release
from distro.errors import EdgedepotError
from distro.packages_index import IndexSpec, PackageIndex, load_index
from distro.pip_resolver import PipResolveError, PipTarget, resolve_pip
from distro.plans import build_deb_plan
from distro.pypi_index import JSON_CONTENT_TYPE, normalize_project_name, parse_project_page
from distro.resolver import ResolutionError, ResolveOptions
from distro.wire import PlanArtifact, PlanSpec
from syncer.blocking_http import BlockingHttp
from syncer.http_client import ClientSettings
from syncer.inventory import Inventory, InventoryError, Profile, suggest_package


class PlanningError(RuntimeError):
    """A region's plan cannot be computed; the message says which profile and why."""


@dataclass(frozen=True)
class RegionPlan:
    region: str
    spec: PlanSpec
    apt_packages: int
    pip_files: int
    images: int

    @property
    def total_bytes(self) -> int:
        return sum(a.size for a in self.spec.artifacts)


class _Origin:
    """The origin as the planner reads it, through the scheduler's one HTTP client."""

    def __init__(self, base: str, http: BlockingHttp) -> None:
        self.base = base
        self.http = http

    def get(self, url: str, accept: str | None = None) -> bytes:
        return self.fetch(url, accept)[0]

    def fetch(self, url: str, accept: str | None = None) -> tuple[bytes, str]:
        try:
            return self.http.get(url, accept)
        except EdgedepotError as exc:
            raise PlanningError(f"cannot fetch {url}: {exc}") from None


class AptIndexCache:
    """Downloads (once per run) and loads the origin's Packages index for a repo/suite/arch."""

    def __init__(self, origin: _Origin, work_dir: Path) -> None:
        self.origin = origin
        self.work_dir = work_dir
        self._loaded: dict[tuple[str, str, str], PackageIndex] = {}

    def index(self, repo: str, suite: str, arch: str) -> PackageIndex:
        key = (repo, suite, arch)
        if key in self._loaded:
            return self._loaded[key]
        base = f"{self.origin.base}/apt/{repo}/dists/{suite}/"
        try:
            release_bytes = self.origin.get(base + "InRelease")
        except PlanningError:
            release_bytes = self.origin.get(base + "Release")
        release = parse_release(release_bytes, base + "Release")
        paths: list[Path] = []
        for component in release.components or ("main",):
            for name in ("Packages.xz", "Packages"):
                entry = release.entry(f"{component}/binary-{arch}/{name}")
                if entry is None:
                    continue
                data = self.origin.get(base + entry.path)
                if hashlib.sha256(data).hexdigest() != entry.sha256:
                    raise PlanningError(f"{base}{entry.path}: sha256 differs from the Release")
                if name.endswith(".xz"):
                    data = lzma.decompress(data)
                out = self.work_dir / repo / suite / f"{component}_binary-{arch}_Packages"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                paths.append(out)
                break
        if not paths:
            raise PlanningError(f"{base}: no Packages index for architecture {arch}")
        loaded = load_index([IndexSpec(p) for p in paths], native_arch=arch)
        self._loaded[key] = loaded
        return loaded


def _apt_artifacts(profile: Profile, indexes: AptIndexCache) -> list[PlanArtifact]:
    out: list[PlanArtifact] = []
    if profile.apt is None:
        return out
    apt = profile.apt
    index = indexes.index(apt.repo, apt.suite, apt.arch)
    for name in apt.packages:
        if not index.has_name(name.split(":")[0].split("=")[0]) and \
                not index.providers(name):
            raise PlanningError(
                f"profile {profile.name}: unknown package {name!r} in {apt.repo}/{apt.suite}"
                f"{suggest_package(name, sorted(index.names()))}")
    try:
        plan, _ = build_deb_plan(index, apt.packages,
                                 ResolveOptions(install_recommends=apt.recommends))
    except ResolutionError as exc:
        raise PlanningError(f"profile {profile.name}: {exc}") from None
    out.extend(PlanArtifact("apt", apt.repo, e.filename, e.sha256, e.size)
               for e in plan.entries)
    return out


def _pip_artifacts(origin: _Origin, profile: Profile) -> list[PlanArtifact]:
    out: list[PlanArtifact] = []
    if profile.pip is None:
        return out
    pip = profile.pip
    url = f"{origin.base}/pypi/{pip.index}/simple/"
    try:
        plan = resolve_pip(url, pip.requirements, PipTarget(pip.python_version, pip.platform),
                           fetch=origin.http.get)
    except PipResolveError as exc:
        raise PlanningError(f"profile {profile.name}: {exc}") from None
    for pin in plan.pins:
        project = normalize_project_name(pin.name)
        out.append(PlanArtifact("pypi", pip.index, f"{project}/{pin.filename}", pin.sha256,
                                pin.size or 0))
        metadata = _metadata_of(origin, url, project, pin.filename)
        if metadata is not None:  # pip reads it first (PEP 658): pre-warm it too
            out.append(PlanArtifact("pypi", pip.index,
                                    f"{project}/{pin.filename}.metadata", *metadata))
    return out


def _metadata_of(origin: _Origin, index_url: str, project: str, filename: str
                 ) -> tuple[str, int] | None:
    """(sha256, size) of a file's PEP 658 metadata as the index announces it, if any."""
    page_url = f"{index_url}{project}/"
    body, content_type = origin.fetch(page_url, JSON_CONTENT_TYPE)
    try:
        page = parse_project_page(body, content_type, page_url=page_url, source=page_url)
    except ValueError as exc:
        raise PlanningError(f"cannot read {page_url}: {exc}") from None
    for dist in page.files:
        if dist.filename == filename and dist.metadata_sha256 and dist.metadata_url:
            data = origin.get(dist.metadata_url)
            if hashlib.sha256(data).hexdigest() != dist.metadata_sha256:
                raise PlanningError(f"{dist.metadata_url}: sha256 differs from the index")
            return dist.metadata_sha256, len(data)
    return None


def _image_artifacts(origin: _Origin, profile: Profile) -> list[PlanArtifact]:
    """Images named (or given by id) in the region's profiles, as anonymous callers see them
    at the origin: public and community images."""
    out: list[PlanArtifact] = []
    base = f"{origin.base}/glance"
    for wanted in profile.images:
        doc = json.loads(origin.get(f"{base}/v2/images?{urllib.parse.urlencode({'name': wanted})}"))
        found = [str(i["id"]) for i in doc.get("images", [])]
        if not found:
            try:
                found = [str(json.loads(origin.get(f"{base}/v2/images/{wanted}"))["id"])]
            except (PlanningError, KeyError, ValueError):
                raise PlanningError(
                    f"profile {profile.name}: no public or community image named or with "
                    f"id {wanted!r} at the origin") from None
        if len(found) > 1:
            raise PlanningError(f"profile {profile.name}: image name {wanted!r} is "
                                f"ambiguous ({', '.join(found)}); give the id")
        digest = json.loads(origin.get(f"{base}/edgedepot/v1/images/{found[0]}/digest"))
        out.append(PlanArtifact("glance", "glance", found[0], str(digest["sha256"]),
                                int(digest["size"])))
    return out


def _dedupe(artifacts: list[PlanArtifact]) -> tuple[PlanArtifact, ...]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for a in artifacts:
        key = (a.kind, a.repo, a.path)
        if key not in seen:
            seen.add(key)
            out.append(a)
    return tuple(out)


def plan_regions(inventory: Inventory, work_dir: Path, regions: list[str] | None = None,
                 settings: ClientSettings | None = None) -> list[RegionPlan]:
    with BlockingHttp(settings) as http:
        return _plan_regions(inventory, _Origin(inventory.origin, http), work_dir, regions)


def _plan_regions(inventory: Inventory, origin: _Origin, work_dir: Path,
                  regions: list[str] | None) -> list[RegionPlan]:
    indexes = AptIndexCache(origin, work_dir)
    # A profile is resolved once, however many regions use it.
    by_profile: dict[str, tuple[list[PlanArtifact], list[PlanArtifact], list[PlanArtifact]]] = {}

    def resolved(profile: Profile) -> tuple[list[PlanArtifact], list[PlanArtifact],
                                            list[PlanArtifact]]:
        if profile.name not in by_profile:
            by_profile[profile.name] = (_apt_artifacts(profile, indexes),
                                        _pip_artifacts(origin, profile),
                                        _image_artifacts(origin, profile))
        return by_profile[profile.name]

    plans = []
    for name, region in sorted(inventory.regions.items()):
        if regions and name not in regions:
            continue
        if not inventory.sites_in(name):
            continue
        parts = [resolved(profile) for profile in inventory.profiles_of(name)]
        apt = [a for p in parts for a in p[0]]
        pip = [a for p in parts for a in p[1]]
        images = [a for p in parts for a in p[2]]
        artifacts = _dedupe(apt + pip + images)
        digest = hashlib.sha256(json.dumps(
            [(a.kind, a.repo, a.path, a.sha256) for a in artifacts]).encode()).hexdigest()
        spec = PlanSpec(f"{name}-{digest[:12]}", artifacts, region.concurrency, region.bandwidth)
        plans.append(RegionPlan(name, spec, len(apt), len(pip), len(images)))
    if regions:
        unknown = set(regions) - set(inventory.regions)
        if unknown:
            raise InventoryError(f"unknown regions {sorted(unknown)}")
    return plans


def profile_totals(inventory: Inventory, work_dir: Path,
                   settings: ClientSettings | None = None) -> dict[str, int]:
    """Bytes of each profile's artifacts (apt closure, pinned pip files, images): what one site
    of that profile downloads on a fresh install; the console measures sites against it."""
    with BlockingHttp(settings) as http:
        origin = _Origin(inventory.origin, http)
        indexes = AptIndexCache(origin, work_dir)
        out = {}
        for name, profile in sorted(inventory.profiles.items()):
            artifacts = _dedupe(_apt_artifacts(profile, indexes) + _pip_artifacts(origin, profile)
                                + _image_artifacts(origin, profile))
            out[name] = sum(a.size for a in artifacts)
        return out
