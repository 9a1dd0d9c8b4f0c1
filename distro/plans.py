"""Plans: a resolved, ordered closure as the list of artifacts to pre-warm, with digests.

A :class:`DebPlan` is what ``distro-sync resolve`` prints: for each package in install order its
name, version, architecture, pool filename, size and sha256. Index arguments may mix Packages
files and the Release/InRelease files that give their pin priorities.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from distro.install_order import order_ids
from distro.packages_index import IndexSpec, PackageIndex, release_priority
from distro.resolver import Resolution, ResolveOptions, resolve

if TYPE_CHECKING:  # the pip side is imported when a site plan has pip requirements
    from distro.pip_resolver import Fetch, PipPlan, PipTarget

__all__ = [
    "DebPlan",
    "PlanEntry",
    "SitePlan",
    "build_deb_plan",
    "build_site_plan",
    "index_specs",
    "render_table",
]

_RELEASE_NAMES = ("InRelease", "Release")


@dataclass(frozen=True)
class PlanEntry:
    """One .deb of a plan."""

    name: str
    version: str
    arch: str
    filename: str
    size: int
    sha256: str
    cycle: int | None


@dataclass(frozen=True)
class DebPlan:
    """The ordered closure for some targets."""

    targets: tuple[str, ...]
    install_recommends: bool
    native_arch: str
    entries: tuple[PlanEntry, ...]
    cycles: tuple[tuple[str, ...], ...]

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> str:
        """The plan as JSON: one line per field, one line per package (compact and quick:
        the C encoder does each line)."""
        head = {"targets": list(self.targets), "install_recommends": self.install_recommends,
                "arch": self.native_arch, "count": len(self.entries),
                "total_size": self.total_size}
        lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
        packages = ",\n".join(
            "    " + json.dumps({"name": e.name, "version": e.version, "arch": e.arch,
                                 "filename": e.filename, "size": e.size, "sha256": e.sha256,
                                 "cycle": e.cycle}) for e in self.entries)
        cycles = ",\n".join("    " + json.dumps(list(c)) for c in self.cycles)
        return ("{\n" + "\n".join(lines) + '\n  "packages": [\n' + packages
                + '\n  ],\n  "cycles": [\n' + cycles + "\n  ]\n}")


def _release_for(packages: Path, releases: Sequence[Path]) -> Path | None:
    """The Release file of a Packages file: same apt-lists prefix or same dists/<suite>/."""
    name = packages.name
    m = re.match(r"(.*_dists_[^_]+)_", name)
    for rel in releases:
        if m and rel.name in (f"{m.group(1)}_{r}" for r in _RELEASE_NAMES):
            return rel
        if not m and rel.parent in packages.parents and rel.name in _RELEASE_NAMES:
            return rel
    if m:
        for r in _RELEASE_NAMES:
            sibling = packages.with_name(f"{m.group(1)}_{r}")
            if sibling.is_file():
                return sibling
    return None


def index_specs(paths: Sequence[Path]) -> list[IndexSpec]:
    """IndexSpecs for Packages files, pin priorities taken from matching (In)Release files."""
    releases = [p for p in paths if p.name.endswith(_RELEASE_NAMES)]
    specs: list[IndexSpec] = []
    for path in paths:
        if path in releases:
            continue
        rel = _release_for(path, releases)
        priority = 500
        if rel is not None:
            priority = release_priority(rel.read_text(encoding="utf-8", errors="replace"))
        specs.append(IndexSpec(path, priority))
    return specs


def build_deb_plan(index: PackageIndex, targets: Sequence[str],
                   options: ResolveOptions | None = None) -> tuple[DebPlan, Resolution]:
    """Resolve ``targets`` as apt would and order the closure into a plan."""
    opts = options or ResolveOptions()
    resolution = resolve(index, targets, opts)
    ordered, cycles = order_ids(index, resolution.ids)
    cycle_of = {name: i for i, c in enumerate(cycles) for name in c}
    c = index.cache
    entries = []
    for v in ordered:
        name = c.pkg_name(c.v_pkg[v])
        entries.append(PlanEntry(name, c.string(c.v_str[v]), c.string(c.v_arch[v]),
                                 c.string(c.v_filename[v]), c.v_size[v],
                                 c.string(c.v_sha256[v]), cycle_of.get(name)))
    plan = DebPlan(resolution.targets, opts.install_recommends, index.native_arch,
                   tuple(entries), tuple(cycles))
    return plan, resolution


def render_table(plan: DebPlan) -> str:
    """A plain-text table of the plan (one line per package, in install order)."""
    rows = [("#", "package", "version", "arch", "size", "sha256", "filename")]
    for i, e in enumerate(plan.entries, 1):
        mark = f"{i}" if e.cycle is None else f"{i}@{e.cycle}"
        rows.append((mark, e.name, e.version, e.arch, str(e.size), e.sha256[:16], e.filename))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r[:-1], widths, strict=False)) + "  " + r[-1]
             for r in rows]
    lines.append(f"{len(plan.entries)} packages, {plan.total_size} bytes"
                 + (f", {len(plan.cycles)} dependency cycle(s) (#@n)" if plan.cycles else ""))
    return "\n".join(lines)


@dataclass(frozen=True)
class SitePlan:
    """Everything a site profile installs: the .deb plan, then the pip plan (if any).

    ``artifacts`` is the single ordered list a scheduler pre-warms: (kind, path or URL, sha256,
    size), debs first in install order, then the pinned Python files in install order.
    """

    name: str
    deb: DebPlan
    pip: PipPlan | None

    @property
    def artifacts(self) -> tuple[tuple[str, str, str, int | None], ...]:
        debs = [("deb", e.filename, e.sha256, e.size) for e in self.deb.entries]
        pips = [("pip", p.url, p.sha256, p.size) for p in self.pip.pins] if self.pip else []
        return tuple(debs + pips)

    def to_json(self) -> str:
        return json.dumps({
            "name": self.name, "deb": json.loads(self.deb.to_json()),
            "pip": json.loads(self.pip.to_json()) if self.pip else None,
            "artifacts": [{"kind": k, "ref": r, "sha256": h, "size": n}
                          for k, r, h, n in self.artifacts]}, indent=2)


def build_site_plan(name: str, index: PackageIndex, packages: Sequence[str],
                    options: ResolveOptions | None = None, *, pip_index: str | None = None,
                    pip_requirements: Sequence[str] = (),
                    pip_target: PipTarget | None = None,
                    pip_fetch: Fetch | None = None) -> SitePlan:
    """A site profile (Debian packages + pip requirements) as one ordered plan; `pip_fetch`
    reads the pip index (needed when there are pip requirements)."""
    deb, _resolution = build_deb_plan(index, packages, options)
    pip = None
    if pip_requirements:
        from distro.pip_resolver import PipResolveError, resolve_pip

        if pip_fetch is None:
            raise PipResolveError("pip requirements need a way to read the index")
        pip = resolve_pip(pip_index, pip_requirements, pip_target, fetch=pip_fetch)
    return SitePlan(name, deb, pip)
