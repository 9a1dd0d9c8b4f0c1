"""Fleet benchmark (issue 6): 2 regions x N apt-get sites behind an emulated WAN.

``python -m benchmarks.fleet [--quick] [--debs N --total-mb M] [--sites N]``

An origin ``cache-node`` runs in a network namespace behind one tbf-capped veth link per region
(see :mod:`benchmarks.fleet_net`; a pacing proxy when namespaces are unavailable). Every site is
a real ``apt-get update && apt-get install --download-only`` of the compute-node profile in a
private root. Scenarios:

* ``prewarm``: fresh edgedepot regional caches, ``distro-sync push`` of the profile, then sites
* ``cold``: fresh edgedepot regional caches, sites straight away
* ``acng``: apt-cacher-ng as each region's cache
* ``direct``: every site straight from the origin over its region's WAN link

Per region: WAN bytes (origin-side link tx counter delta), unique bytes (distinct .debs the
sites fetched + the index files apt fetches), their ratio, and the time until every site is done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from debian.deb822 import Packages, Release
from rich.console import Console
from rich.table import Table

from benchmarks.fleet_env import (
    FleetData,
    FleetDataParams,
    OriginProcess,
    Wan,
    WanSpec,
    drop_key,
    load_or_build,
    open_wan,
    run_key,
)
from benchmarks.peers import AptCacherNgPeer
from benchmarks.report import RowLog
from distro.wire import parse_metrics
from syncer.demo.apt_site import AptRoot
from syncer.demo.node_process import NodeProcess

REGIONS = ("north", "south")
REPO = "bench"  # the origin serves /apt/bench/ (matches benchmarks.peers' apt-cacher-ng remap)
SUITE = "stable"
SCENARIOS = ("prewarm", "cold", "acng", "direct")
LABELS = {"prewarm": "(a) pre-warm", "cold": "(b) cold cache", "acng": "(c) apt-cacher-ng",
          "direct": "(d) from origin"}
RESULTS = Path(__file__).resolve().parent / "results"
DISTRO_SYNC = str(Path(sys.executable).parent / "distro-sync")


@dataclass(frozen=True)
class PoolEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class RepoFacts:
    """What the origin publishes: the index files apt fetches and every pool file's digest."""

    index_files: tuple[tuple[str, int], ...]
    pool: dict[str, PoolEntry]  # basename of Filename -> digest and size

    @property
    def index_bytes(self) -> int:
        return sum(size for _, size in self.index_files)


@dataclass(frozen=True)
class SiteResult:
    site: str
    region: str
    ok: bool
    seconds: float
    debs: int
    deb_bytes: int
    verified: bool
    error: str  # of every failed attempt, in order
    attempts: int


@dataclass(frozen=True)
class RegionResult:
    region: str
    wan_bytes: int | None  # None: not measurable per region (proxy mode)
    wan_bytes_during_sites: int | None  # the part after the push finished
    unique_bytes: int
    upstream_body_bytes: int | None  # edgedepot cache's edgedepot_upstream_bytes_total
    sites: int
    sites_ok: int
    retried: int  # sites that needed more than one attempt
    sites_seconds: float
    cache_cpu_seconds: float | None  # the region cache's user+system CPU during the sites phase

    @property
    def ratio(self) -> float | None:
        if self.wan_bytes is None or self.unique_bytes == 0:
            return None
        return self.wan_bytes / self.unique_bytes


@dataclass(frozen=True)
class ScenarioResult:
    name: str
    push_seconds: float | None
    sites_seconds: float
    operator_bytes: int | None
    origin_served_bytes: int
    origin_cpu_seconds: float  # during the sites phase
    regions: tuple[RegionResult, ...]
    sites: tuple[SiteResult, ...]

    @property
    def total_seconds(self) -> float:
        return self.sites_seconds + (self.push_seconds or 0.0)


@dataclass(frozen=True)
class Context:
    wan: Wan
    origin_pid: int
    data: FleetData
    facts: RepoFacts
    work: Path
    sites_per_region: int
    attempts: int
    console: Console

    @property
    def operator_url(self) -> str:
        return self.wan.links["operator"].origin_url


# ----------------------------------------------------------------------------- helpers


