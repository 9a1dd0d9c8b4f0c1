"""`distro-sync demo`: the self-contained demonstration.

Builds a signed apt repository of real `.deb` files and a few wheels, starts an origin and two
regions (a parent cache that talks to the origin and a child cache behind it, each a real
`cache-node` process on loopback), writes a fleet inventory, plans and pushes each region's
prefetch plan (progress bars), runs parallel real `apt-get` and `pip download` site installs,
publishes a package update and syncs the regions' indexes by delta, and prints what crossed the
"WAN" (origin to regions) against what the sites downloaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distro.debian_repo import stop_gpg_agent
from distro.sizes import format_size
from syncer.cmd_fleet import push_plans, sync_indexes
from syncer.demo.apt_site import AptRoot
from syncer.demo.images import build_image_pair, fetch_image
from syncer.demo.node_process import NodeProcess
from syncer.demo.sample_repo import SampleAptRepo, SampleDeb, build_deb, build_sample_apt_repo
from syncer.demo.sample_wheels import build_sample_wheels
from syncer.inventory import load_inventory
from syncer.planner import plan_regions

REGIONS = ("north", "south")


@dataclass(frozen=True)
class SiteResult:
    site: str
    region: str
    files: int
    bytes: int
    seconds: float
    verified: bool
    error: str = ""


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k.lower() not in
           {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", PIP_NO_INPUT="1", NO_PROXY="127.0.0.1,localhost")
    return env


def _apt_site(name: str, region: str, root: Path, keyring: Path | None, node_url: str,
              target: str, expected: set[str]) -> SiteResult:
    started = time.monotonic()
    site = AptRoot(root, keyring)
    site.set_source(f"{node_url}/apt/main")
    try:
        site.run("update")
        site.run("install", "-y", "--download-only", target)
    except AssertionError as exc:
        return SiteResult(name, region, 0, 0, time.monotonic() - started, False, str(exc)[-300:])
    debs = site.archives()
    verified = all(hashlib.sha256(d.read_bytes()).hexdigest() in expected for d in debs)
    return SiteResult(name, region, len(debs), sum(d.stat().st_size for d in debs),
                      time.monotonic() - started, verified)


def _pip_site(name: str, region: str, out: Path, node_url: str,
              originals: dict[str, str]) -> SiteResult:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--index-url",
         f"{node_url}/pypi/wheels/simple/", "-d", str(out), "edge-agent"],
        capture_output=True, text=True, env=_pip_env(), timeout=300, check=False)
    if proc.returncode != 0:
        return SiteResult(name, region, 0, 0, time.monotonic() - started, False, proc.stderr[-300:])
    files = list(out.iterdir())
    verified = all(hashlib.sha256(f.read_bytes()).hexdigest() == originals.get(f.name)
                   for f in files)
    return SiteResult(name, region, len(files), sum(f.stat().st_size for f in files),
                      time.monotonic() - started, verified)


def _mb(n: float) -> str:
    return format_size(n)


def _write_inventory(path: Path, origin: NodeProcess, nodes: dict[str, NodeProcess],
                     top: str, sites_per_region: int) -> Path:
    lines = [f'origin = "{origin.url}"', ""]
    for region in REGIONS:
        lines += [f"[regions.{region}]", f'parent = "{nodes[region + "-parent"].url}"',
                  f'children = ["{nodes[region + "-child"].url}"]', "concurrency = 4", ""]
    lines += ["[profiles.compute-node]",
              f'apt = {{ repo = "main", suite = "stable", packages = ["{top}"] }}',
              'pip = { index = "wheels", requirements = ["edge-agent"] }', ""]
    for region in REGIONS:
        for i in range(sites_per_region):
            lines += [f"[sites.{region}-{i:02d}]", f'region = "{region}"',
                      'profile = "compute-node"', ""]
    path.write_text("\n".join(lines))
    return path


def _run_sites(work: Path, repo: SampleAptRepo, nodes: dict[str, NodeProcess],
               clients: int, expected: set[str], originals: dict[str, str]) -> list[SiteResult]:
    per_region = max(1, clients // len(REGIONS))
    with ThreadPoolExecutor(min(16, clients + 4)) as pool:
        jobs = []
        for region in REGIONS:
            for i in range(per_region):
                node = nodes[f"{region}-{'child' if i % 2 else 'parent'}"]
                jobs.append(pool.submit(_apt_site, f"{region}-{i:02d}", region,
                                        work / "sites" / f"{region}{i:02d}",
                                        repo.public_keyring, node.url, repo.top_package,
                                        expected))
            jobs.append(pool.submit(_pip_site, f"{region}-pip", region,
                                    work / "pip" / region / "dl", nodes[f"{region}-child"].url,
                                    originals))
        return [j.result() for j in jobs]


def run_demo(workdir: Path | None, *, clients: int = 10, n_packages: int = 40,
             total_bytes: int = 20_000_000) -> int:
    console = Console()
    for tool in ("dpkg-deb", "gpg", "apt-get"):
        if shutil.which(tool) is None:
            console.print(f"[red]{tool} is missing: run `make demo`, which installs it[/red]")
            return 2
    own_tmp = workdir is None
    work = Path(tempfile.mkdtemp(prefix="edgedepot-demo-")) if workdir is None else workdir
    work.mkdir(parents=True, exist_ok=True)
    nodes: dict[str, NodeProcess] = {}
    origin: NodeProcess | None = None
    repo: SampleAptRepo | None = None
    started = time.monotonic()
    try:
        with console.status("building a signed apt repository of real .deb files and wheels"):
            repo = build_sample_apt_repo(work / "repo", n_packages=n_packages,
                                         total_bytes=total_bytes, seed=1, signed=True)
            wheels = work / "wheels"
            wheels.mkdir(exist_ok=True)
            build_sample_wheels(wheels)
            image_v1, image_v2 = build_image_pair(work / "images")
        assert repo.signing_key is not None
        deb_bytes = sum(p.stat().st_size for p in repo.deb_dir.glob("*.deb"))
        console.print(f"[bold]1. origin content[/bold]: {len(repo.specs)} packages "
                      f"({_mb(deb_bytes)}), {len(list(wheels.glob('*.whl')))} wheels, "
                      f"images {image_v1} and {image_v2}")
        origin = NodeProcess(
            ["--role", "origin", "--store", str(work / "origin"),
             "--apt", f"main={repo.deb_dir}", "--pypi", f"wheels={wheels}",
             "--images", str(work / "images"),
             "--gnupg-home", str(repo.signing_key.gnupg_home),
             "--signing-key", repo.signing_key.key_id], work / "origin.log").start()
        for region in REGIONS:
            parent = NodeProcess(["--role", "cache", "--store", str(work / f"{region}-parent"),
                                  "--upstream", origin.url, "--index-ttl", "1"],
                                 work / f"{region}-parent.log").start()
            nodes[f"{region}-parent"] = parent
            nodes[f"{region}-child"] = NodeProcess(
                ["--role", "cache", "--store", str(work / f"{region}-child"),
                 "--upstream", parent.url, "--index-ttl", "1"],
                work / f"{region}-child.log").start()
        console.print(f"[bold]2. fleet[/bold]: origin {origin.url}; " + "; ".join(
            f"{r}: parent {nodes[r + '-parent'].url} -> child {nodes[r + '-child'].url}"
            for r in REGIONS))
        inventory_path = _write_inventory(work / "fleet.toml", origin, nodes, repo.top_package,
                                          max(1, clients // len(REGIONS)))
        inventory = load_inventory(inventory_path)
        plans = plan_regions(inventory, work / "plan-indexes")
        for plan in plans:
            console.print(f"[bold]3. plan[/bold] {plan.region}: {len(plan.spec.artifacts)} "
                          f"artifacts in install order ({plan.apt_packages} .deb, "
                          f"{plan.pip_files} pip files), {_mb(plan.total_bytes)}")
        t_push = time.monotonic()
        console.print("[bold]4. push[/bold]: each region's parent and child pull the plan")
        pushed, _ = asyncio.run(push_plans(inventory, plans, True, console, 600))
        push_seconds = time.monotonic() - t_push
        if not all(row.status.state == "complete" for row in pushed):
            console.print("[red]push did not complete on every node[/red]")
        wan_after_push = nodes["north-parent"].metric_total("edgedepot_upstream_bytes_total") + \
            nodes["south-parent"].metric_total("edgedepot_upstream_bytes_total")
        expected = {hashlib.sha256(p.read_bytes()).hexdigest() for p in repo.deb_dir.glob("*.deb")}
        originals = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in wheels.iterdir()}
        t_sites = time.monotonic()
        with console.status(f"5. {clients} apt-get sites and {len(REGIONS)} pip sites "
                            "installing at once"):
            results = _run_sites(work, repo, nodes, clients, expected, originals)
        sites_seconds = time.monotonic() - t_sites
        table = Table(title="5. site installs (download only, verified against the indexes)")
        for col in ("site", "region", "files", "bytes", "seconds", "verified"):
            table.add_column(col, justify="left" if col in ("site", "region") else "right")
        for r in results:
            table.add_row(r.site, r.region, str(r.files), _mb(r.bytes), f"{r.seconds:.1f}",
                          "[green]yes[/green]" if r.verified else f"[red]NO[/red] {r.error}")
        console.print(table)
        served_before_update = origin.served()
        # 6. The origin publishes an update; the regions sync their indexes by delta.
        build_deb(SampleDeb("edge-security-fix", "1.0", "all", (), (), (), (), 50_000,
                            "urgent fix"), repo.deb_dir, seed=99)
        time.sleep(2.5)  # origin rescan interval and the caches' index TTL
        sync_rows = asyncio.run(sync_indexes(inventory))
        moved = sum(row.report.bytes_moved for row in sync_rows)
        full = sum(row.report.full_bytes for row in sync_rows)
        console.print(f"[bold]6. index update[/bold]: 1 package published; {len(sync_rows)} "
                      f"indexes synced, {_mb(moved)} moved where whole files would have moved "
                      f"{_mb(full)}")
        # 7. A region boots VMs from v1, then the new image version v2 arrives by delta.
        parent = nodes["north-parent"]
        first = fetch_image(parent, image_v1)
        second = fetch_image(parent, image_v2)
        console.print(f"[bold]7. images[/bold] via {parent.url}/glance: {first.name} "
                      f"{_mb(first.size)} moved {_mb(first.upstream_bytes)} (whole); "
                      f"{second.name} {_mb(second.size)} moved {_mb(second.upstream_bytes)}"
                      f" ({'delta' if second.upstream_bytes < second.size // 2 else 'whole'})"
                      f"; verified: {first.verified and second.verified}")
        artifact_paths = [p for p in served_before_update if "/pool/" in p or
                          ("/files/" in p and not p.endswith(".metadata"))]
        repeated = {p: n for p, n in served_before_update.items()
                    if p in artifact_paths and n > len(REGIONS)}
        wan = sum(nodes[f"{r}-parent"].metric_total("edgedepot_upstream_bytes_total")
                  for r in REGIONS)
        lan = sum(n.metric_total("edgedepot_served_bytes_total") for n in nodes.values())
        site_bytes = sum(r.bytes for r in results)
        apt_sizes = [r.bytes for r in results if not r.site.endswith("pip") and r.files]
        pip_sizes = [r.bytes for r in results if r.site.endswith("pip") and r.files]
        unique = max(apt_sizes, default=0) + max(pip_sizes, default=0)
        summary = Table(title="summary: what crossed the WAN (origin -> regions)")
        summary.add_column("measure")
        summary.add_column("value", justify="right")
        summary.add_row("regions x nodes", f"{len(REGIONS)} x 2 (parent + child)")
        summary.add_row("sites", f"{len(results)} ({clients} apt-get, {len(REGIONS)} pip)")
        summary.add_row("unique artifact bytes per region (debs + wheels)", _mb(unique))
        summary.add_row("WAN bytes after the push (both regions)", _mb(wan_after_push))
        summary.add_row("WAN bytes / (unique x regions) after the push",
                        f"{wan_after_push / (unique * len(REGIONS)):.3f}" if unique else "-")
        summary.add_row("bytes the sites downloaded", _mb(site_bytes))
        summary.add_row("bytes served on the LAN by the regional nodes", _mb(lan))
        summary.add_row("WAN bytes in all (incl. indexes and the update)", _mb(wan))
        summary.add_row("artifacts fetched from the origin more than once per region",
                        str(len(repeated)))
        summary.add_row("index update: moved / whole", f"{_mb(moved)} / {_mb(full)}")
        summary.add_row("image v1 -> v2 update: moved / image size",
                        f"{_mb(second.upstream_bytes)} / {_mb(second.size)}")
        summary.add_row("push time / site install time", f"{push_seconds:.1f} s / "
                        f"{sites_seconds:.1f} s")
        console.print(summary)
        ok = all(r.verified for r in results) and not repeated and first.verified and \
            second.verified and \
            all(row.status.state == "complete" for row in pushed)
        console.print("[green]every site got verified files; each artifact crossed the WAN "
                      "once per region[/green]" if ok else "[red]the demo found a problem "
                      "(see above)[/red]")
        console.print(f"total demo time {time.monotonic() - started:.1f} s")
        return 0 if ok else 1
    finally:
        for node in reversed(list(nodes.values())):
            node.stop()
        if origin is not None:
            origin.stop()
        if repo is not None and repo.signing_key is not None:
            stop_gpg_agent(repo.signing_key)
            real_home = repo.signing_key.gnupg_home.resolve()
            if real_home != repo.signing_key.gnupg_home:
                shutil.rmtree(real_home, ignore_errors=True)
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
