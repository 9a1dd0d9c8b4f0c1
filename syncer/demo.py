"""`distro-sync demo`: the self-contained demonstration.

Builds a signed apt repository of real `.deb` files and a few wheels, starts an origin and a
regional cache (real `cache-node` processes on loopback), runs concurrent real `apt-get` site
installs (download only, private roots) and real `pip download`s through the cache, and prints
what crossed the "WAN" (origin to cache) against the unique bytes the sites needed.
"""

from __future__ import annotations

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
from distro.sample_repo import build_sample_apt_repo
from distro.sample_wheels import build_sample_wheels
from syncer.apt_site import AptRoot
from syncer.node_process import NodeProcess


@dataclass(frozen=True)
class SiteResult:
    site: str
    files: int
    bytes: int
    seconds: float
    verified: bool
    error: str = ""


def _pip_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k.lower() not in
           {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", PIP_NO_INPUT="1", NO_PROXY="127.0.0.1,localhost")
    return env


def _apt_site(name: str, root: Path, keyring: Path | None, cache_url: str, target: str,
              expected: dict[str, str]) -> SiteResult:
    started = time.monotonic()
    site = AptRoot(root, keyring)
    site.set_source(f"{cache_url}/apt/main")
    try:
        site.run("update")
        site.run("install", "-y", "--download-only", target)
    except AssertionError as exc:
        return SiteResult(name, 0, 0, time.monotonic() - started, False, str(exc)[-300:])
    debs = site.archives()
    verified = all(hashlib.sha256(d.read_bytes()).hexdigest() in expected.values() for d in debs)
    return SiteResult(name, len(debs), sum(d.stat().st_size for d in debs),
                      time.monotonic() - started, verified)


def _pip_site(name: str, out: Path, cache_url: str, originals: dict[str, str]) -> SiteResult:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--only-binary", ":all:", "--index-url",
         f"{cache_url}/pypi/wheels/simple/", "-d", str(out), "edge-agent"],
        capture_output=True, text=True, env=_pip_env(out.parent), timeout=300, check=False)
    if proc.returncode != 0:
        return SiteResult(name, 0, 0, time.monotonic() - started, False, proc.stderr[-300:])
    files = list(out.iterdir())
    verified = all(hashlib.sha256(f.read_bytes()).hexdigest() == originals.get(f.name)
                   for f in files)
    return SiteResult(name, len(files), sum(f.stat().st_size for f in files),
                      time.monotonic() - started, verified)


def _unique_bytes(cache: NodeProcess) -> int:
    """Sum of the sizes of the distinct paths the cache served (asked again, warm)."""
    total = 0
    for path in cache.served():
        status, body, _ = cache.get(path)
        if status == 200:
            total += len(body)
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


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
    nodes: list[NodeProcess] = []
    repo = None
    started = time.monotonic()
    try:
        with console.status("building a signed apt repository of real .deb files ..."):
            repo = build_sample_apt_repo(work / "repo", n_packages=n_packages,
                                         total_bytes=total_bytes, seed=1, signed=True)
            wheels = work / "wheels"
            wheels.mkdir(exist_ok=True)
            build_sample_wheels(wheels)
        deb_bytes = sum(p.stat().st_size for p in repo.deb_dir.glob("*.deb"))
        console.print(f"repository: {len(repo.specs)} packages, {_mb(deb_bytes)}; "
                      f"{len(list(wheels.glob('*.whl')))} wheels")
        assert repo.signing_key is not None
        origin = NodeProcess(
            ["--role", "origin", "--store", str(work / "origin"),
             "--apt", f"main={repo.deb_dir}", "--pypi", f"wheels={wheels}",
             "--gnupg-home", str(repo.signing_key.gnupg_home),
             "--signing-key", repo.signing_key.key_id], work / "origin.log").start()
        nodes.append(origin)
        cache = NodeProcess(["--role", "cache", "--store", str(work / "cache"),
                             "--upstream", origin.url], work / "cache.log").start()
        nodes.append(cache)
        console.print(f"origin {origin.url}   regional cache {cache.url}")
        originals = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in wheels.iterdir()}
        expected = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in repo.deb_dir.glob("*.deb")}
        t0 = time.monotonic()
        with console.status(f"{clients} sites running apt-get update + install "
                            f"--download-only {repo.top_package} and pip download at once ..."), \
                ThreadPoolExecutor(clients + 2) as pool:
            apt_jobs = [pool.submit(_apt_site, f"site-{i:02d}", work / "sites" / f"s{i:02d}",
                                    repo.public_keyring, cache.url, repo.top_package,
                                    expected) for i in range(clients)]
            pip_jobs = [pool.submit(_pip_site, f"pip-{i}", work / "pip" / f"p{i}" / "dl",
                                    cache.url, originals) for i in range(2)]
            results = [j.result() for j in apt_jobs + pip_jobs]
        wall = time.monotonic() - t0
        table = Table(title="site installs through the regional cache")
        for col in ("site", "files", "bytes", "seconds", "verified"):
            table.add_column(col, justify="right" if col != "site" else "left")
        for r in results:
            table.add_row(r.site, str(r.files), _mb(r.bytes), f"{r.seconds:.1f}",
                          "[green]yes[/green]" if r.verified else f"[red]NO[/red] {r.error}")
        console.print(table)
        metrics = cache.metrics()
        wan = sum(v for (k, _), v in metrics.items() if k == "edgedepot_upstream_bytes_total")
        wan_requests = sum(v for (k, _), v in metrics.items()
                           if k == "edgedepot_upstream_requests_total")
        lan = sum(v for (k, _), v in metrics.items() if k == "edgedepot_served_bytes_total")
        served = origin.served()
        unique_paths = [p for p in served if "/pool/" in p or "/files/" in p or "by-hash" in p]
        repeated = {p: n for p, n in served.items() if n > 1 and p in unique_paths}
        unique = _unique_bytes(cache)
        summary = Table(title="what crossed the WAN (origin -> regional cache)")
        summary.add_column("measure")
        summary.add_column("value", justify="right")
        summary.add_row("sites (apt + pip)", f"{clients} + 2")
        summary.add_row("bytes the sites downloaded (LAN)", _mb(lan))
        summary.add_row("unique bytes (distinct files the sites asked for)", _mb(unique))
        summary.add_row("bytes that crossed the WAN", _mb(wan))
        summary.add_row("WAN requests", f"{wan_requests:.0f}")
        summary.add_row("artifacts fetched from origin more than once", str(len(repeated)))
        summary.add_row("WAN bytes / unique bytes", f"{wan / unique:.3f}" if unique else "-")
        summary.add_row("WAN bytes / LAN bytes", f"{wan / lan:.3f}" if lan else "-")
        summary.add_row("wall time of all site installs", f"{wall:.1f} s")
        console.print(summary)
        ok = all(r.verified for r in results) and not repeated
        console.print("[green]every site got verified files; each artifact crossed the WAN "
                      "once[/green]" if ok else "[red]demo found a problem (see above)[/red]")
        console.print(f"total demo time {time.monotonic() - started:.1f} s")
        return 0 if ok else 1
    finally:
        for node in reversed(nodes):
            node.stop()
        if repo is not None and repo.signing_key is not None:
            stop_gpg_agent(repo.signing_key)
            real_home = repo.signing_key.gnupg_home.resolve()
            if real_home != repo.signing_key.gnupg_home:
                shutil.rmtree(real_home, ignore_errors=True)
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
