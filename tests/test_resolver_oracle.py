"""Our closure against real apt-get on the real Debian bookworm indexes of this machine.

The reference is apt-get's own resolution of ``install [--no-install-recommends] TARGETS`` in a
private root (empty dpkg status, private cache, no host configuration) over /var/lib/apt/lists:
``AptOracle.closure`` takes names and versions from ``apt-get --assume-no install`` and
architectures from ``apt-cache show`` (the same sets as ``apt-get -s``, twice as fast; the
equivalence is checked here for one target). apt's answers are memoised on disk keyed by the
lists' sha256, apt's version and the request, so only the first run after an index change pays
for apt; the package cache is built once per index set.

Besides named requests (OpenStack roles, services, toolchains, virtual packages), a seeded
sweep of random requests (``tests.plugin.oracle_cases``: 2-6 OpenStack and infrastructure
targets; with conflicting packages mixed in; with version pins; with a package that breaks
what the others chose; ones that need apt's problem resolver; each with and without
Recommends) must match apt exactly, including agreeing when apt refuses a request.
``make test`` runs 100 of them; ``EDGEDEPOT_ORACLE_FULL=1`` runs 2000 and more named cases.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distro.install_order import install_order, order_violations
from distro.packages_index import PackageIndex, load_index
from distro.resolver import ResolutionError, ResolveOptions, resolve
from tests.plugin.apt_oracle import AptListSet, AptOracle, OracleResult, find_apt_lists
from tests.plugin.oracle_cases import make_cases

FULL = bool(os.environ.get("EDGEDEPOT_ORACLE_FULL"))
CONTROLLER = ("keystone glance-api placement-api nova-api nova-conductor nova-scheduler "
              "neutron-server openstack-dashboard mariadb-server rabbitmq-server memcached")
# (targets, with Recommends?): OpenStack roles, system services, toolchains, virtual packages
# (mail-transport-agent, php), or-groups, Conflicts. EDGEDEPOT_ORACLE_FULL=1 adds more.
CASES: list[tuple[str, bool]] = [
    ("nova-compute", True), ("nova-compute", False), (CONTROLLER, True), (CONTROLLER, False),
    ("openssh-server", True), ("openssh-server", False), ("build-essential", False),
    ("nginx", True), ("postgresql", True), ("mailutils", True),
    ("apache2 libapache2-mod-php", True), ("python3-openstackclient", False),
    ("nova-compute neutron-openvswitch-agent ceph-common", True),
    ("postfix exim4-daemon-light", True), ("mailutils sendmail-bin", False),
]
EXTRA_CASES: list[tuple[str, bool]] = [
    ("neutron-openvswitch-agent", True), ("cinder-volume", True),
    ("libvirt-daemon-system", True), ("libvirt-daemon-system", False),
    ("python3-openstackclient", True), ("build-essential", True), ("postgresql", False),
    ("nginx", False), ("git", True), ("mutt postfix", True), ("default-jdk-headless", True),
    ("php", False), ("xfce4", True), ("ceph", True), ("emacs-nox", True), ("ansible", False),
]
if FULL:
    CASES += EXTRA_CASES
SWEEP_SEED = 12
SWEEP_COUNT = 2000 if FULL else 100

pytestmark = pytest.mark.timeout(7200 if FULL else 3600)  # the first run waits for apt


def _cache_root() -> Path:
    base = os.environ.get("EDGEDEPOT_CACHE_DIR")
    return Path(base) if base else Path("~/.cache/edgedepot").expanduser()


@pytest.fixture(scope="session")
def bookworm_lists() -> list[AptListSet]:
    lists = find_apt_lists("bookworm")
    if not lists or "bookworm" not in lists[0].suite:
        pytest.skip("no Debian bookworm lists in /var/lib/apt/lists (run apt-get update)")
    if shutil.which("apt-get") is None:
        pytest.skip("apt-get is not installed")
    return lists


@pytest.fixture(scope="session")
def bookworm_index(bookworm_lists: list[AptListSet]) -> PackageIndex:
    return load_index([ls.packages for ls in bookworm_lists],
                      cache_dir=_cache_root() / "deb-index")


@pytest.fixture(scope="session")
def oracles(bookworm_lists: list[AptListSet]) -> list[AptOracle]:
    """Two private roots kept in the cache directory, so apt's own cache survives runs."""
    return [AptOracle(_cache_root() / f"apt-root-{i}", bookworm_lists,
                      result_cache=_cache_root() / "apt-oracle") for i in range(2)]


