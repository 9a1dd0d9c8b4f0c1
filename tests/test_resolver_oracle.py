"""Our closure against real apt-get on the real Debian bookworm indexes of this machine.

The reference is apt-get's own resolution of ``install [--no-install-recommends] TARGETS`` in a
private root (empty dpkg status, private cache, no host configuration) over /var/lib/apt/lists:
``AptOracle.closure`` takes names and versions from ``apt-get --assume-no install`` and
architectures from ``apt-cache show`` (the same sets as ``apt-get -s``, twice as fast; the
equivalence is checked here for one target). apt's answers are memoised on disk keyed by the
lists' sha256, apt's version and the request, so only the first run after an index change pays
for apt; the parsed indexes use the parse cache.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from distro.install_order import install_order, order_violations
from distro.packages_index import PackageIndex, load_index
from distro.resolver import ResolutionError, ResolveOptions, resolve
from tests.plugin.apt_oracle import AptListSet, AptOracle, OracleResult, find_apt_lists

CONTROLLER = ("keystone glance-api placement-api nova-api nova-conductor nova-scheduler "
              "neutron-server openstack-dashboard mariadb-server rabbitmq-server memcached")
# (targets, with Recommends?): OpenStack roles, system services, toolchains, virtual packages
# (mail-transport-agent, php), or-groups, Conflicts. EDGEDEPOT_ORACLE_FULL=1 adds more.
CASES: list[tuple[str, bool]] = [
    ("nova-compute", True), ("nova-compute", False), (CONTROLLER, True), (CONTROLLER, False),
    ("openssh-server", True), ("openssh-server", False), ("build-essential", False),
    ("nginx", True), ("postgresql", True), ("mailutils", True),
    ("apache2 libapache2-mod-php", True), ("python3-openstackclient", False),
]
EXTRA_CASES: list[tuple[str, bool]] = [
    ("neutron-openvswitch-agent", True), ("cinder-volume", True),
    ("libvirt-daemon-system", True), ("libvirt-daemon-system", False),
    ("python3-openstackclient", True), ("build-essential", True), ("postgresql", False),
    ("nginx", False), ("git", True), ("mutt postfix", True), ("default-jdk-headless", True),
    ("php", False), ("xfce4", True), ("ceph", True), ("emacs-nox", True), ("ansible", False),
]
if os.environ.get("EDGEDEPOT_ORACLE_FULL"):
    CASES += EXTRA_CASES

pytestmark = pytest.mark.timeout(3600)  # the first run after an index change waits for apt


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


@pytest.fixture(scope="session")
def oracle_results(oracles: list[AptOracle]) -> dict[tuple[str, bool], OracleResult]:
    """All reference answers, computed two at a time (the machine has two cores)."""

    def one(job: tuple[int, tuple[str, bool]]) -> tuple[tuple[str, bool], OracleResult]:
        n, (targets, rec) = job
        return (targets, rec), oracles[n % 2].closure(targets.split(), recommends=rec)

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, enumerate(CASES)))


@pytest.mark.parametrize(("targets", "recommends"), CASES,
                         ids=[f"{t.split()[0]}{'+rec' if r else ''}" for t, r in CASES])
def test_closure_matches_apt(targets: str, recommends: bool, bookworm_index: PackageIndex,
                             oracle_results: dict[tuple[str, bool], OracleResult]) -> None:
    reference = oracle_results[(targets, recommends)]
    assert reference.returncode == 0, reference.output[-2000:]
    res = resolve(bookworm_index, targets.split(), ResolveOptions(install_recommends=recommends))
    ours = {(p.name, p.version, p.arch) for p in res.packages}
    theirs = set(reference.packages)
    assert ours == theirs, (f"missing {sorted(theirs - ours)[:10]}, "
                            f"extra {sorted(ours - theirs)[:10]}")
    order = install_order(res.packages, bookworm_index.native_arch)
    assert [p.name for p in order.packages] != []
    assert sorted(p.name for p in order.packages) == sorted(p.name for p in res.packages)
    assert order_violations(order) == []
    again = install_order(list(reversed(res.packages)), bookworm_index.native_arch)
    assert [p.name for p in again.packages] == [p.name for p in order.packages]


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


def test_lazy_mention_order_matches_full_scan(bookworm_index: PackageIndex) -> None:
    """apt's package-ID order, found per name on demand, equals the order of a full scan."""
    from distro.packages_index import mention_codes

    main = bookworm_index.files[0]
    full = mention_codes(main.data, main.starts, main.names)
    names = sorted(full)[::1499] + [b"libc6", b"awk", b"less", b"mail-transport-agent"]
    assert all(main.mention_code(n.decode()) == full[n] for n in names)
