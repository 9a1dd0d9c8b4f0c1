"""`distro-sync resolve`: the ordered closure apt would install, as a plan (JSON or table)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _split_targets(args: argparse.Namespace) -> None:
    """``--index F1 F2 pkg1 pkg2``: trailing values that are not files are targets."""
    index: list[Path] = list(args.index)
    moved: list[str] = []
    while index and not index[-1].exists() and "/" not in str(index[-1]):
        moved.insert(0, str(index.pop()))
    args.index = index
    args.targets = [*moved, *args.targets]


def run(args: argparse.Namespace) -> int:
    from distro.errors import MalformedIndexError
    from distro.packages_index import load_index
    from distro.plans import SitePlan, build_deb_plan, index_specs, render_table
    from distro.resolver import ResolutionError, ResolveOptions

    _split_targets(args)
    if not args.targets:
        print("error: no TARGET given", file=sys.stderr)
        return 2
    try:
        index = load_index(index_specs(args.index), native_arch=args.arch,
                           foreign_arches=tuple(args.add_arch), cache_dir=args.cache_dir,
                           use_cache=not args.no_cache)
    except (OSError, MalformedIndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = ResolveOptions(install_recommends=args.recommends, include_base=args.include_base)
    try:
        plan, resolution = build_deb_plan(index, args.targets, options)
    except ResolutionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.alternatives:
            print("providers: " + ", ".join(exc.alternatives), file=sys.stderr)
        return 1
    if args.explain:
        status = 0
        for name in args.explain:
            try:
                print(resolution.explain(name))
            except KeyError:
                print(f"error: {name} is not part of the closure", file=sys.stderr)
                status = 1
        return status
    site = SitePlan("resolve", plan, None)
    if args.pip:
        from distro.pip_resolver import PipResolveError, PipTarget, resolve_pip
        from syncer.blocking_http import BlockingHttp

        try:
            with BlockingHttp() as http:
                site = SitePlan("resolve", plan, resolve_pip(args.pip_index, args.pip, PipTarget(
                    python_version=args.python_version, platform=args.platform),
                    fetch=http.get))
        except PipResolveError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.format == "table":
        print(render_table(plan))
        if site.pip is not None:
            print(site.pip.requirements_txt(), end="")
    elif site.pip is None:
        print(plan.to_json())
    else:
        print(site.to_json())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("resolve", help="the exact package closure apt would install, in order")
    p.add_argument("--index", type=Path, nargs="+", action="extend", required=True,
                   metavar="FILE", help="Packages files (plain/.gz/.xz/.lz4) and (In)Release")
    rec = p.add_mutually_exclusive_group()
    rec.add_argument("--recommends", dest="recommends", action="store_true", default=True,
                     help="follow Recommends (the default, as apt)")
    rec.add_argument("--no-recommends", dest="recommends", action="store_false")
    p.add_argument("--arch", default="amd64", help="native architecture (default amd64)")
    p.add_argument("--add-arch", action="append", default=[], metavar="A",
                   help="an additional (foreign) architecture; repeatable")
    p.add_argument("--include-base", action="store_true",
                   help="also install the Essential / Priority: required base set")
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--explain", action="append", default=[], metavar="NAME",
                   help="print the dependency chain that pulled NAME in")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="package cache directory (default ~/.cache/edgedepot/deb-index)")
    p.add_argument("--no-cache", action="store_true",
                   help="build the package cache in memory only (slow: parses every index)")
    p.add_argument("--pip-index", default=None, metavar="URL",
                   help="a PEP 691 simple index (e.g. a cache node's /pypi/<name>/simple/)")
    p.add_argument("--pip", action="append", default=[], metavar="REQ",
                   help="a pip requirement to resolve against --pip-index; repeatable")
    p.add_argument("--python-version", default="3.11")
    p.add_argument("--platform", default="manylinux_2_36_x86_64")
    p.add_argument("targets", nargs="*", metavar="TARGET",
                   help="what apt-get install would be given: NAME, NAME:ARCH, NAME=VERSION, "
                        "or a virtual package with one provider")
    p.set_defaults(func=run)
