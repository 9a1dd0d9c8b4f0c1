"""pip requirements resolved against a PEP 691 index into pinned, hashed files (resolvelib).

For a given Python version and platform, each requirement becomes one file (a compatible wheel,
else an sdist whose metadata the index serves) with its sha256, as ``pip install
--require-hashes`` would fetch it. Dependencies come from PEP 658 metadata when the index offers
it (verified against its announced digest), else from the wheel itself (verified by sha256).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version
from resolvelib import AbstractProvider, BaseReporter, ResolutionImpossible, Resolver

from distro.debian_repo import MalformedIndexError
from distro.errors import EdgedepotError
from distro.pypi_index import JSON_CONTENT_TYPE, DistFile, parse_project_page

__all__ = ["Fetch", "PipPin", "PipPlan", "PipResolveError", "PipTarget", "resolve_pip"]

# (url, Accept or None) -> (body, Content-Type); raises an EdgedepotError when it cannot.
Fetch = Callable[[str, str | None], tuple[bytes, str]]


class PipResolveError(RuntimeError):
    """The requirements cannot be resolved (or the index cannot be read)."""


@dataclass(frozen=True)
class PipTarget:
    """The interpreter and platform the plan is for."""

    python_version: str = "3.11"
    platform: str = "manylinux_2_36_x86_64"

    @property
    def version_tuple(self) -> tuple[int, int]:
        major, minor = self.python_version.split(".")[:2]
        return int(major), int(minor)

    def platforms(self) -> list[str]:
        plat = self.platform
        if plat.startswith("manylinux_2_"):
            head, _, arch = plat[len("manylinux_2_"):].partition("_")
            out = [f"manylinux_2_{k}_{arch}" for k in range(int(head), 4, -1)]
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
            out += [f"{legacy[k]}_{arch}" for k in sorted(legacy, reverse=True)
                    if k <= int(head)]
            return [*out, f"linux_{arch}"]
        return [plat]

    def tags(self) -> list[Tag]:
        version = self.version_tuple
        plats = self.platforms()
        return [*cpython_tags(version, platforms=plats),
                *compatible_tags(version, f"cp{version[0]}{version[1]}", plats)]

    def environment(self) -> dict[str, str]:
        arch = self.platform.rsplit("_", 1)[-1] if "x86_64" not in self.platform else "x86_64"
        return {"python_version": self.python_version, "python_full_version":
                f"{self.python_version}.0", "sys_platform": "linux", "platform_system": "Linux",
                "platform_machine": arch, "os_name": "posix", "implementation_name": "cpython",
                "platform_python_implementation": "CPython", "implementation_version":
                f"{self.python_version}.0", "platform_release": "", "platform_version": ""}


@dataclass(frozen=True)
class PipPin:
    """One pinned file of the plan."""

    name: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int | None


@dataclass(frozen=True)
class PipPlan:
    """Pinned files in install order (dependencies first)."""

    requirements: tuple[str, ...]
    target: PipTarget
    pins: tuple[PipPin, ...]

    def requirements_txt(self) -> str:
        return "".join(f"{p.name}=={p.version} --hash=sha256:{p.sha256}\n" for p in self.pins)

    def to_json(self) -> str:
        return json.dumps({"requirements": list(self.requirements),
                           "python_version": self.target.python_version,
                           "platform": self.target.platform,
                           "pins": [asdict(p) for p in self.pins]}, indent=2)


@dataclass(frozen=True)
class _Candidate:
    name: str
    version: Version
    dist: DistFile
    extras: frozenset[str] = field(default_factory=frozenset)


class _Index:
    """HTTP access to a simple index, pages and metadata cached per run."""

    def __init__(self, base_url: str, fetch: Fetch) -> None:
        self.base = base_url.rstrip("/") + "/"
        self.fetch = fetch
        self.pages: dict[str, tuple[DistFile, ...]] = {}
        self.metadata: dict[str, bytes] = {}

    def _get(self, url: str, accept: str | None = None) -> tuple[bytes, str]:
        try:
            return self.fetch(url, accept)
        except EdgedepotError as exc:
            raise PipResolveError(f"cannot fetch {url}: {exc}") from None

    def files(self, name: str) -> tuple[DistFile, ...]:
        if name not in self.pages:
            url = f"{self.base}{name}/"
            try:
                body, ctype = self._get(url, JSON_CONTENT_TYPE)
            except PipResolveError:
                self.pages[name] = ()
                return ()
            try:
                self.pages[name] = parse_project_page(body, ctype, page_url=url, source=url).files
            except MalformedIndexError as exc:
                raise PipResolveError(str(exc)) from None
        return self.pages[name]

    def core_metadata(self, dist: DistFile) -> bytes:
        if dist.url in self.metadata:
            return self.metadata[dist.url]
        if dist.metadata_url is not None:
            data, _ = self._get(dist.metadata_url)
            if dist.metadata_sha256 and hashlib.sha256(data).hexdigest() != dist.metadata_sha256:
                raise PipResolveError(f"metadata of {dist.filename} does not match its digest")
        elif dist.filename.endswith(".whl"):
            blob, _ = self._get(dist.url)
            if dist.sha256 and hashlib.sha256(blob).hexdigest() != dist.sha256:
                raise PipResolveError(f"{dist.filename} does not match its sha256")
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")
                         and n.count("/") == 1]
                if not names:
                    raise PipResolveError(f"{dist.filename} has no METADATA")
                data = zf.read(names[0])
        else:
            raise PipResolveError(f"no metadata available for {dist.filename}")
        self.metadata[dist.url] = data
        return data


class _Provider(AbstractProvider[Requirement, _Candidate, str]):
    def __init__(self, index: _Index, target: PipTarget) -> None:
        self.index = index
        self.target = target
        self.tags = {str(t): i for i, t in enumerate(target.tags())}
        self.python = Version(f"{target.python_version}.0")
        self.environment = target.environment()

    def identify(self, requirement_or_candidate: Requirement | _Candidate) -> str:
        name = canonicalize_name(requirement_or_candidate.name)
        extras = sorted(requirement_or_candidate.extras)
        return f"{name}[{','.join(extras)}]" if extras else name

    def get_preference(self, identifier: str, resolutions: Mapping[str, _Candidate],
                       candidates: Mapping[str, Iterator[_Candidate]],
                       information: Mapping[str, Iterator[Any]],
                       backtrack_causes: Sequence[Any]) -> tuple[bool, str]:
        pinned = any(str(i.requirement.specifier).startswith("==")
                     for i in information[identifier])
        return (not pinned, identifier)

    def _usable(self, dist: DistFile) -> tuple[Version, int] | None:
        if dist.requires_python and self.python not in SpecifierSet(dist.requires_python):
            return None
        try:
            if dist.filename.endswith(".whl"):
                _n, version, _b, tags = parse_wheel_filename(dist.filename)
                ranks = [self.tags[str(t)] for t in tags if str(t) in self.tags]
                return (version, min(ranks)) if ranks else None
            _n, version = parse_sdist_filename(dist.filename)
        except (InvalidWheelFilename, InvalidSdistFilename):
            return None
        return (version, len(self.tags)) if dist.has_metadata else None

    def find_matches(self, identifier: str, requirements: Mapping[str, Iterator[Requirement]],
                     incompatibilities: Mapping[str, Iterator[_Candidate]]) -> list[_Candidate]:
        reqs = list(requirements[identifier])
        bad = {c.version for c in incompatibilities[identifier]}
        name = identifier.split("[")[0]
        extras = frozenset(e for r in reqs for e in r.extras)
        pinned = all(str(r.specifier).startswith("==") for r in reqs) and reqs
        best: dict[Version, tuple[int, DistFile]] = {}
        for dist in self.index.files(name):
            usable = self._usable(dist)
            if usable is None:
                continue
            version, rank = usable
            if dist.yanked is not None and not pinned:
                continue
            if version in bad or not all(r.specifier.contains(version, prereleases=True
                                                              if version.is_prerelease and
                                                              r.specifier.prereleases
                                                              else None) for r in reqs):
                continue
            if version not in best or rank < best[version][0]:
                best[version] = (rank, dist)
        return [_Candidate(name, v, best[v][1], extras) for v in sorted(best, reverse=True)]

    def is_satisfied_by(self, requirement: Requirement, candidate: _Candidate) -> bool:
        return bool(requirement.specifier.contains(candidate.version, prereleases=True))

    def get_dependencies(self, candidate: _Candidate) -> Iterable[Requirement]:
        deps: list[Requirement] = []
        if candidate.extras:  # the extra-less base must be the same version
            deps.append(Requirement(f"{candidate.name}=={candidate.version}"))
        raw = self.index.core_metadata(candidate.dist)
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)
        for text in msg.get_all("Requires-Dist") or []:
            try:
                req = Requirement(text)
            except InvalidRequirement as exc:
                raise PipResolveError(f"{candidate.dist.filename}: {exc}") from None
            if req.marker is not None and not self._marker_ok(req.marker, candidate.extras):
                continue
            req.marker = None
            deps.append(req)
        return deps

    def _marker_ok(self, marker: Marker, extras: frozenset[str]) -> bool:
        return any(marker.evaluate({**self.environment, "extra": e}) for e in (extras or {""}))


def _order(pins: dict[str, _Candidate], graph: dict[str, list[str]]) -> list[str]:
    done: list[str] = []
    seen: set[str] = set()

    def visit(node: str, trail: frozenset[str]) -> None:
        if node in seen or node in trail:
            return
        for dep in sorted(graph.get(node, [])):
            visit(dep, trail | {node})
        seen.add(node)
        done.append(node)

    for node in sorted(pins):
        visit(node, frozenset())
    return done


def resolve_pip(index_url: str | None, requirements: Sequence[str],
                target: PipTarget | None = None, *, fetch: Fetch) -> PipPlan:
    """Resolve ``requirements`` against the PEP 691 index at ``index_url``; ``fetch(url,
    accept)`` returns a page's body and Content-Type (the scheduler's one HTTP client)."""
    if not index_url:
        raise PipResolveError("no index URL given")
    tgt = target or PipTarget()
    try:
        reqs = [Requirement(r) for r in requirements]
    except InvalidRequirement as exc:
        raise PipResolveError(str(exc)) from None
    provider = _Provider(_Index(index_url, fetch), tgt)
    try:
        result = Resolver(provider, BaseReporter()).resolve(reqs, max_rounds=2000)
    except ResolutionImpossible as exc:
        causes = "; ".join(f"{c.requirement} (from {c.parent.name if c.parent else 'request'})"
                           for c in exc.causes)
        raise PipResolveError(f"cannot satisfy: {causes}") from None
    pins = {k: v for k, v in result.mapping.items() if "[" not in k}
    graph: dict[str, list[str]] = {}
    for key in result.mapping:
        base = key.split("[")[0]
        children = [str(k).split("[")[0] for k in result.graph.iter_children(key) if k]
        graph.setdefault(base, []).extend(c for c in children if c != base)
    ordered = _order(pins, graph)
    out = []
    for key in ordered:
        cand = pins[key]
        if cand.dist.sha256 is None:
            raise PipResolveError(f"{cand.dist.filename}: the index gives no sha256")
        out.append(PipPin(cand.name, str(cand.version), cand.dist.filename, cand.dist.url,
                          cand.dist.sha256, cand.dist.size))
    return PipPlan(tuple(requirements), tgt, tuple(out))