def _answers(oracles: list[AptOracle], requests: list[tuple[tuple[str, ...], bool]]
             ) -> dict[tuple[tuple[str, ...], bool], OracleResult]:
    """apt's answers, computed two at a time (the machine has two cores)."""

    def one(job: tuple[int, tuple[tuple[str, ...], bool]]
            ) -> tuple[tuple[tuple[str, ...], bool], OracleResult]:
        n, (targets, rec) = job
        return (targets, rec), oracles[n % 2].closure(list(targets), recommends=rec)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, enumerate(requests)))


@pytest.fixture(scope="session")
def oracle_results(oracles: list[AptOracle]
                   ) -> dict[tuple[tuple[str, ...], bool], OracleResult]:
    return _answers(oracles, [(tuple(t.split()), rec) for t, rec in CASES])


@pytest.fixture(scope="session")
def sweep(bookworm_index: PackageIndex, oracles: list[AptOracle]
          ) -> list[tuple[str, tuple[str, ...], bool, OracleResult]]:
    cases = make_cases(bookworm_index, SWEEP_SEED, SWEEP_COUNT)
    answers = _answers(oracles, [(targets, rec) for _id, targets, rec in cases])
    return [(case_id, targets, rec, answers[(targets, rec)]) for case_id, targets, rec in cases]


def _check(index: PackageIndex, targets: tuple[str, ...], recommends: bool,
           reference: OracleResult) -> None:
    """Same closure as apt, or a refusal exactly when apt refuses."""
    options = ResolveOptions(install_recommends=recommends)
    if reference.returncode != 0:
        with pytest.raises(ResolutionError):
            resolve(index, list(targets), options)
        return
    res = resolve(index, list(targets), options)
    ours = {(p.name, p.version, p.arch) for p in res.packages}
    theirs = set(reference.packages)
    assert ours == theirs, (f"missing {sorted(theirs - ours)[:10]}, "
                            f"extra {sorted(ours - theirs)[:10]}")


@pytest.mark.parametrize(("targets", "recommends"), CASES,
                         ids=[f"{t.split()[0]}{'+rec' if r else ''}" for t, r in CASES])
def test_closure_matches_apt(targets: str, recommends: bool, bookworm_index: PackageIndex,
                             oracle_results: dict[tuple[tuple[str, ...], bool], OracleResult]
                             ) -> None:
    reference = oracle_results[(tuple(targets.split()), recommends)]
    _check(bookworm_index, tuple(targets.split()), recommends, reference)
    if reference.returncode != 0:
        return
    res = resolve(bookworm_index, targets.split(), ResolveOptions(install_recommends=recommends))
    order = install_order(res.packages, bookworm_index.native_arch)
    assert [p.name for p in order.packages] != []
    assert sorted(p.name for p in order.packages) == sorted(p.name for p in res.packages)
    assert order_violations(order) == []
    again = install_order(list(reversed(res.packages)), bookworm_index.native_arch)
    assert [p.name for p in again.packages] == [p.name for p in order.packages]


@pytest.mark.parametrize("n", range(SWEEP_COUNT), ids=[f"sweep{n}" for n in range(SWEEP_COUNT)])
def test_random_request_matches_apt(
        n: int, bookworm_index: PackageIndex,
        sweep: list[tuple[str, tuple[str, ...], bool, OracleResult]]) -> None:
    case_id, targets, recommends, reference = sweep[n]
    _check(bookworm_index, targets, recommends, reference)


