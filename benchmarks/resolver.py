"""Resolver benchmark: ``distro-sync resolve`` against apt-get, side by side, in one run.

On this machine's real Debian bookworm main + updates + security lists, for ``nova-compute`` and
an OpenStack controller set, each with and without Recommends:

* ours cold: ``distro-sync resolve`` with an empty parse cache (parses the compressed indexes,
  writes the cache, resolves, orders, prints the JSON plan); ours warm: the same with the cache;
* apt-get in a private root (empty status, private cache, no host configuration): cold
  ``--assume-no install`` with its binary caches removed (the run builds them), warm
  ``--assume-no install`` (resolution only) and warm ``-s install`` (resolution + ordering).

Every number is a whole process's wall time (median of ``--repeat`` runs) and its peak RSS
(``wait4``). The package sets of ours and of ``apt-get -s`` must be identical.

    python -m benchmarks.resolver [--repeat 3] [--cases nova-compute,controller]
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.report import RowLog
from tests.plugin.apt_oracle import AptOracle, find_apt_lists

CONTROLLER = ("keystone glance-api placement-api nova-api nova-conductor nova-scheduler "
              "neutron-server openstack-dashboard mariadb-server rabbitmq-server memcached")
CASES = {"nova-compute": "nova-compute", "controller": CONTROLLER}


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
    ours_cold: tuple[Run, ...]
    ours_warm: tuple[Run, ...]
    apt_cold: tuple[Run, ...]
    apt_warm: tuple[Run, ...]
    apt_sim: tuple[Run, ...]


def _measure(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[Run, str, int]:
    """Run a process to completion; its wall time, peak RSS (wait4) and stdout."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})})
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
    return Run(wall, usage.ru_maxrss / 1024), text, proc.returncode


def _median(runs: Sequence[Run]) -> Run:
    return Run(statistics.median(r.seconds for r in runs),
               statistics.median(r.rss_mib for r in runs))


def run_case(case: str, targets: list[str], recommends: bool, repeat: int, index: list[Path],
             oracle: AptOracle, work: Path, console: Console) -> CaseResult:
    ours = [str(Path(sys.executable).with_name("distro-sync")), "resolve", "--index",
            *map(str, index)]
    if not recommends:
        ours.append("--no-recommends")
    apt_env = {"APT_CONFIG": str(oracle.root / "apt.conf"), "LC_ALL": "C.UTF-8"}
    rec_flag = [] if recommends else ["--no-install-recommends"]
    cold, warm, a_cold, a_warm, a_sim = [], [], [], [], []
    plan_text = ""
    for rep in range(repeat):
        cache = work / f"cache-{case}-{recommends}-{rep}"
        shutil.rmtree(cache, ignore_errors=True)
        run, _text, rc = _measure([*ours, "--cache-dir", str(cache), "--", *targets])
        assert rc == 0, "cold resolve failed"
        cold.append(run)
        run, plan_text, rc = _measure([*ours, "--cache-dir", str(cache), "--", *targets])
        assert rc == 0, "warm resolve failed"
        warm.append(run)
        oracle.drop_cache()
        a_cold.append(_measure(["apt-get", *rec_flag, "--assume-no", "install", *targets],
                               apt_env)[0])
        a_warm.append(_measure(["apt-get", *rec_flag, "--assume-no", "install", *targets],
                               apt_env)[0])
        console.log(f"{case} rec={recommends} rep {rep + 1}/{repeat}: ours {cold[-1].seconds:.1f}"
                    f"/{warm[-1].seconds:.1f}s, apt {a_cold[-1].seconds:.1f}/"
                    f"{a_warm[-1].seconds:.1f}s")
    sim_out = ""
    for _rep in range(repeat):
        run, sim_out, _rc = _measure(["apt-get", *rec_flag, "-s", "-q", "install", *targets],
                                     apt_env)
        a_sim.append(run)
    from tests.plugin.apt_oracle import _INST

    theirs = {(m[0], m[1], m[2]) for m in _INST.findall(sim_out)}
    plan = json.loads(plan_text)
    mine = {(p["name"], p["version"], p["arch"]) for p in plan["packages"]}
    return CaseResult(case, recommends, len(mine), mine == theirs, tuple(cold), tuple(warm),
                      tuple(a_cold), tuple(a_warm), tuple(a_sim))


def table_rows(results: Sequence[CaseResult]) -> list[list[str]]:
    header = ["case", "Recommends", "packages", "identical to apt -s", "ours cold s",
              "ours warm s", "ours RSS cold/warm MiB", "apt cold s", "apt warm --assume-no s",
              "apt warm -s s", "apt peak RSS MiB", "warm ratio (<=0.5)", "cold ratio (<=1)"]
    rows = [header]
    for r in results:
        oc, ow, ac, aw, asim = (_median(x) for x in
                                (r.ours_cold, r.ours_warm, r.apt_cold, r.apt_warm, r.apt_sim))
        rows.append([r.case, "yes" if r.recommends else "no", str(r.packages),
                     "yes" if r.identical else "NO", f"{oc.seconds:.2f}", f"{ow.seconds:.2f}",
                     f"{oc.rss_mib:.0f}/{ow.rss_mib:.0f}", f"{ac.seconds:.2f}",
                     f"{aw.seconds:.2f}", f"{asim.seconds:.2f}",
                     f"{max(ac.rss_mib, aw.rss_mib, asim.rss_mib):.0f}",
                     f"{ow.seconds / aw.seconds:.2f}", f"{oc.seconds / ac.seconds:.2f}"])
    return rows


def markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resolver", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    lists = find_apt_lists("bookworm")
    if not lists or shutil.which("apt-get") is None:
        console.print("no bookworm lists in /var/lib/apt/lists (run apt-get update) or no apt")
        return 2
    index = [ls.packages for ls in lists]
    results: list[CaseResult] = []
    log: RowLog[CaseResult] = RowLog("resolver", show=False)
    console.print(f"cases go to {log.path} as they are measured")
    with tempfile.TemporaryDirectory(prefix="resolver-bench-") as tmp:
        work = Path(tmp)
        oracle = AptOracle(work / "apt-root", lists)
        for case in args.cases.split(","):
            for recommends in (False, True):
                with log.guard(f"{case} recommends={recommends}"):
                    results.append(log.add(run_case(case, CASES[case].split(), recommends,
                                                    args.repeat, index, oracle, work, console)))
    for what, reason in log.failures:
        console.print(f"[red]FAILED {what}[/red]: {reason}")
    if not results:
        return 1
    rows = table_rows(results)
    table = Table(title=f"resolver vs apt-get (medians of {args.repeat}; wall s per process)")
    for col in rows[0]:
        table.add_column(col)
    for row in rows[1:]:
        table.add_row(*row)
    Console(width=220).print(table)
    print()
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], default=lambda o: o.__dict__,
                                        indent=2))
    ok = all(r.identical for r in results) and not log.failures
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
