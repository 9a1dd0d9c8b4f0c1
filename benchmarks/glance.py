"""Glance images through the cache vs directly from a real Glance, side by side.

    .venv/bin/python -m benchmarks.glance                # 1 GiB image, 20 concurrent clients
    .venv/bin/python -m benchmarks.glance --size-mb 128  # quicker
    .venv/bin/python -m benchmarks.glance --quick        # 64 MiB, 4 clients

Setup, all on 127.0.0.1: a real Glance (tests/plugin/glance_server.py: glance from PyPI under
gunicorn, sqlite, file store) holds one public raw image of random bytes. An origin node caches
it from that Glance (`--glance-upstream`), a regional cache node from the origin (`--upstream`),
as in production. Every timed download is made by `curl` to /dev/null and checked
for its size; one more (untimed) download per path is written to a file and checked against
the image's md5 (timing downloads into files would measure the disk). Rows:
  * cold: first download through the cache (both tiers empty) vs Glance itself;
  * warm: repeated download through the cache vs Glance vs nginx serving the same bytes from
    a local file (the target: cache >= 0.9x nginx);
  * 20 concurrent cold downloads (both tiers emptied by the cache-management API first):
    wall time and upstream bytes / image size at each tier (target 1.00) vs Glance;
  * update v1 -> v2 (`--delta-size-mb`, default the image size): an origin serving an image
    directory holding v1 (random bytes) and v2 (v1 with 8 scattered 4 KiB changes and a 64 KiB
    insertion), a cache in front that holds v1: v2 through the cache by delta vs through a
    second, empty cache (whole) vs `rsync -z` from an rsync daemon on 127.0.0.1 onto a copy of
    v1 (the target: delta bytes on the wire <= 1.1x rsync's "bytes sent + received").
    `--only-delta` runs just these rows (no Glance, no nginx needed).
Each row is appended to benchmarks/results/glance-<timestamp>.jsonl and printed as soon as it is
measured; a path that fails becomes a row saying why. The table is printed as Markdown at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.peers import NginxInstance, rsync_daemon_config
from benchmarks.report import RowLog
from tests.plugin.glance_node import GlanceNode
from tests.plugin.glance_server import GlanceServer, Grant

TOKEN = "bench-admin"
WARM_REPEATS = 5
COLD_REPEATS = 3


@dataclass(frozen=True)
class Row:
    scenario: str
    via: str
    seconds: float
    mb_per_s: float | None
    upstream_ratio: str
    note: str = ""


def failed(scenario: str, via: str) -> Callable[[str], Row]:
    """The row a path that could not be measured becomes."""
    return lambda why: Row(scenario, via, 0.0, None, "-", f"FAILED: {why}")


def _make_image(path: Path, size: int) -> str:
    md5 = hashlib.md5()
    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        written = 0
        while written < size:
            chunk = block[: min(len(block), size - written)]
            fh.write(chunk)
            md5.update(chunk)
            written += len(chunk)
            block = hashlib.sha512(block[:64]).digest() * 16384  # vary the next MiB cheaply
    return md5.hexdigest()


def _curl(url: str, out: str, token: str | None = TOKEN) -> tuple[float, int]:
    argv = ["curl", "-sf", "-o", out, "-w", "%{http_code} %{size_download}", url]
    if token:
        argv[1:1] = ["-H", f"X-Auth-Token: {token}"]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    status, _, size = proc.stdout.strip().partition(" ")
    if proc.returncode != 0 or status != "200":
        raise RuntimeError(f"curl {url}: exit {proc.returncode}, status {proc.stdout!r}")
    return elapsed, int(size)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


def _verified_download(url: str, work: Path, checksum: str, token: str | None = TOKEN) -> None:
    """An untimed download whose bytes are checked against the image's md5."""
    out = work / "verify.img"
    _curl(url, str(out), token)
    if _md5(out) != checksum:
        raise RuntimeError(f"{url}: downloaded bytes do not match the image's checksum")
    out.unlink()


