"""Delta benchmark: edgedepot's two paths against rsync and zsync, side by side, in one run.

    python -m benchmarks.delta [--quick] [--datasets image,synthetic,shifted,packages]

Every transfer goes through one byte-counting TCP proxy on loopback in front of its server, so
"wire" is what crossed it, both directions. Per method: wire bytes, wall time, client CPU and
peak RSS (from wait4 of the client process), origin CPU per client (the server's process tree,
during the client's run), and origin one-time CPU (signature / patch / .zsync computed before).
The physical limit (``zstd --patch-from``) and the whole file (``zstd -3``) are sizes of local
files, not transfers. Each row is appended to ``benchmarks/results/delta-<timestamp>.jsonl`` and
printed as soon as it is measured; a method that fails becomes a row saying why.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.delta_data import (
    DATA_DIR,
    Pair,
    build_fs_like,
    build_image,
    build_packages,
    build_shifted,
    build_synthetic,
)
from benchmarks.peers import rsync_daemon_config
from benchmarks.report import RowLog
from distro.digests import file_sha256

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MB = 1e6


@dataclass(frozen=True)
class Row:
    dataset: str
    method: str
    wire_down: int
    wire_up: int
    wall_s: float
    client_cpu_s: float
    client_rss_mib: float
    origin_cpu_client_s: float | None
    origin_once_s: float | None
    ok: bool
    note: str = ""

    @property
    def wire(self) -> int:
        return self.wire_down + self.wire_up


def failed(dataset: str, method: str) -> Callable[[str], Row]:
    """The row a method that could not be measured becomes."""
    return lambda why: Row(dataset, method, 0, 0, 0.0, 0.0, 0.0, None, None, False, why)


# -- byte-counting proxy ---------------------------------------------------------------------------

class ByteProxy:
    """A threaded TCP proxy on loopback counting bytes upstream (sent) and downstream."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up = 0
        self.down = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = int(self._sock.getsockname()[1])
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def close(self) -> None:
        self._stop = True
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        peers = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 60)
                if not readable:
                    return
                for s in readable:
                    data = s.recv(1 << 18)
                    if not data:
                        return
                    peers[s].sendall(data)
                    with self._lock:
                        if s is client:
                            self.up += len(data)
                        else:
                            self.down += len(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()


# -- processes -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its reaped children, and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry.name))
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick
    return total


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    rss_mib: float
    code: int
    output: str


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_client(cmd: list[str], cwd: Path | None = None) -> Run:
    """Run to completion; CPU from wait4, peak RSS from the child's own VmHWM (sampled).

    (wait4's ru_maxrss would include the RSS this process had when it forked.)
    """
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    chunks: list[bytes] = []
    stdout = proc.stdout
    reader = threading.Thread(target=lambda: chunks.append(stdout.read()))
    reader.start()
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _hwm_kib(proc.pid))
        time.sleep(0.02)
    reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(time.monotonic() - started, usage.ru_utime + usage.ru_stime, peak / 1024,
               proc.returncode, b"".join(chunks).decode(errors="replace"))