def test_sweep_covers_every_kind(sweep: list[tuple[str, tuple[str, ...], bool, OracleResult]]
                                 ) -> None:
    """The sweep has successful and refused requests of each kind, pins and Recommends."""
    kinds = {(re.match(r"[a-z]+", case_id).group(), ref.returncode == 0)  # type: ignore[union-attr]
             for case_id, _t, _r, ref in sweep}
    assert {("combo", True), ("conflict", True), ("pin", True), ("pin", False),
            ("alt", True), ("resolver", True), ("resolver", False)} <= kinds
    assert any(rec for _i, _t, rec, _r in sweep) and not all(rec for _i, _t, rec, _r in sweep)
    assert any("=" in t for _i, targets, _r, _ref in sweep for t in targets)


def test_virtual_target_with_several_providers(bookworm_index: PackageIndex) -> None:
    with pytest.raises(ResolutionError) as info:
        resolve(bookworm_index, ["mail-transport-agent"])
    assert "postfix" in info.value.alternatives and "exim4-daemon-light" in info.value.alternatives


def test_virtual_target_with_one_provider(bookworm_index: PackageIndex,
                                          oracles: list[AptOracle]) -> None:
    """Also checks that ``apt-get -s`` (Inst lines with architectures) gives the same set."""
    res = resolve(bookworm_index, ["libjpeg-dev"], ResolveOptions(install_recommends=False))
    reference = oracles[0].simulate(["libjpeg-dev"], recommends=False)
    assert set(reference.packages) == set(
        oracles[0].closure(["libjpeg-dev"], recommends=False).packages)
    assert {(p.name, p.version, p.arch) for p in res.packages} == set(reference.packages)
    assert "libjpeg62-turbo-dev" in res.names()


def _full_name(index: PackageIndex, pid: int) -> str:
    c = index.cache
    arch = c.pkg_arch(pid)
    name = c.pkg_name(pid)
    return name if arch in (index.native_arch, "all", "any") else f"{name}:{arch}"


def test_package_cache_is_apts(bookworm_index: PackageIndex, oracles: list[AptOracle]) -> None:
    """``apt-cache dump`` walks apt's package hash table: the same packages in the same
    order, each with the same versions in the same order, each version with the same
    dependencies (target and version) in the same order as our cache."""
    env = {**os.environ, "APT_CONFIG": str(oracles[0].root / "apt.conf"), "LC_ALL": "C.UTF-8"}
    dump = subprocess.run(["apt-cache", "dump"], capture_output=True, env=env,
                          check=True).stdout.decode("utf-8", errors="replace")
    theirs: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for line in dump.splitlines():
        if line.startswith("File: "):  # the package files come after the packages
            break
        if line.startswith("Package: "):
            theirs.append((line[9:], []))
        elif line.startswith(" Version: "):
            theirs[-1][1].append((line[10:], []))
        elif line.startswith("  Depends: "):
            theirs[-1][1][-1][1].append(line[11:])
    c = bookworm_index.cache
    ours: list[tuple[str, list[tuple[str, list[str]]]]] = []
    for i in range(len(c.hashorder)):
        pid = c.hashorder[i]
        versions = []
        for v in c.versions(pid):
            start = c.v_dstart[v]
            deps = [f"{_full_name(bookworm_index, c.d_target[d])} "
                    f"{c.string(c.d_ver[d]) if c.d_ver[d] else '(null)'}"
                    for d in range(start, start + c.v_dcount[v])]
            versions.append((c.string(c.v_str[v]), deps))
        ours.append((_full_name(bookworm_index, pid), versions))
    assert len(ours) == len(theirs)
    first_difference = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
                             if a != b), None)
    assert first_difference is None, (ours[first_difference], theirs[first_difference])