def _get(url: str, timeout: float = 60.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _origin_served(ctx: Context) -> int:
    metrics = parse_metrics(_get(ctx.operator_url + "/metrics").decode())
    return int(sum(v for (k, _), v in metrics.items() if k == "edgedepot_served_bytes_total"))


def _upstream_bytes(node: NodeProcess) -> int:
    return int(sum(v for (k, _), v in node.metrics().items()
                   if k == "edgedepot_upstream_bytes_total"))


def repo_facts(origin_url: str) -> RepoFacts:
    """Read the origin's Release and Packages; pick the Packages variant apt downloads."""
    base = f"{origin_url}/apt/{REPO}/dists/{SUITE}/"
    inrelease = _get(base + "InRelease")
    release = Release(_get(base + "Release").decode())
    sizes = {str(e["name"]): int(e["size"]) for e in release.get("SHA256", [])}
    index: list[tuple[str, int]] = [("InRelease", len(inrelease))]
    # apt's default Acquire::CompressionTypes order prefers xz, then the others
    for suffix in (".xz", ".bz2", ".lzma", ".gz", ".lz4", ".zst", ""):
        name = f"main/binary-amd64/Packages{suffix}"
        if name in sizes:
            index.append((name, sizes[name]))
            break
    pool: dict[str, PoolEntry] = {}
    for para in Packages.iter_paragraphs(_get(base + "main/binary-amd64/Packages").decode()):
        pool[str(para["Filename"]).rsplit("/", 1)[-1]] = PoolEntry(str(para["SHA256"]),
                                                                  int(para["Size"]))
    return RepoFacts(tuple(index), pool)


def _attempt(site: AptRoot, top: str) -> str:
    """One `apt-get update` + `install --download-only`; "" on success, else what went wrong."""
    apt_warnings = ""
    try:
        update = site.run("update", timeout=1800)
        # apt-get update exits 0 when an index failed to download ("W: ... ignored")
        apt_warnings = " ".join(line for line in (update.stdout + update.stderr).splitlines()
                                if line.startswith(("W:", "E:", "Err:")))
        site.run("install", "-y", "--download-only", top, timeout=1800)
    except (AssertionError, subprocess.TimeoutExpired) as exc:
        text = str(exc)
        for noise in ("Reading package lists...", "Building dependency tree...",
                      "Reading state information..."):
            text = text.replace(noise, "")
        return (f"update: {apt_warnings[-300:]} | " if apt_warnings else "") + " ".join(text.split())[-300:]
    return ""


def _run_site(name: str, region: str, root: Path, keyring: Path, base_url: str,
              top: str, attempts: int) -> SiteResult:
    """A site retries a failed run (as an operator's automation would), up to `attempts`."""
    started = time.monotonic()
    site = AptRoot(root, keyring)
    site.set_source(base_url, SUITE)
    errors: list[str] = []
    for _ in range(attempts):
        error = _attempt(site, top)
        if not error:
            return SiteResult(name, region, True, time.monotonic() - started, 0, 0, False,
                              " || ".join(errors), len(errors) + 1)
        errors.append(error)
    return SiteResult(name, region, False, time.monotonic() - started, 0, 0, False,
                      " || ".join(errors), len(errors))


def _verify(result: SiteResult, root: Path, facts: RepoFacts
            ) -> tuple[SiteResult, dict[str, int]]:
    """Hash every downloaded .deb against the Packages index; the distinct digests fetched."""
    if not result.ok:
        return result, {}
    fetched: dict[str, int] = {}
    by_digest = {e.sha256: e.size for e in facts.pool.values()}
    bad: list[str] = []
    for deb in AptRoot(root, None).archives():
        with deb.open("rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        size = deb.stat().st_size
        if by_digest.get(digest) != size:
            bad.append(deb.name)
        fetched[digest] = size
    error = f"not in the Packages index: {', '.join(bad[:3])}" if bad else result.error
    return (SiteResult(result.site, result.region, result.ok, result.seconds, len(fetched),
                       sum(fetched.values()), not bad and bool(fetched), error,
                       result.attempts), fetched)


def _write_inventory(path: Path, ctx: Context, parents: dict[str, str]) -> Path:
    lines = [f'origin = "{ctx.operator_url}"', ""]
    for region in REGIONS:
        lines += [f"[regions.{region}]", f'parent = "{parents[region]}"', "concurrency = 4", ""]
    lines += ["[profiles.compute-node]",
              f'apt = {{ repo = "{REPO}", suite = "{SUITE}", '
              f'packages = ["{ctx.data.top_package}"] }}', ""]
    for region in REGIONS:
        for i in range(ctx.sites_per_region):
            lines += [f"[sites.{region}-{i:02d}]", f'region = "{region}"',
                      'profile = "compute-node"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- scenarios


def run_scenario(name: str, ctx: Context) -> ScenarioResult:
    work = ctx.work / name
    work.mkdir(parents=True)
    nodes: dict[str, NodeProcess] = {}
    acngs: dict[str, AptCacherNgPeer] = {}
    bases: dict[str, str] = {}
    push_seconds: float | None = None
    try:
        for region in REGIONS:
            upstream = ctx.wan.links[region].origin_url
            if name in ("prewarm", "cold"):
                # apt only: no Glance, so no caller tokens on this plain-http WAN link
                node = NodeProcess(["--role", "cache", "--store", str(work / f"{region}-store"),
                                    "--upstream", upstream, "--no-glance"],
                                   work / f"{region}-cache.log")
                nodes[region] = node.start()
                bases[region] = f"{node.url}/apt/{REPO}"
            elif name == "acng":
                peer = AptCacherNgPeer(work / f"{region}-acng")
                peer.start(upstream)
                acngs[region] = peer
                bases[region] = peer.base_url.rstrip("/")
            else:
                bases[region] = f"{upstream}/apt/{REPO}"
        tx_before = ctx.wan.tx_bytes()
        served_before = _origin_served(ctx)
        if name == "prewarm":
            inventory = _write_inventory(work / "fleet.toml", ctx,
                                         {r: nodes[r].url for r in REGIONS})
            t0 = time.monotonic()
            proc = subprocess.run([DISTRO_SYNC, "push", str(inventory)], capture_output=True,
                                  text=True, timeout=3600, check=False)
            push_seconds = time.monotonic() - t0
            (work / "push.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
            if proc.returncode != 0:
                ctx.console.print(f"[red]distro-sync push exited {proc.returncode}[/red]; "
                                  f"see {work / 'push.log'}")
        tx_mid = ctx.wan.tx_bytes()
        ctx.console.print(f"  {name}: {2 * ctx.sites_per_region} apt-get sites starting")
        roots = {f"{r}-{i:02d}": work / "sites" / f"{r}-{i:02d}"
                 for r in REGIONS for i in range(ctx.sites_per_region)}
        pids = {r: n.proc.pid for r, n in nodes.items() if n.proc is not None}
        pids.update({r: p.process.pid for r, p in acngs.items() if p.process is not None})
        cpu_before = {r: _cpu_seconds(pid) for r, pid in pids.items()}
        origin_cpu = _cpu_seconds(ctx.origin_pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(roots)) as pool:
            futures = [pool.submit(_run_site, site, site.rsplit("-", 1)[0], root,
                                   ctx.data.public_keyring, bases[site.rsplit("-", 1)[0]],
                                   ctx.data.top_package, ctx.attempts)
                       for site, root in roots.items()]
            raw = [f.result() for f in futures]
        sites_seconds = time.monotonic() - t0
        cpu = {r: _cpu_seconds(pid) - cpu_before[r] for r, pid in pids.items()}
        origin_cpu = _cpu_seconds(ctx.origin_pid) - origin_cpu
        tx_after = ctx.wan.tx_bytes()
        served = _origin_served(ctx) - served_before
        upstream_body = {r: _upstream_bytes(n) for r, n in nodes.items()}
        results: list[SiteResult] = []
        fetched: dict[str, dict[str, int]] = {r: {} for r in REGIONS}
        for res in raw:
            checked, digests = _verify(res, roots[res.site], ctx.facts)
            results.append(checked)
            fetched[res.region].update(digests)
            shutil.rmtree(roots[res.site], ignore_errors=True)
        regions: list[RegionResult] = []
        for region in REGIONS:
            mine = [s for s in results if s.region == region]
            wan = (tx_after[region] - tx_before[region]) if tx_after else None
            during = (tx_after[region] - tx_mid[region]) if tx_after else None
            regions.append(RegionResult(
                region, wan, during, sum(fetched[region].values()) + ctx.facts.index_bytes,
                upstream_body.get(region), len(mine), sum(1 for s in mine if s.ok and s.verified),
                sum(1 for s in mine if s.attempts > 1),
                max((s.seconds for s in mine), default=0.0), cpu.get(region)))
        operator = (tx_after["operator"] - tx_before["operator"]) if tx_after else None
        return ScenarioResult(name, push_seconds, sites_seconds, operator, served, origin_cpu,
                              tuple(regions), tuple(results))
    finally:
        for node in nodes.values():
            node.stop()
        for peer in acngs.values():
            peer.stop()
        shutil.rmtree(work / "sites", ignore_errors=True)


# ----------------------------------------------------------------------------- report


def _mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:,.2f} MB"


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f} s"


HEADERS = ("scenario", "region", "WAN bytes", "unique bytes", "WAN/unique", "sites ok",
           "push", "sites done", "total", "cache CPU")


def table_rows(results: list[ScenarioResult]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for sc in results:
        for reg in sc.regions:
            ratio = reg.ratio
            rows.append((LABELS[sc.name], reg.region, _mb(reg.wan_bytes), _mb(reg.unique_bytes),
                         "n/a" if ratio is None else f"{ratio:.2f}",
                         f"{reg.sites_ok}/{reg.sites}" +
                         (f" ({reg.retried} retried)" if reg.retried else ""),
                         _s(sc.push_seconds),
                         _s(sc.sites_seconds), _s(sc.total_seconds),
                         _s(reg.cache_cpu_seconds)))
    return rows


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool
    detail: str


def verdicts(results: list[ScenarioResult]) -> list[Verdict]:
    by = {sc.name: sc for sc in results}
    out: list[Verdict] = []
    for name in ("prewarm", "cold"):
        sc = by.get(name)
        if sc is None:
            continue
        ratios = [r.ratio for r in sc.regions]
        ok = all(r is not None and round(r, 2) <= 1.00 for r in ratios) and all(
            r.sites_ok == r.sites for r in sc.regions)
        shown = ", ".join("n/a" if r is None else f"{r:.3f}" for r in ratios)
        out.append(Verdict(f"WAN/unique = 1.00 in {LABELS[name]}", ok, f"per region: {shown}"))
    def complete(sc: ScenarioResult) -> bool:
        return all(r.sites_ok == r.sites for r in sc.regions)

    others = [sc for sc in results if sc.name != "prewarm" and complete(sc)]
    skipped = [LABELS[sc.name] for sc in results if sc.name != "prewarm" and not complete(sc)]
    note = f" ({', '.join(skipped)}: not every site succeeded, not compared)" if skipped else ""
    if "prewarm" in by and others:
        a = by["prewarm"]
        fastest = min(others, key=lambda sc: sc.sites_seconds)
        out.append(Verdict("(a) finishes first (site installs)",
                           complete(a) and a.sites_seconds < fastest.sites_seconds,
                           f"(a) {a.sites_seconds:.1f} s vs best other {LABELS[fastest.name]} "
                           f"{fastest.sites_seconds:.1f} s{note}"))
        fastest_total = min(others, key=lambda sc: sc.total_seconds)
        out.append(Verdict("(a) finishes first incl. push",
                           complete(a) and a.total_seconds < fastest_total.total_seconds,
                           f"(a) {a.total_seconds:.1f} s (push {a.push_seconds or 0:.1f} s) vs "
                           f"{LABELS[fastest_total.name]} {fastest_total.total_seconds:.1f} s"
                           f"{note}"))
    return out


def markdown(rows: list[tuple[str, ...]], checks: list[Verdict]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "| target | result | detail |", "|---|---|---|"]
    lines += [f"| {v.target} | {'PASS' if v.passed else 'FAIL'} | {v.detail} |" for v in checks]
    return "\n".join(lines)


def print_report(console: Console, results: list[ScenarioResult], header: str) -> str:
    rows = table_rows(results)
    checks = verdicts(results)
    table = Table(title="fleet: 2 regions behind an emulated WAN")
    for h in HEADERS:
        table.add_column(h, justify="left" if h in ("scenario", "region") else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    checks_table = Table(title="targets")
    for h in ("target", "result", "detail"):
        checks_table.add_column(h)
    for v in checks:
        checks_table.add_row(v.target, "[green]PASS[/green]" if v.passed else "[red]FAIL[/red]",
                             v.detail)
    console.print(checks_table)
    md = header + "\n\n" + markdown(rows, checks)
    print(md, flush=True)
    return md


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 debs / 15 MB, 5 sites/region")
    parser.add_argument("--debs", type=int, default=None, help="packages (default 200)")
    parser.add_argument("--total-mb", type=float, default=None, help="MB of .debs (default 100)")
    parser.add_argument("--sites", type=int, default=None, help="sites per region (default 20)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wan-rate", default="200mbit", help="tbf rate per region link")
    parser.add_argument("--attempts", type=int, default=2,
                        help="apt-get runs a site may take (a failed run is retried)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the work directory (node and apt-cacher-ng logs)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only these (repeatable); default all four")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Parsing of Deb822 data with python3-apt")
    n_debs = args.debs or (40 if args.quick else 200)
    total_mb = args.total_mb or (15.0 if args.quick else 100.0)
    sites = args.sites or (5 if args.quick else 20)
    console = Console(width=max(Console().width, 140))
    params = FleetDataParams(n_debs, int(total_mb * 1_000_000), args.seed)
    with console.status(f"package set {params.key}"):
        data, built = load_or_build(params)
    console.print(f"package set: {data.deb_count} .debs, {_mb(data.deb_bytes)} "
                  f"({'built now' if built else 'reused'}: {data.deb_dir.parent})")
    spec = WanSpec(args.wan_rate, "256kb", "50ms")
    work = Path(tempfile.mkdtemp(prefix="edfleet-", dir="/tmp"))
    key = run_key(data)
    wan, why = open_wan([*REGIONS, "operator"], spec, work)
    origin: OriginProcess | None = None
    results: list[ScenarioResult] = []
    log: RowLog[ScenarioResult] = RowLog("fleet", RESULTS, show=False)
    log.note(params=asdict(params), sites_per_region=sites, wan_mode=wan.mode, wan=wan.describe())
    console.print(f"scenario results go to {log.path} as they are measured")
    try:
        console.print(f"WAN: {wan.describe()}" + (f" ({why})" if why else ""))
        origin = OriginProcess(wan, ["--role", "origin", "--store", str(work / "origin"),
                                     "--apt", f"{REPO}={data.deb_dir}",
                                     "--gnupg-home", str(key.gnupg_home),
                                     "--signing-key", key.key_id], work / "origin.log").start()
        facts = repo_facts(wan.links["operator"].origin_url)
        assert origin.proc is not None
        ctx = Context(wan, origin.proc.pid, data, facts, work, sites, args.attempts, console)
        for name in args.scenario or SCENARIOS:
            console.print(f"[bold]{LABELS[name]}[/bold]")
            with log.guard(LABELS[name]):  # a failing scenario is reported, the others still run
                results.append(log.add(run_scenario(name, ctx)))
        for what, reason in log.failures:
            console.print(f"[red]FAILED {what}[/red]: {reason}")
        header = (f"fleet benchmark {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {data.deb_count} .debs "
                  f"({_mb(data.deb_bytes)}), profile `{data.top_package}`, "
                  f"{len(REGIONS)} regions x {sites} sites (up to {args.attempts} apt-get runs "
                  f"each), WAN mode **{wan.mode}** "
                  f"({wan.describe()}), index bytes per region {facts.index_bytes:,}")
        md = print_report(console, results, header)
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / f"fleet-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        doc = {"params": asdict(params), "sites_per_region": sites, "wan_mode": wan.mode,
               "wan": wan.describe(), "wan_fallback_reason": why,
               "index_files": [list(x) for x in facts.index_files],
               "scenarios": [{**asdict(sc), "label": LABELS[sc.name],
                              "total_seconds": sc.total_seconds,
                              "regions": [{**asdict(r), "ratio": r.ratio} for r in sc.regions]}
                             for sc in results],
               "targets": [asdict(v) for v in verdicts(results)], "markdown": md,
               "failed": [{"scenario": w, "error": r} for w, r in log.failures]}
        out.write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
        console.print(f"wrote {out}")
        return 1 if log.failures else 0
    finally:
        if origin is not None:
            origin.stop()
        wan.close()
        drop_key(key)
        if args.keep_work:
            console.print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
