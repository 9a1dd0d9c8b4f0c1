"""Glance images through the cache vs directly from a real Glance, side by side.

    .venv/bin/python -m benchmarks.glance                # 1 GiB image, 20 concurrent clients
    .venv/bin/python -m benchmarks.glance --size-mb 128  # quicker

Setup, all on 127.0.0.1: a real Glance (tests/glance_server.py: glance from PyPI under
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
  * delta update v1 -> v2: not measured yet (the delta engine is not wired to images).
Results are printed as Markdown and written to benchmarks/results/glance-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.peers import NginxInstance
from tests.glance_node import GlanceNode
from tests.glance_server import GlanceServer, Grant

TOKEN = "bench-admin"
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Row:
    scenario: str
    via: str
    seconds: float
    mb_per_s: float | None
    upstream_ratio: str
    note: str = ""


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


def run(size: int, clients: int, work: Path) -> list[Row]:
    image_path = work / "image.raw"
    print(f"writing a {size >> 20} MiB image ...", flush=True)
    checksum = _make_image(image_path, size)
    mib = size / (1 << 20)
    rows: list[Row] = []
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
                t = _timed_download(direct, size)
                rows.append(Row("cold, 1 client", "Glance direct", t, mib / t, "1.00"))
                t = _timed_download(cached, size)
                ratio = _upstream_bytes(origin) / size
                rows.append(Row("cold, 1 client", "cache -> origin -> Glance", t, mib / t,
                                f"{ratio:.2f}", "both tiers verify sha256, md5 and sha512"))
                for url, token in ((direct, TOKEN), (cached, TOKEN), (local, None)):
                    _verified_download(url, work, checksum, token)
                warm_cache = min(_timed_download(cached, size) for _ in range(5))
                rows.append(Row("warm, 1 client", "cache (store hit)", warm_cache,
                                mib / warm_cache, "0.00"))
                t = min(_timed_download(direct, size) for _ in range(5))
                rows.append(Row("warm, 1 client", "Glance direct", t, mib / t, "1.00"))
                t = min(_timed_download(local, size, token=None) for _ in range(5))
                rows.append(Row("warm, 1 client", "nginx, local file", t, mib / t, "-",
                                f"cache/nginx speed = {t / warm_cache:.2f}x (target >= 0.9x)"))
                print(f"{clients} concurrent cold downloads ...", flush=True)
                _clear(cache)
                _clear(origin)
                before = (_upstream_bytes(cache), _upstream_bytes(origin))
                t = _concurrent(cached, clients, size)
                cache_ratio = (_upstream_bytes(cache) - before[0]) / size
                origin_ratio = (_upstream_bytes(origin) - before[1]) / size
                rows.append(Row(f"cold, {clients} clients", "cache -> origin -> Glance", t,
                                clients * mib / t,
                                f"{cache_ratio:.2f} / {origin_ratio:.2f}",
                                "upstream ratio: cache<-origin / origin<-Glance (target 1.00)"))
                _verified_download(cached, work, checksum)
                t = _concurrent(direct, clients, size)
                rows.append(Row(f"cold, {clients} clients", "Glance direct", t, clients * mib / t,
                                f"{clients:.2f}", "Glance reads its store once per client"))
        finally:
            nginx.stop()
    rows.append(Row("update v1 -> v2", "delta vs whole", 0.0, None, "-",
                    "not measured: image delta is not implemented yet"))
    return rows


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
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--keep-workdir", action="store_true")
    args = parser.parse_args(argv)
    if shutil.which("curl") is None or shutil.which("nginx") is None:
        print("needs curl and nginx (make bench installs nginx-light)")
        return 2
    size = args.size_mb << 20
    work = Path(tempfile.mkdtemp(prefix="edgedepot-glance-bench-", dir="/var/tmp"))
    try:
        rows = run(size, args.clients, work)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(rows, size, args.clients)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"glance-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"size": size, "clients": args.clients,
                               "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