class Server:
    def __init__(self, cmd: list[str], port: int, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(port, self.proc)
        self.proxy = ByteProxy(port)
        self.port = port

    def cpu(self) -> float:
        time.sleep(0.3)  # let the server reap per-connection children
        return tree_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proxy.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- methods -------------------------------------------------------------------------------------

def bench_edgedepot(pair: Pair, work: Path, log: RowLog[Row]) -> None:
    port = free_port()
    server = Server([PY, "-m", "benchmarks.delta_origin", "--root", str(work / "origin"),
                     "--port", str(port), str(pair.basis), str(pair.target)], port, cwd=ROOT)
    try:
        target_sha = file_sha256(pair.target)
        basis_sha = file_sha256(pair.basis)
        base = f"http://127.0.0.1:{port}/delta/v1/blobs/{target_sha}"
        for method in ("blocks", "patch"):  # the patch reuses the stored signature
            label = "known-basis patch" if method == "patch" else "block-hash"
            with log.guard(f"edgedepot {label}", failed(pair.name, f"edgedepot {label}")):
                before = server.cpu()
                url = base + ("/signature" if method == "blocks" else f"/patch?basis={basis_sha}")
                with urllib.request.urlopen(url, timeout=3600) as resp:
                    resp.read()
                once = server.cpu() - before
                out = work / f"edgedepot-{method}.out"
                server.proxy.reset()
                before = server.cpu()
                run = run_client([PY, "-m", "syncer.cli", "delta",
                                  f"http://127.0.0.1:{server.proxy.port}/delta/v1/blobs/{target_sha}",
                                  "--basis", str(pair.basis), "--basis-sha256", basis_sha,
                                  "-o", str(out), "--path", method], cwd=ROOT)
                per_client = server.cpu() - before
                ok = run.code == 0 and file_sha256(out) == target_sha
                log.add(Row(pair.name, f"edgedepot {label}",
                            server.proxy.down, server.proxy.up, run.wall_s, run.cpu_s,
                            run.rss_mib, per_client, once, ok, "" if ok else run.output[-300:]))
                out.unlink(missing_ok=True)
    finally:
        server.stop()


def bench_rsync(pair: Pair, work: Path, block: int | None) -> Row:
    src = work / "rsync-src"
    src.mkdir(exist_ok=True)
    link = src / "file"
    if not link.exists():
        os.link(pair.target, link) if _same_fs(pair.target, src) else shutil.copy(pair.target,
                                                                                   link)
    port = free_port()
    conf = rsync_daemon_config(work, "data", src)
    server = Server(["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
                     "--address=127.0.0.1"], port)
    try:
        dest = work / "rsync-dest"
        dest.mkdir(exist_ok=True)
        shutil.copyfile(pair.basis, dest / "file")
        server.proxy.reset()
        before = server.cpu()
        cmd = ["rsync", "-z", "--no-whole-file", *([f"-B{block}"] if block else []),
               f"rsync://127.0.0.1:{server.proxy.port}/data/file", str(dest / "file")]
        run = run_client(cmd)
        per_client = server.cpu() - before
        ok = run.code == 0 and file_sha256(dest / "file") == file_sha256(pair.target)
        (dest / "file").unlink(missing_ok=True)
    finally:
        server.stop()
    name = f"rsync -z -B{block}" if block else "rsync -z"
    return Row(pair.name, name, server.proxy.down, server.proxy.up, run.wall_s, run.cpu_s,
               run.rss_mib, per_client, 0.0, ok, "" if ok else run.output[-300:])


def bench_zsync(pair: Pair, work: Path) -> Row:
    www = work / "www"
    www.mkdir(exist_ok=True)
    if not (www / "file").exists():
        os.link(pair.target, www / "file") if _same_fs(pair.target, www) else shutil.copy(
            pair.target, www / "file")
    make = run_client(["zsyncmake", "-u", "file", "-o", str(www / "file.zsync"),
                       str(www / "file")], cwd=www)
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(
        f"daemon off;\nuser root;\nworker_processes 1;\npid {work}/nginx.pid;\n"
        f"error_log {work}/nginx-error.log;\nevents {{ worker_connections 64; }}\n"
        f"http {{ access_log off; client_body_temp_path {work}/nginx-tmp;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {www}; }} }}\n")
    server = Server(["nginx", "-c", str(conf), "-p", str(work)], port)
    try:
        out = work / "zsync.out"
        server.proxy.reset()
        before = server.cpu()
        run = run_client(["zsync", "-q", "-i", str(pair.basis), "-o", str(out),
                          f"http://127.0.0.1:{server.proxy.port}/file.zsync"], cwd=work)
        per_client = server.cpu() - before
        ok = run.code == 0 and file_sha256(out) == file_sha256(pair.target)
        out.unlink(missing_ok=True)
    finally:
        server.stop()
    return Row(pair.name, "zsync", server.proxy.down, server.proxy.up, run.wall_s, run.cpu_s,
               run.rss_mib, per_client, make.cpu_s, ok, "" if ok else run.output[-300:])


def local_sizes(pair: Pair, work: Path) -> list[Row]:
    rows = []
    patch = work / "limit.zst"
    run = run_client(["zstd", "-q", "-f", f"--patch-from={pair.basis}", str(pair.target),
                      "-o", str(patch)])
    rows.append(Row(pair.name, "physical limit: zstd --patch-from (file size)",
                    patch.stat().st_size if run.code == 0 else 0, 0, run.wall_s, run.cpu_s,
                    run.rss_mib, None, None, run.code == 0))
    patch.unlink(missing_ok=True)
    whole = work / "whole.zst"
    run = run_client(["zstd", "-q", "-f", "-3", str(pair.target), "-o", str(whole)])
    rows.append(Row(pair.name, "whole file: zstd -3 (file size)", whole.stat().st_size, 0,
                    run.wall_s, run.cpu_s, run.rss_mib, None, None, run.code == 0))
    whole.unlink(missing_ok=True)
    return rows


def _same_fs(a: Path, b: Path) -> bool:
    return a.stat().st_dev == b.stat().st_dev


# -- datasets, report, main ----------------------------------------------------------------------

def datasets(names: list[str], quick: bool) -> list[Pair]:
    pairs: list[Pair] = []
    for name in names:
        if name == "image":
            if quick:
                pairs.append(build_fs_like(64 << 20))
                continue
            try:
                pairs.append(build_image())
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                print(f"image: debootstrap pair not available ({exc}); using a synthetic "
                      "filesystem-like pair instead", file=sys.stderr)
                pairs.append(build_fs_like(1 << 30))
        elif name == "synthetic":
            pairs.append(build_synthetic((64 if quick else 512) << 20))
        elif name == "shifted":
            pairs.append(build_shifted((64 if quick else 512) << 20))
        elif name == "packages":
            pairs.append(build_packages(limit=8_000_000 if quick else None))
        else:
            raise SystemExit(f"unknown dataset {name!r} (image, synthetic, shifted, packages)")
    return pairs


def bench_pair(pair: Pair, quick: bool, log: RowLog[Row]) -> list[Row]:
    """Every method on one pair; each row is logged as it is measured, failures included."""
    first = len(log.rows)
    with tempfile.TemporaryDirectory(prefix=f"delta-{pair.name}-", dir=DATA_DIR) as tmp:
        work = Path(tmp)
        with log.guard("local sizes", failed(pair.name, "physical limit / whole file")):
            for row in local_sizes(pair, work):
                log.add(row)
        with log.guard("edgedepot", failed(pair.name, "edgedepot delta origin")):
            bench_edgedepot(pair, work, log)
        for block in (4096, None) if not quick else (4096,):
            name = f"rsync -z -B{block}" if block else "rsync -z"
            with log.guard(name, failed(pair.name, name)):
                log.add(bench_rsync(pair, work, block))
        with log.guard("zsync", failed(pair.name, "zsync")):
            log.add(bench_zsync(pair, work))
    return log.rows[first:]


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


HEADERS = ("method", "wire MB (down+up)", "x limit", "wall s", "client CPU s",
           "client peak RSS MiB", "origin CPU/client s", "origin one-time CPU s", "ok")


def table_rows(rows: list[Row]) -> list[tuple[str, ...]]:
    limit = next((r.wire for r in rows if r.method.startswith("physical")), 0)
    out: list[tuple[str, ...]] = []
    for r in rows:
        local = r.method.startswith(("physical", "whole"))
        wire = f"{r.wire / MB:.3f}" if local else \
            f"{r.wire / MB:.3f} ({r.wire_down / MB:.3f}+{r.wire_up / MB:.3f})"
        ratio = f"{r.wire / limit:.2f}" if limit else "-"
        out.append((r.method, wire, ratio, _f(r.wall_s), _f(r.client_cpu_s),
                    _f(r.client_rss_mib, 0), _f(r.origin_cpu_client_s), _f(r.origin_once_s),
                    "yes" if r.ok else f"NO {r.note[:60]}"))
    return out


def verdicts(pair: Pair, rows: list[Row]) -> list[str]:
    by = {r.method: r for r in rows if r.ok}
    limit_row = by.get("physical limit: zstd --patch-from (file size)")
    limit = limit_row.wire if limit_row else 0
    patch = by.get("edgedepot known-basis patch")
    blocks = by.get("edgedepot block-hash")
    rsync = by.get("rsync -z -B4096")
    zsync = by.get("zsync")
    out = []
    if patch and limit:
        bound = 1.10
        out.append(f"known-basis wire {patch.wire / limit:.2f}x limit (target <= {bound}x): "
                   f"{'PASS' if patch.wire <= bound * limit else 'FAIL'}")
    if blocks and rsync:
        out.append(f"block-hash wire {blocks.wire / MB:.3f} MB vs rsync -z -B4096 "
                   f"{rsync.wire / MB:.3f} MB: {'PASS' if blocks.wire <= rsync.wire else 'FAIL'}")
    if blocks and zsync:
        gib = pair.target.stat().st_size / (1 << 30)
        startup = STARTUP_CPU.get("s", 0.0)
        out.append(f"block-hash client CPU {blocks.client_cpu_s / gib:.2f} s/GiB vs zsync "
                   f"{zsync.client_cpu_s / gib:.2f} s/GiB: "
                   f"{'PASS' if blocks.client_cpu_s <= zsync.client_cpu_s else 'FAIL'} "
                   f"(includes {startup:.2f} s of Python start-up and imports per run)")
    if pair.name == "image" and (patch or blocks):
        worst = max((r.client_rss_mib for r in (patch, blocks) if r), default=0.0)
        out.append(f"edgedepot client peak RSS {worst:.0f} MiB (target < 256): "
                   f"{'PASS' if worst < 256 else 'FAIL'}")
    return out


STARTUP_CPU: dict[str, float] = {}


def measure_startup() -> None:
    run = run_client([PY, "-c", "import syncer.cli, syncer.delta_client, syncer.cmd_delta"],
                     cwd=ROOT)
    STARTUP_CPU["s"] = run.cpu_s


def markdown(results: list[tuple[Pair, list[Row]]]) -> str:
    lines = []
    for pair, rows in results:
        lines.append(f"### {pair.name}: {pair.label}")
        if pair.note:
            lines.append(f"*{pair.note}*")
        lines.append("")
        lines.append("| " + " | ".join(HEADERS) + " |")
        lines.append("|" + "---|" * len(HEADERS))
        for cells in table_rows(rows):
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.extend(f"- {v}" for v in verdicts(pair, rows))
        lines.append("")
    return "\n".join(lines)


def print_rich(results: list[tuple[Pair, list[Row]]]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)
    for pair, rows in results:
        table = Table(title=f"{pair.name}: {pair.label}")
        for h in HEADERS:
            table.add_column(h, justify="left" if h in ("method", "ok") else "right")
        for cells in table_rows(rows):
            table.add_row(*cells)
        console.print(table)
        for v in verdicts(pair, rows):
            console.print(f"  {v}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delta", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small datasets (64 MiB, 8 MB index; image -> synthetic stand-in)")
    parser.add_argument("--datasets", default=None,
                        help="comma-separated: image,synthetic,shifted,packages "
                             "(default: all; --quick: synthetic,shifted,packages)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    names = (args.datasets or ("synthetic,shifted,packages" if args.quick else
                               "image,synthetic,shifted,packages")).split(",")
    missing = [t for t in ("rsync", "zsync", "zsyncmake", "zstd", "nginx") if not shutil.which(t)]
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)}")
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    log: RowLog[Row] = RowLog("delta")
    log.note(datasets=names, quick=args.quick)
    print(f"rows go to {log.path} as they are measured", file=sys.stderr)
    measure_startup()
    results: list[tuple[Pair, list[Row]]] = []
    try:
        for name in [n.strip() for n in names if n.strip()]:
            pairs: list[Pair] = []
            with log.guard(f"dataset {name}", failed(name, "building the dataset")):
                pairs = datasets([name], args.quick)
            for pair in pairs:
                print(f"benchmarking {pair.name}: {pair.label} ...", file=sys.stderr)
                results.append((pair, bench_pair(pair, args.quick, log)))
    finally:
        print_rich(results)
        print()
        print(markdown(results))
        for what, reason in log.failures:
            print(f"- FAILED {what}: {reason}")
        print(f"\nresults: {log.path}")
        if args.json:
            args.json.write_text(json.dumps([{"dataset": p.label, "rows": [asdict(r) for r in rows]}
                                             for p, rows in results], indent=1))
    return 0 if all(r.ok for _, rows in results for r in rows) and not log.failures else 1


if __name__ == "__main__":
    sys.exit(main())