def _timed_download(url: str, size: int, token: str | None = TOKEN) -> float:
    """A timed download to /dev/null (the disk would be the bottleneck otherwise)."""
    seconds, got = _curl(url, "/dev/null", token)
    if got != size:
        raise RuntimeError(f"{url}: {got} bytes instead of {size}")
    return seconds


def _concurrent(url: str, n: int, size: int) -> float:
    started = time.monotonic()
    procs = [subprocess.Popen(["curl", "-sf", "-H", f"X-Auth-Token: {TOKEN}", "-o", "/dev/null",
                               "-w", "%{size_download}", url], stdout=subprocess.PIPE, text=True)
             for _ in range(n)]
    outs = [p.communicate()[0] for p in procs]
    elapsed = time.monotonic() - started
    if any(p.returncode for p in procs) or any(int(o or 0) != size for o in outs):
        raise RuntimeError(f"concurrent download failed: {[p.returncode for p in procs]} {outs}")
    return elapsed


def _upstream_bytes(node: GlanceNode) -> float:
    return node.metrics().get(("edgedepot_upstream_bytes_total", "glance"), 0.0)


def _clear(node: GlanceNode) -> None:
    subprocess.run(["curl", "-sf", "-X", "DELETE", "-H", f"X-Auth-Token: {TOKEN}",
                    f"{node.glance}/v2/cache"], check=True)


def run(size: int, clients: int, work: Path, log: RowLog[Row]) -> None:
    image_path = work / "image.raw"
    print(f"writing a {size >> 20} MiB image ...", flush=True)
    checksum = _make_image(image_path, size)
    mib = size / (1 << 20)
    with GlanceServer(work / "glance", {TOKEN: Grant("bench", ("admin", "member", "reader"))}) \
            as glance:
        print("uploading it to Glance ...", flush=True)
        record = glance.create_image(TOKEN, "bench-image", image_path, visibility="public")
        image_id = str(record["id"])
        nginx_root = work / "nginx-root"
        nginx_root.mkdir()
        os.link(image_path, nginx_root / "image.raw")
        nginx = NginxInstance("nginx-local", work / "nginx",
                              f"location / {{ root {nginx_root}; }}")
        nginx.start()
        try:
            with GlanceNode(["--role", "origin", "--store", str(work / "origin"),
                             "--glance-upstream", glance.url], work / "origin.log") as origin, \
                 GlanceNode(["--role", "cache", "--store", str(work / "cache"), "--upstream",
                             origin.url], work / "cache.log") as cache:
                direct = f"{glance.url}/v2/images/{image_id}/file"
                cached = f"{cache.glance}/v2/images/{image_id}/file"
                local = f"http://127.0.0.1:{nginx.port}/image.raw"
                print("cold and warm downloads ...", flush=True)
                # Cold runs alternate Glance and the two tiers (both emptied through the
                # cache-management API before each), so background load falls on both alike.
                direct_times: list[float] = []
                cached_times: list[float] = []
                via = "cache -> origin -> Glance"
                ratio = 0.0
                for _ in range(COLD_REPEATS):
                    with log.guard("cold Glance direct", failed("cold, 1 client", "Glance direct")):
                        direct_times.append(_timed_download(direct, size))
                    with log.guard("cold cache", failed("cold, 1 client", via)):
                        _clear(cache)
                        _clear(origin)
                        before = _upstream_bytes(origin)
                        cached_times.append(_timed_download(cached, size))
                        ratio = (_upstream_bytes(origin) - before) / size
                if direct_times:
                    t = statistics.median(direct_times)
                    log.add(Row("cold, 1 client", "Glance direct", t, mib / t, "1.00",
                                f"median of {len(direct_times)}"))
                if cached_times:
                    t = statistics.median(cached_times)
                    speed = (f"cache/Glance speed = {statistics.median(direct_times) / t:.2f}x "
                             "(target >= 0.25x)") if direct_times else ""
                    log.add(Row("cold, 1 client", via, t, mib / t, f"{ratio:.2f}",
                                f"median of {len(cached_times)}; the origin hashes sha256 and "
                                f"the record's sha512 in one pass, the cache sha256 only; "
                                f"{speed}"))
                for url, token in ((direct, TOKEN), (cached, TOKEN), (local, None)):
                    with log.guard(f"verified download {url}",
                                   failed("verified download", url)):
                        _verified_download(url, work, checksum, token)
                # Warm runs alternate the three peers too (the verified downloads above leave
                # a gigabyte or more of dirty pages being written back for a while).
                warm: dict[str, list[float]] = {"cache": [], "direct": [], "nginx": []}
                for _ in range(WARM_REPEATS):
                    with log.guard("warm cache", failed("warm, 1 client", "cache (store hit)")):
                        warm["cache"].append(_timed_download(cached, size))
                    with log.guard("warm Glance direct",
                                   failed("warm, 1 client", "Glance direct")):
                        warm["direct"].append(_timed_download(direct, size))
                    with log.guard("warm nginx", failed("warm, 1 client", "nginx, local file")):
                        warm["nginx"].append(_timed_download(local, size, token=None))
                best = {peer: min(times) for peer, times in warm.items() if times}
                runs = f"best of {WARM_REPEATS}, peers alternating"
                if "cache" in best:
                    log.add(Row("warm, 1 client", "cache (store hit)", best["cache"],
                                mib / best["cache"], "0.00", runs))
                if "direct" in best:
                    log.add(Row("warm, 1 client", "Glance direct", best["direct"],
                                mib / best["direct"], "1.00", runs))
                if "nginx" in best:
                    speed = f"cache/nginx speed = {best['nginx'] / best['cache']:.2f}x " \
                        "(target >= 0.9x)" if "cache" in best else "cache not measured"
                    log.add(Row("warm, 1 client", "nginx, local file", best["nginx"],
                                mib / best["nginx"], "-", f"{runs}; {speed}"))
                print(f"{clients} concurrent cold downloads ...", flush=True)
                scenario = f"cold, {clients} clients"
                with log.guard("concurrent cache", failed(scenario, via)):
                    _clear(cache)
                    _clear(origin)
                    cache_before, origin_before = _upstream_bytes(cache), _upstream_bytes(origin)
                    t = _concurrent(cached, clients, size)
                    cache_ratio = (_upstream_bytes(cache) - cache_before) / size
                    origin_ratio = (_upstream_bytes(origin) - origin_before) / size
                    _verified_download(cached, work, checksum)
                    log.add(Row(scenario, via, t, clients * mib / t,
                                f"{cache_ratio:.2f} / {origin_ratio:.2f}",
                                "upstream ratio: cache<-origin / origin<-Glance (target 1.00)"))
                with log.guard("concurrent Glance direct", failed(scenario, "Glance direct")):
                    t = _concurrent(direct, clients, size)
                    log.add(Row(scenario, "Glance direct", t, clients * mib / t,
                                f"{clients:.2f}", "Glance reads its store once per client"))
        finally:
            nginx.stop()


