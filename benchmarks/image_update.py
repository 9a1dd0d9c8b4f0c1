"""An image update through a cache over a slow WAN: first and last byte, by delta vs whole.

    python -m benchmarks.image_update [--rate 100mbit] [--repeats 3] [--size-mb N]

Setup (root: network namespaces): the origin runs in its own network namespace behind a veth
pair whose origin side has `tc qdisc ... tbf rate 100mbit` (`benchmarks.fleet_env.NetnsWan`),
and serves an image directory with two versions of one image family: by default the 1 GiB
debootstrap ext4 pair of the delta benchmark (`benchmarks.delta_data.build_image`; a synthetic
filesystem-like pair when debootstrap cannot run, `--size-mb N` for a smaller synthetic one).
The origin prepares v2's patch against v1 as soon as it sees v2 (the benchmark waits for it).
A cache on the host fetches v1 once over the WAN; its store is then copied for every delta run,
so each starts from a cache that holds v1 and nothing else. Scenarios, interleaved per repeat:

  * whole: a cache with an empty store (no basis): the image crosses the WAN whole;
  * delta: a cache that holds v1: the image is rebuilt from the origin's prepared patch while
    the client streams it;
  * delta, patch not ready: the origin restarted with an empty store, asked at once (it is
    still computing the patch): the cache takes what the origin's offer makes cheapest now.

Each run downloads v2 from the cache with curl to /dev/null: `time_starttransfer` (the client's
first byte) and `time_total` (its last byte, which the cache holds until the image verified),
plus the bytes the origin sent over the WAN (the origin-side veth's tx_bytes). Medians of the
repeats, and the ratio delta / whole. The bytes are checked once per scenario (an untimed
download compared with v2's sha256). Rows go to `benchmarks/results/image_update-<ts>.jsonl` as
they are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.delta_data import DATA_DIR, Pair, build_fs_like, build_image
from benchmarks.fleet_env import NetnsWan, OriginProcess, WanSpec
from benchmarks.report import RowLog
from distro.digests import file_sha256
from distro.glance_images import write_image
from tests.plugin.glance_node import GlanceNode

PROPS = {"os_distro": "edgeos", "os_version": "1"}
GUARD = 3600.0
PATCHES = ("edgedepot_delta_computed_total", "delta-patch")
DELTA_FETCHES = ("edgedepot_delta_fetches_total", "glance")


@dataclass(frozen=True)
class Row:
    scenario: str
    repeat: int
    first_byte_s: float
    last_byte_s: float
    wan_bytes: int
    note: str = ""


def failed(scenario: str) -> Callable[[str], Row]:
    return lambda why: Row(scenario, -1, 0.0, 0.0, 0, f"FAILED: {why}")


def curl(url: str, out: str = "/dev/null") -> tuple[float, float, int]:
    proc = subprocess.run(["curl", "-sf", "-o", out, "-w",
                           "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
                           url], capture_output=True, text=True, check=False, timeout=GUARD)
    status, first, total, size = (proc.stdout.split() + ["", "", "", ""])[:4]
    if proc.returncode != 0 or status != "200":
        raise RuntimeError(f"curl {url}: exit {proc.returncode}, {proc.stdout!r}")
    return float(first), float(total), int(size)


def wait_for(what: str, check: Callable[[], bool], timeout: float = GUARD) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        time.sleep(0.2)


class Bench:
    def __init__(self, pair: Pair, rate: str, work: Path, log: RowLog[Row]) -> None:
        self.pair = pair
        self.work = work
        self.log = log
        self.images = work / "images"
        self.images.mkdir()
        for stem, src, created in (("edgeos-v1", pair.basis, "2026-01-01T00:00:00Z"),
                                   ("edgeos-v2", pair.target, "2026-02-01T00:00:00Z")):
            os.link(src, self.images / f"{stem}.img")
            write_image(self.images, stem, self.images / f"{stem}.img", visibility="public",
                        properties=PROPS, created_at=created)
        self.v2_size = pair.target.stat().st_size
        self.v2_sha = file_sha256(pair.target)
        self.wan = NetnsWan(["wan"], WanSpec(rate, "256kb", "50ms")).open()
        self.link = self.wan.links["wan"]
        self.origin: OriginProcess | None = None
        self.ids: dict[str, str] = {}

    def close(self) -> None:
        if self.origin is not None:
            self.origin.stop()
        self.wan.close()

    # -- nodes ---------------------------------------------------------------------------
    def start_origin(self, store: Path) -> OriginProcess:
        if self.origin is not None:
            self.origin.stop()
        self.origin = OriginProcess(self.wan, ["--role", "origin", "--store", str(store),
                                               "--images", str(self.images)],
                                    self.work / "origin.log").start()
        self.origin.url = self.link.origin_url
        return self.origin

    def cache(self, store: Path) -> GlanceNode:
        # the benchmark's images are public: no caller token crosses the emulated WAN
        return GlanceNode(["--role", "cache", "--store", str(store), "--upstream",
                           self.link.origin_url, "--glance-forward-tokens-over-plain-http"],
                          self.work / f"{store.name}.log").start()

    def tx(self) -> int:
        return self.wan.tx_bytes()["wan"]

    def v2_url(self, cache: GlanceNode) -> str:
        return f"{cache.glance}/v2/images/{self.ids['edgeos-v2']}/file"

    # -- runs ----------------------------------------------------------------------------
    def seed(self) -> Path:
        """A cache store holding v1 (fetched over the WAN once), copied for each delta run."""
        store = self.work / "seed"
        cache = self.cache(store)
        try:
            listing = json.loads(cache.get("/glance/v2/images")[1])
            self.ids = {str(i["name"]): str(i["id"]) for i in listing["images"]}
            print(f"seeding a cache with v1 over the WAN ({self.pair.basis.stat().st_size >> 20}"
                  " MiB) ...", file=sys.stderr, flush=True)
            curl(f"{cache.glance}/v2/images/{self.ids['edgeos-v1']}/file")
        finally:
            cache.stop()
        return store

    def run(self, scenario: str, repeat: int, store: Path, verify: bool) -> Row:
        cache = self.cache(store)
        try:
            before = self.tx()
            deltas = cache.metrics().get(DELTA_FETCHES, 0)
            first, total, size = curl(self.v2_url(cache))
            wan = self.tx() - before
            if size != self.v2_size:
                raise RuntimeError(f"{size} bytes instead of {self.v2_size}")
            by_delta = cache.metrics().get(DELTA_FETCHES, 0) > deltas
            if scenario.startswith("delta") != by_delta:
                did = "a delta" if by_delta else "a whole fetch"
                raise RuntimeError(f"scenario {scenario}: the cache did {did}")
            note = ""
            if verify:
                out = self.work / "verify.img"
                curl(self.v2_url(cache), str(out))
                if file_sha256(out) != self.v2_sha:
                    raise RuntimeError("the cache served other bytes than v2")
                out.unlink()
                note = "bytes verified"
            how = _method(cache.log_path) if by_delta else "whole"
            return Row(scenario, repeat, first, total, wan, f"{how}; {note}".strip("; "))
        finally:
            cache.stop()
            shutil.rmtree(store, ignore_errors=True)


def _method(log_path: Path) -> str:
    """How the cache's last delta went ("patch", "blocks"), from its log line."""
    for line in reversed(log_path.read_text().splitlines()):
        if " delta against image " in line and " by " in line:
            return line.split(" by ", 1)[1].split(" delta", 1)[0]
    return "?"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summary(rows: list[Row]) -> list[str]:
    ok = [r for r in rows if r.repeat >= 0]
    by: dict[str, list[Row]] = {}
    for r in ok:
        by.setdefault(r.scenario, []).append(r)
    whole = by.get("whole", [])
    lines = ["| scenario | runs | first byte ms (median) | last byte s (median) | WAN MB (median) "
             "| first byte vs whole | last byte vs whole | how |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    wf, wl = _median([r.first_byte_s for r in whole]), _median([r.last_byte_s for r in whole])
    for name, runs in by.items():
        f, last = _median([r.first_byte_s for r in runs]), _median([r.last_byte_s for r in runs])
        wan = _median([float(r.wan_bytes) for r in runs]) / 1e6
        how = ", ".join(sorted({r.note.split(";")[0] for r in runs}))
        lines.append(f"| {name} | {len(runs)} | {f * 1000:.1f} | {last:.2f} | {wan:.2f} | "
                     f"{f / wf:.2f}x | {last / wl:.3f}x | {how} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", default="100mbit", help="tc tbf rate of the WAN")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=None,
                        help="a synthetic filesystem-like pair of this size instead of the "
                             "debootstrap image pair")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("curl") is None or shutil.which("tc") is None:
        print("needs root (network namespaces), curl and tc", file=sys.stderr)
        return 2
    if args.size_mb:
        pair = build_fs_like(args.size_mb << 20)
    else:
        try:
            pair = build_image()
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"debootstrap pair not available ({exc}); a synthetic pair instead",
                  file=sys.stderr)
            pair = build_fs_like(1 << 30)
    log: RowLog[Row] = RowLog("image_update")
    log.note(pair=pair.label, rate=args.rate, repeats=args.repeats, cpus=os.cpu_count())
    work = Path(tempfile.mkdtemp(prefix="edgedepot-image-update-", dir=DATA_DIR))
    bench: Bench | None = None
    try:
        bench = Bench(pair, args.rate, work, log)
        print(bench.wan.describe(), file=sys.stderr)
        origin = bench.start_origin(work / "origin")
        wait_for("the origin to prepare v2's patch",
                 lambda: origin.metrics().get(PATCHES, 0) >= 1)
        seed = bench.seed()
        for repeat in range(args.repeats):
            for scenario in ("whole", "delta") if repeat % 2 == 0 else ("delta", "whole"):
                store = work / f"{scenario}-{repeat}"
                if scenario == "delta":
                    shutil.copytree(seed, store)
                with log.guard(f"{scenario} #{repeat}", failed(scenario)):
                    log.add(bench.run(scenario, repeat, store, verify=repeat == 0))
        scenario = "delta, patch not ready"
        for repeat in range(args.repeats):
            with log.guard(f"{scenario} #{repeat}", failed(scenario)):
                shutil.rmtree(work / "origin-fresh", ignore_errors=True)
                bench.start_origin(work / "origin-fresh")  # prepares from now on
                store = work / f"late-{repeat}"
                shutil.copytree(seed, store)
                log.add(bench.run(scenario, repeat, store, verify=repeat == 0))
    finally:
        if bench is not None:
            bench.close()
        print("\n".join([f"Image update {pair.label}; WAN: tc tbf {args.rate}; "
                         f"{os.cpu_count()} cores", "", *summary(log.rows)]))
        for what, why in log.failures:
            print(f"- FAILED {what}: {why}")
        print(f"\nresults: {log.path}")
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if log.failures else 0


if __name__ == "__main__":
    sys.exit(main())
