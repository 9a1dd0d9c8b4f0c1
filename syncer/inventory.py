"""The fleet inventory (TOML): origin, regions with their cache nodes, site profiles, sites.

```toml
origin = "http://origin.example:8080"

[regions.eu-west]
parent = "http://cache-eu.example:8080"        # talks to the origin
children = ["http://cache-eu-2.example:8080"]  # talk to the parent
bandwidth = "40M"                              # bytes/s each node may pull for a plan
concurrency = 4

[profiles.compute]
apt = { repo = "main", suite = "stable", packages = ["nova-compute"], recommends = true }
pip = { index = "local", requirements = ["edge-agent>=2"] }
images = ["cirros-0.6"]

[sites.site-001]
region = "eu-west"
profile = "compute"
```
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from distro.sizes import parse_size

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InventoryError(ValueError):
    """The inventory is invalid; the message names the entry and what is wrong."""


@dataclass(frozen=True)
class Region:
    name: str
    parent: str
    children: tuple[str, ...]
    bandwidth: int | None
    concurrency: int

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.parent, *self.children)


@dataclass(frozen=True)
class AptProfile:
    repo: str
    suite: str
    packages: tuple[str, ...]
    recommends: bool
    arch: str


@dataclass(frozen=True)
class PipProfile:
    index: str
    requirements: tuple[str, ...]
    python_version: str
    platform: str


@dataclass(frozen=True)
class Profile:
    name: str
    apt: AptProfile | None
    pip: PipProfile | None
    images: tuple[str, ...]


@dataclass(frozen=True)
class Site:
    name: str
    region: str
    profile: str


@dataclass(frozen=True)
class Inventory:
    origin: str
    regions: dict[str, Region]
    profiles: dict[str, Profile]
    sites: dict[str, Site]

    def sites_in(self, region: str) -> list[Site]:
        return [s for s in self.sites.values() if s.region == region]

    def profiles_of(self, region: str) -> list[Profile]:
        names = sorted({s.profile for s in self.sites_in(region)})
        return [self.profiles[n] for n in names]


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InventoryError(f"{where}: expected a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InventoryError(f"{where}: expected an http(s) URL, got {value!r}")
    return value.rstrip("/")


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InventoryError(f"{where}: expected a list of strings")
    return tuple(value)


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise InventoryError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(allowed)})")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(known)}"


def _region(name: str, table: Any) -> Region:
    where = f"regions.{name}"
    if not isinstance(table, dict):
        raise InventoryError(f"{where}: expected a table")
    _check_keys(table, {"parent", "children", "bandwidth", "concurrency"}, where)
    try:
        bandwidth = parse_size(table.get("bandwidth"), f"{where}.bandwidth")
    except ValueError as exc:
        raise InventoryError(str(exc)) from None
    concurrency = table.get("concurrency", 4)
    if not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
        raise InventoryError(f"{where}.concurrency: an integer from 1 to 64")
    children = tuple(_url(c, f"{where}.children") for c in _strings(table.get("children"),
                                                                        f"{where}.children"))
    return Region(name, _url(table.get("parent"), f"{where}.parent"), children, bandwidth,
                  concurrency)


def _profile(name: str, table: Any) -> Profile:
    where = f"profiles.{name}"
    if not isinstance(table, dict):
        raise InventoryError(f"{where}: expected a table")
    _check_keys(table, {"apt", "pip", "images"}, where)
    apt = None
    if "apt" in table:
        t = table["apt"]
        if not isinstance(t, dict):
            raise InventoryError(f"{where}.apt: expected a table")
        _check_keys(t, {"repo", "suite", "packages", "recommends", "arch"}, f"{where}.apt")
        packages = _strings(t.get("packages"), f"{where}.apt.packages")
        if not packages:
            raise InventoryError(f"{where}.apt.packages: at least one package")
        apt = AptProfile(str(t.get("repo", "main")), str(t.get("suite", "stable")), packages,
                         bool(t.get("recommends", True)), str(t.get("arch", "amd64")))
    pip = None
    if "pip" in table:
        t = table["pip"]
        if not isinstance(t, dict):
            raise InventoryError(f"{where}.pip: expected a table")
        _check_keys(t, {"index", "requirements", "python_version", "platform"}, f"{where}.pip")
        requirements = _strings(t.get("requirements"), f"{where}.pip.requirements")
        if not requirements:
            raise InventoryError(f"{where}.pip.requirements: at least one requirement")
        pip = PipProfile(str(t.get("index", "local")), requirements,
                         str(t.get("python_version", "3.11")),
                         str(t.get("platform", "manylinux_2_36_x86_64")))
    images = _strings(table.get("images"), f"{where}.images")
    if apt is None and pip is None and not images:
        raise InventoryError(f"{where}: names no apt packages, pip requirements or images")
    return Profile(name, apt, pip, images)


def parse_inventory(tree: dict[str, Any]) -> Inventory:
    _check_keys(tree, {"origin", "regions", "profiles", "sites"}, "inventory")
    origin = _url(tree.get("origin"), "origin")
    regions: dict[str, Region] = {}
    for name, table in dict(tree.get("regions", {})).items():
        if not _NAME.match(name):
            raise InventoryError(f"regions.{name}: invalid name")
        regions[name] = _region(name, table)
    if not regions:
        raise InventoryError("regions: at least one region")
    profiles = {name: _profile(name, t) for name, t in dict(tree.get("profiles", {})).items()}
    sites: dict[str, Site] = {}
    for name, table in dict(tree.get("sites", {})).items():
        where = f"sites.{name}"
        if not isinstance(table, dict):
            raise InventoryError(f"{where}: expected a table")
        _check_keys(table, {"region", "profile"}, where)
        region, profile = str(table.get("region", "")), str(table.get("profile", ""))
        if region not in regions:
            raise InventoryError(f"{where}: unknown region {region!r}{_suggest(region, sorted(regions))}")
        if profile not in profiles:
            raise InventoryError(
                f"{where}: unknown profile {profile!r}{_suggest(profile, sorted(profiles))}")
        sites[name] = Site(name, region, profile)
    return Inventory(origin, regions, profiles, sites)


def load_inventory(path: Path) -> Inventory:
    try:
        tree = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: invalid TOML: {exc}") from None
    return parse_inventory(tree)


def suggest_package(name: str, known: list[str]) -> str:
    """A message fragment naming the closest known package names."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return f" (closest: {', '.join(close)})" if close else ""
