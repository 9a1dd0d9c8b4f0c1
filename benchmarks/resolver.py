"""Resolver benchmark: one ``distro-sync resolve`` process per request against apt-get's own
resolution, side by side, in one run.

On this machine's real Debian bookworm main + updates + security lists, for OpenStack roles and
combined requests (one needs apt's problem resolver), each with and without Recommends:

* ours: ``distro-sync resolve --index <the three Packages files>`` as an operator runs it, one
  process per request, Python start included, with its package cache present (built once per
  index set, like apt's ``pkgcache.bin``) and the package's bytecode compiled (as an installed
  package has it): resolve, order, print the JSON plan;
* apt resolve-only: ``apt-get --assume-no install`` in a private root (empty status, private
  cache and configuration) whose binary caches are warm and whose lists are stored as apt
  stores them by default, uncompressed. It resolves, computes the download list and stops at
  the prompt; no ordering, no simulation;
* for reference: ``apt-get -s install`` (resolution plus ordering and simulation), whose
  package set must equal ours, and ``--assume-no`` over the machine's ``.lz4`` lists: apt
  then decompresses a whole list for every record it reads (most of its time), which is why
  the earlier figure (about 7 s for nova-compute) was not apt's resolution time.

Both sides are measured alternately in every repetition; every number is a whole process's wall
time (median of ``--repeat`` runs) and its peak RSS (``wait4``). A cold row times building the
caches: ours from the compressed lists, apt's ``pkgcache.bin``.

    python -m benchmarks.resolver [--repeat 5] [--cases nova-compute,controller,...]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.report import RowLog
from tests.plugin.apt_oracle import _INST, AptOracle, find_apt_lists

CONTROLLER = ("keystone glance-api placement-api nova-api nova-conductor nova-scheduler "
              "neutron-server openstack-dashboard mariadb-server rabbitmq-server memcached")
CASES = {
    "nova-compute": "nova-compute",
    "controller": CONTROLLER,
    "compute+ovs+ceph": "nova-compute neutron-openvswitch-agent ceph-common",
    "haproxy+keepalived": "haproxy keepalived",
    "problem-resolver": "mariadb-client octavia-worker libpam-elogind postgresql-15-plsh",
}
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Run:
    """One process: wall seconds, peak RSS in MiB."""

    seconds: float
    rss_mib: float


@dataclass(frozen=True)
class CaseResult:
    case: str
    recommends: bool
    packages: int
    identical: bool
    ours: tuple[Run, ...]
    apt: tuple[Run, ...]
    apt_sim: tuple[Run, ...]
    apt_lz4: tuple[Run, ...]


@dataclass(frozen=True)
class ColdResult:
    """Building the caches: ours (distro-sync resolve with an empty cache directory) and
    apt's (apt-get --assume-no with pkgcache.bin and srcpkgcache.bin removed)."""

    case: str
    ours: tuple[Run, ...]
    apt: tuple[Run, ...]


_SPAWNER = r"""
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    out = os.open(job["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os.dup2(out, 1)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        try:
            os.execvpe(job["argv"][0], job["argv"], job["env"])
        finally:
            os._exit(127)
    _pid, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    os.close(out)
    print(json.dumps([wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status)]), flush=True)
"""