# -- update v1 -> v2: delta vs whole vs rsync -z ------------------------------------------------

def _make_pair(v1: Path, v2: Path, size: int) -> None:
    """v1: random bytes; v2: v1 with 8 scattered 4 KiB changes and a 64 KiB insertion."""
    with open(v1, "wb") as fh:
        for _ in range(0, size, 1 << 20):
            fh.write(os.urandom(min(1 << 20, size)))
        fh.truncate(size)
    edits = {size * k // 9: os.urandom(4096) for k in range(1, 9)}
    insert_at = size * 2 // 5
    with open(v1, "rb") as src, open(v2, "wb") as dst:
        pos = 0
        for at in sorted([*edits, insert_at]):
            dst.write(src.read(at - pos))
            pos = at
            if at == insert_at:
                dst.write(os.urandom(64 << 10))
            if at in edits:
                dst.write(edits[at])
                src.seek(4096, os.SEEK_CUR)
                pos += 4096
        shutil.copyfileobj(src, dst, 4 << 20)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rsync(images: Path, v1: Path, work: Path) -> tuple[float, int]:
    """`rsync -z` of v2 from a loopback rsync daemon onto a copy of v1: (seconds, wire bytes)."""
    port = _free_port()
    conf = rsync_daemon_config(work, "images", images)
    daemon = subprocess.Popen(["rsync", "--daemon", "--no-detach", "--address", "127.0.0.1",
                               "--port", str(port), "--config", str(conf)],
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        dest = work / "rsync-dest"
        dest.mkdir()
        shutil.copyfile(v1, dest / "v2.img")  # the basis rsync finds under the target's name
        started = time.monotonic()
        proc = subprocess.run(["rsync", "-z", "--stats", "--no-whole-file",
                               f"rsync://127.0.0.1:{port}/images/v2.img", str(dest / "v2.img")],
                              capture_output=True, text=True, check=False)
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"rsync exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    finally:
        daemon.terminate()
        daemon.wait()
    if _md5(dest / "v2.img") != _md5(images / "v2.img"):
        raise RuntimeError("rsync produced other bytes than v2")
    counts = [int(m.replace(",", "")) for m in re.findall(
        r"Total bytes (?:sent|received): ([\d,]+)", proc.stdout)]
    return seconds, sum(counts)


def _counter(node: GlanceNode, name: str) -> float:
    return node.metrics().get((name, "glance"), 0.0)


def run_delta(size: int, work: Path, log: RowLog[Row]) -> None:
    from distro.glance_images import write_image

    images = work / "delta-images"
    images.mkdir()
    print(f"writing a {size >> 20} MiB image pair v1, v2 ...", flush=True)
    _make_pair(images / "v1.img", images / "v2.img", size)
    v2_size = (images / "v2.img").stat().st_size
    props = {"os_distro": "bench", "os_version": "1"}
    write_image(images, "v1", images / "v1.img", visibility="public", properties=props,
                created_at="2026-01-01T00:00:00Z")
    write_image(images, "v2", images / "v2.img", visibility="public", properties=props,
                created_at="2026-02-01T00:00:00Z")
    checksum = _md5(images / "v2.img")
    mib = v2_size / (1 << 20)
    scenario = "update v1 -> v2"
    wire: int | None = None
    with log.guard("edgedepot nodes", failed(scenario, "edgedepot nodes")), \
         GlanceNode(["--role", "origin", "--store", str(work / "d-origin"), "--images",
                     str(images)], work / "d-origin.log") as origin, \
         GlanceNode(["--role", "cache", "--store", str(work / "d-cache"), "--upstream",
                     origin.url], work / "d-cache.log") as cache, \
         GlanceNode(["--role", "cache", "--store", str(work / "d-cache2"), "--upstream",
                     origin.url], work / "d-cache2.log") as cache2, \
         GlanceNode(["--role", "cache", "--store", str(work / "d-cache3"), "--upstream",
                     origin.url], work / "d-cache3.log") as cache3:
        listing = json.loads(cache.get("/glance/v2/images")[1])
        ids = {str(i["name"]): str(i["id"]) for i in listing["images"]}
        with log.guard("delta", failed(scenario, "cache, delta from origin")):
            print("v1 through the cache, then v2 by delta ...", flush=True)
            _timed_download(f"{cache.glance}/v2/images/{ids['v1']}/file", size, token=None)
            before = {n: _counter(cache, n) for n in ("edgedepot_upstream_bytes_total",
                                                      "edgedepot_delta_saved_bytes_total",
                                                      "edgedepot_delta_fetches_total")}
            t_delta = _timed_download(f"{cache.glance}/v2/images/{ids['v2']}/file", v2_size,
                                      token=None)
            after = {n: _counter(cache, n) for n in before}
            if after["edgedepot_delta_fetches_total"] != \
                    before["edgedepot_delta_fetches_total"] + 1:
                raise RuntimeError("v2 did not arrive by delta; see d-cache.log")
            wire = v2_size - int(after["edgedepot_delta_saved_bytes_total"]
                                 - before["edgedepot_delta_saved_bytes_total"])
            upstream = int(after["edgedepot_upstream_bytes_total"]
                           - before["edgedepot_upstream_bytes_total"])
            _verified_download(f"{cache.glance}/v2/images/{ids['v2']}/file", work, checksum,
                               None)
            log.add(Row(scenario, "cache, delta from origin", t_delta, mib / t_delta,
                        f"{wire / v2_size:.4f}",
                        f"{wire:,} B on the wire ({upstream:,} B received incl. records)"))
        with log.guard("whole", failed(scenario, "cache, whole (no basis)")):
            print("v2 whole through an empty cache ...", flush=True)
            t_whole = _timed_download(f"{cache2.glance}/v2/images/{ids['v2']}/file", v2_size,
                                      token=None)
            whole = int(_counter(cache2, "edgedepot_upstream_bytes_total"))
            log.add(Row(scenario, "cache, whole (no basis)", t_whole, mib / t_whole,
                        f"{whole / v2_size:.2f}", f"{whole:,} B received"))
        via = "2nd cache, delta (origin has the patch)"
        with log.guard("delta again", failed(scenario, via)):
            print("v1, then v2 by delta through another cache (patch computed already) ...",
                  flush=True)
            _timed_download(f"{cache3.glance}/v2/images/{ids['v1']}/file", size, token=None)
            t_again = _timed_download(f"{cache3.glance}/v2/images/{ids['v2']}/file", v2_size,
                                      token=None)
            log.add(Row(scenario, via, t_again, mib / t_again,
                        "-" if wire is None else f"{wire / v2_size:.4f}",
                        "the origin computes a patch once per pair, for all caches"))
    via = "rsync -z, daemon on loopback"
    with log.guard("rsync", failed(scenario, via)):
        print("rsync -z ...", flush=True)
        t_rsync, rsync_bytes = _rsync(images, images / "v1.img", work)
        versus = "" if wire is None else \
            f"; edgedepot delta/rsync = {wire / rsync_bytes:.2f}x (target <= 1.1x)"
        log.add(Row(scenario, via, t_rsync, mib / t_rsync, f"{rsync_bytes / v2_size:.4f}",
                    f"{rsync_bytes:,} B on the wire (bytes sent + received){versus}"))


def markdown(rows: list[Row], size: int, clients: int) -> str:
    lines = [f"Glance image {size >> 20} MiB, {clients} concurrent clients, 127.0.0.1, "
             f"{os.cpu_count()} cores", "",
             "| scenario | via | wall s | MB/s | upstream bytes / image | note |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        speed = f"{r.mb_per_s:.0f}" if r.mb_per_s is not None else "-"
        secs = f"{r.seconds:.2f}" if r.seconds else "-"
        lines.append(f"| {r.scenario} | {r.via} | {secs} | {speed} | {r.upstream_ratio} "
                     f"| {r.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=None, help="default 1024 (--quick: 64)")
    parser.add_argument("--clients", type=int, default=None, help="default 20 (--quick: 4)")
    parser.add_argument("--delta-size-mb", type=int, default=None,
                        help="size of the v1 -> v2 pair (default: --size-mb)")
    parser.add_argument("--only-delta", action="store_true",
                        help="only the update v1 -> v2 rows")
    parser.add_argument("--quick", action="store_true",
                        help="small and fast: 64 MiB images, 4 concurrent clients")
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    args.size_mb = args.size_mb or (64 if args.quick else 1024)
    args.clients = args.clients or (4 if args.quick else 20)
    needs = ["curl", "rsync"] + ([] if args.only_delta else ["nginx"])
    if any(shutil.which(tool) is None for tool in needs):
        print(f"needs {', '.join(needs)} (make benchtools installs them)")
        return 2
    size = args.size_mb << 20
    delta_size = (args.delta_size_mb or args.size_mb) << 20
    log: RowLog[Row] = RowLog("glance")
    log.note(size=size, delta_size=delta_size, clients=args.clients, cpus=os.cpu_count())
    print(f"rows go to {log.path} as they are measured", flush=True)
    work = Path(tempfile.mkdtemp(prefix="edgedepot-glance-bench-", dir="/var/tmp"))
    try:
        if not args.only_delta:
            with log.guard("Glance rows", failed("Glance rows", "real Glance")):
                run(size, args.clients, work, log)
        with log.guard("update rows", failed("update v1 -> v2", "setup")):
            run_delta(delta_size, work, log)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
        print(markdown(log.rows, size, args.clients))
        print(f"\nresults: {log.path}")
    return 1 if log.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