class _Spawner:
    """A small helper process that runs the measured commands: a child's peak RSS counts the
    process it was forked from, so that must not be this benchmark (rich, the results)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", _SPAWNER], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.out = tempfile.NamedTemporaryFile(prefix="resolver-bench-", delete=False)
        self.out.close()

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None
            ) -> tuple[Run, str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"argv": list(argv), "env": {**os.environ, **(env or {})}, "out": self.out.name}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        wall, maxrss, rc = json.loads(self.proc.stdout.readline())
        text = Path(self.out.name).read_text(encoding="utf-8", errors="replace")
        return Run(wall, maxrss / 1024), text, rc

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()
        os.unlink(self.out.name)


_spawner: _Spawner | None = None


def _measure(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[Run, str, int]:
    """Run a process to completion; its wall time, peak RSS (wait4) and stdout."""
    global _spawner
    if _spawner is None:
        _spawner = _Spawner()
    return _spawner.run(argv, env)


def _median(runs: Sequence[Run]) -> Run:
    return Run(statistics.median(r.seconds for r in runs),
               statistics.median(r.rss_mib for r in runs))


def _ours(index: Sequence[Path], cache: Path, recommends: bool) -> list[str]:
    argv = [str(Path(sys.executable).with_name("distro-sync")), "resolve", "--index",
            *map(str, index), "--cache-dir", str(cache)]
    return argv if recommends else [*argv, "--no-recommends"]


def run_case(case: str, targets: list[str], recommends: bool, repeat: int, index: list[Path],
             cache: Path, apt: AptOracle, apt_lz4: AptOracle | None, console: Console
             ) -> CaseResult:
    ours_argv = [*_ours(index, cache, recommends), "--", *targets]
    rec_flag = [] if recommends else ["--no-install-recommends"]
    env = {"APT_CONFIG": str(apt.root / "apt.conf"), "LC_ALL": "C.UTF-8"}
    apt_argv = ["apt-get", *rec_flag, "--assume-no", "install", *targets]
    _measure(apt_argv, env)  # apt's caches warm, as ours is
    ours, apts, lz4, sims = [], [], [], []
    plan_text = ""
    for rep in range(repeat):
        run, plan_text, rc = _measure(ours_argv)
        if rc != 0:
            raise RuntimeError(f"distro-sync resolve exited {rc}")
        ours.append(run)
        apts.append(_measure(apt_argv, env)[0])
        if apt_lz4 is not None and rep < 2:
            lz4_env = {"APT_CONFIG": str(apt_lz4.root / "apt.conf"), "LC_ALL": "C.UTF-8"}
            lz4.append(_measure(apt_argv, lz4_env)[0])
        console.log(f"{case} rec={recommends} rep {rep + 1}/{repeat}: ours "
                    f"{ours[-1].seconds:.2f}s, apt {apts[-1].seconds:.2f}s")
    sim_out = ""
    for _rep in range(min(repeat, 3)):
        run, sim_out, _rc = _measure(["apt-get", *rec_flag, "-s", "-q", "install", *targets],
                                     env)
        sims.append(run)
    theirs = {(m[0], m[1], m[2]) for m in _INST.findall(sim_out)}
    plan = json.loads(plan_text)
    mine = {(p["name"], p["version"], p["arch"]) for p in plan["packages"]}
    return CaseResult(case, recommends, len(mine), mine == theirs, tuple(ours), tuple(apts),
                      tuple(sims), tuple(lz4))


def run_cold(targets: list[str], repeat: int, index: list[Path], work: Path, apt: AptOracle
             ) -> ColdResult:
    ours, apts = [], []
    env = {"APT_CONFIG": str(apt.root / "apt.conf"), "LC_ALL": "C.UTF-8"}
    for rep in range(repeat):
        cache = work / f"cold-{rep}"
        shutil.rmtree(cache, ignore_errors=True)
        run, _text, rc = _measure([*_ours(index, cache, True), "--", *targets])
        if rc != 0:
            raise RuntimeError(f"distro-sync resolve exited {rc}")
        ours.append(run)
        shutil.rmtree(cache, ignore_errors=True)
        apt.drop_cache()
        apts.append(_measure(["apt-get", "--assume-no", "install", *targets], env)[0])
    return ColdResult("cold: " + " ".join(targets), tuple(ours), tuple(apts))


HEADER = ["case", "Recommends", "packages", "identical to apt -s", "ours per process s",
          "apt resolve-only s", "ratio ours/apt (<=1, moonshot 0.5)", "ours RSS MiB",
          "apt RSS MiB", "apt -s s", "apt --assume-no on .lz4 lists s"]


def table_rows(results: Sequence[CaseResult], cold: Sequence[ColdResult] = ()
               ) -> list[list[str]]:
    rows = [HEADER]
    for r in results:
        ours, apt, sim = _median(r.ours), _median(r.apt), _median(r.apt_sim)
        lz4 = f"{_median(r.apt_lz4).seconds:.2f}" if r.apt_lz4 else "-"
        rows.append([r.case, "yes" if r.recommends else "no", str(r.packages),
                     "yes" if r.identical else "NO", f"{ours.seconds:.3f}",
                     f"{apt.seconds:.3f}", f"{ours.seconds / apt.seconds:.2f}",
                     f"{ours.rss_mib:.0f}", f"{apt.rss_mib:.0f}", f"{sim.seconds:.2f}", lz4])
    for c in cold:
        ours, apt = _median(c.ours), _median(c.apt)
        rows.append([c.case, "yes", "-", "-", f"{ours.seconds:.2f}", f"{apt.seconds:.2f}",
                     f"{ours.seconds / apt.seconds:.2f}", f"{ours.rss_mib:.0f}",
                     f"{apt.rss_mib:.0f}", "-", "-"])
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resolver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cold-repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    lists = find_apt_lists("bookworm")
    if not lists or shutil.which("apt-get") is None:
        console.print("no bookworm lists in /var/lib/apt/lists (run apt-get update) or no apt")
        return 2
    index = [ls.packages for ls in lists]
    for package in ("distro", "syncer"):  # an installed package has its bytecode
        compileall.compile_dir(str(ROOT / package), quiet=1)
    results: list[CaseResult] = []
    colds: list[ColdResult] = []
    log: RowLog[CaseResult | ColdResult] = RowLog("resolver", show=False)
    console.print(f"rows go to {log.path} as they are measured")
    with tempfile.TemporaryDirectory(prefix="resolver-bench-") as tmp:
        work = Path(tmp)
        apt = AptOracle(work / "apt-root", lists)
        compressed = any(ls.packages.suffix in (".lz4", ".gz", ".xz") for ls in lists)
        apt_lz4 = AptOracle(work / "apt-root-lz4", lists, plain_lists=False) if compressed \
            else None
        cache = work / "cache"
        _measure([*_ours(index, cache, True), "--", "nova-compute"])  # build our cache once
        for case in args.cases.split(","):
            for recommends in (False, True):
                with log.guard(f"{case} recommends={recommends}"):
                    result = run_case(case, CASES[case].split(), recommends, args.repeat,
                                      index, cache, apt, apt_lz4, console)
                    log.add(result)
                    results.append(result)
        if args.cold_repeat:
            with log.guard("cold"):
                cold = run_cold(["nova-compute"], args.cold_repeat, index, work, apt)
                log.add(cold)
                colds.append(cold)
    if _spawner is not None:
        _spawner.close()
    for what, reason in log.failures:
        console.print(f"[red]FAILED {what}[/red]: {reason}")
    if not results:
        return 1
    rows = table_rows(results, colds)
    table = Table(title=f"distro-sync resolve vs apt-get (medians of {args.repeat}; wall s "
                        "per process)")
    for col in rows[0]:
        table.add_column(col)
    for row in rows[1:]:
        table.add_row(*row)
    Console(width=240).print(table)
    print()
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in (*results, *colds)],
                                        default=lambda o: o.__dict__, indent=2))
    ok = all(r.identical for r in results) and not log.failures
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
