"""Seeded random ``apt-get install`` requests for the resolver's oracle comparisons.

Three kinds, each drawn with and without Recommends:

* ``combo``: 2-6 targets from the OpenStack and infrastructure packages of the index
  (nova-*, neutron-*, cinder-*, keystone, glance, swift, horizon, openvswitch, haproxy,
  nginx, mariadb, rabbitmq, memcached, ceph-*, libvirt, qemu-system-*, ...);
* ``conflict``: the same with 1-3 of them replaced by packages that conflict with, break
  or replace common choices (mail transport agents, syslog and cron daemons, time
  servers, network managers, awk and init variants, web servers, ...), so that or-group
  choices collide and apt's problem resolver has work to do, or apt gives up;
* ``pin``: 1-2 targets pinned to a version (``name=version``, any version the index has,
  not only the candidate), so older versions with exact-version sibling dependencies make
  the request unsatisfiable or push the resolver to other choices;
* ``alt``: OpenStack/infrastructure targets, then (last) a package that conflicts with or
  breaks what their dependencies chose: a conflicting package of the list above, or one that
  hits the first alternative of an or-group of a target's (or its dependencies')
  dependencies; its install unmarks that choice, and apt's problem resolver must find
  another alternative, keep something back, or give up;
* ``resolver``: conflict-style requests (1-2 conflicting packages at random places) drawn
  until one leaves marking broken, so that apt runs its problem resolver (our resolver finds
  them; apt judges the outcome).

The pools come from the index itself (names matching the patterns, sorted), so a request
list is a pure function of the lists and the seed.
"""

from __future__ import annotations

import random
import re

from distro.packages_index import PackageIndex
from distro.versions import version_satisfies

__all__ = ["CONFLICTING", "OracleCase", "conflict_pool", "make_cases", "pin_pool",
           "target_pool"]

OracleCase = tuple[str, tuple[str, ...], bool]  # (id, targets, with Recommends)

_POOL = re.compile(
    r"^(nova-|neutron-|cinder-|keystone|glance|swift|horizon|openstack-|placement-|heat-|"
    r"barbican-|designate-|octavia-|manila-|ironic-|magnum-|aodh-|ceilometer-|gnocchi-|"
    r"openvswitch|ovn-|haproxy|nginx|mariadb|rabbitmq|memcached|ceph|libvirt|qemu-system|"
    r"keepalived|apache2|postgresql|python3-openstackclient|radosgw|rbd-|corosync|pacemaker|"
    r"chrony|bind9|dnsmasq|ebtables|iptables|nftables|lvm2|open-iscsi|tgt|multipath|kea-|"
    r"isc-dhcp|frr|strongswan)")
_SKIP = ("-dbg", "-doc", "-dev", "-dbgsym")
CONFLICTING = (
    "postfix", "exim4-daemon-light", "exim4-daemon-heavy", "sendmail-bin", "nullmailer",
    "msmtp-mta", "dma", "opensmtpd", "rsyslog", "syslog-ng", "busybox-syslogd",
    "inetutils-syslogd", "systemd-cron", "cron", "bcron", "ntp", "ntpsec", "openntpd",
    "chrony", "systemd-timesyncd", "ifupdown", "ifupdown2", "network-manager", "resolvconf",
    "openresolv", "systemd-resolved", "dhcpcd5", "udhcpc", "mawk", "gawk", "original-awk",
    "default-mysql-server", "mysql-server", "sysvinit-core", "runit-init", "iptables",
    "nftables", "lighttpd", "apache2", "nginx", "nginx-light", "nginx-extras",
    "libapache2-mod-php", "php-fpm", "default-jre-headless", "openjdk-17-jre-headless",
    "vim", "vim-tiny", "nvi", "emacs-nox", "mariadb-server", "mariadb-client",
    "default-mysql-client", "netcat-openbsd", "netcat-traditional", "ncat", "ssmtp", "sudo",
    "opendoas", "policykit-1", "elogind", "libpam-elogind", "systemd-sysv", "apparmor",
    "selinux-basics", "dropbear", "openssh-server", "tinysshd", "xinetd", "openbsd-inetd",
)


def target_pool(index: PackageIndex) -> list[str]:
    return sorted(n for n in index.names() if _POOL.match(n) and not n.endswith(_SKIP))


def conflict_pool(index: PackageIndex) -> list[str]:
    return [n for n in CONFLICTING if index.candidate(n, index.native_arch) is not None]


def pin_pool(index: PackageIndex, names: list[str]) -> list[tuple[str, list[str]]]:
    """Packages with more than one version, and their versions (newest first)."""
    out = []
    for name in names:
        versions = [v.version for v in index.versions(name, index.native_arch)]
        if len(versions) > 1:
            out.append((name, versions))
    return out


def alternative_pool(index: PackageIndex, names: list[str]) -> list[tuple[str, str]]:
    """(package, breaker) pairs: ``package`` (or one of its dependencies) depends on
    ``X | Y ...`` and ``breaker`` conflicts with or breaks ``X``, the alternative apt would
    take first; requested in this order, the breaker's install unmarks ``X`` and apt's
    problem resolver has to find the other alternative (or give up)."""
    c = index.cache
    ops = {1: "<=", 2: ">=", 3: "<<", 4: ">>", 5: "=", 6: "!="}
    breakers: dict[int, set[str]] = {}  # package -> names of candidates conflicting with it
    for v in range(c.n_versions):
        pid = c.v_pkg[v]
        if c.pkg_arch(pid) != index.native_arch or index.candidate(
                c.pkg_name(pid), index.native_arch) != index.version(v):
            continue
        start = c.v_dstart[v]
        for d in range(start, start + c.v_dcount[v]):
            if c.d_type[d] not in (5, 8) or c.d_op[d] & 0x20:
                continue
            target = index.candidate(c.pkg_name(c.d_target[d]), index.native_arch)
            if target is None or target.name == c.pkg_name(pid):
                continue
            if c.d_ver[d] and not version_satisfies(target.version, ops[c.d_op[d] & 0x0F],
                                                    c.string(c.d_ver[d])):
                continue  # does not hit the candidate apt would install
            breakers.setdefault(c.d_target[d], set()).add(c.pkg_name(pid))
    pairs: set[tuple[str, str]] = set()
    for name in names:
        cand = index.candidate(name, index.native_arch)
        if cand is None:
            continue
        seen = {cand.id}
        level = [cand.id]
        for _depth in range(2):
            nxt: list[int] = []
            for v in level:
                start = c.v_dstart[v]
                first = True
                for d in range(start, start + c.v_dcount[v]):
                    if c.d_type[d] not in (1, 2):
                        first = True
                        continue
                    if first and c.d_op[d] & 0x10:  # the first alternative of an or-group
                        for breaker in breakers.get(c.d_target[d], ()):
                            if breaker != name:
                                pairs.add((name, breaker))
                    first = not c.d_op[d] & 0x10
                    dep = index.candidate(c.pkg_name(c.d_target[d]), index.native_arch)
                    if dep is not None and dep.id not in seen:
                        seen.add(dep.id)
                        nxt.append(dep.id)
            level = nxt
    return sorted(pairs)


def _needs_resolver(index: PackageIndex, targets: list[str], recommends: bool) -> bool:
    """Whether marking leaves something broken, so that apt runs its problem resolver
    (found with our resolver; apt, the oracle, still judges the outcome)."""
    from distro.resolver import ResolutionError, ResolveOptions, Resolver

    resolver = Resolver(index, ResolveOptions(install_recommends=recommends))
    try:
        resolver.run(targets)
    except ResolutionError:
        pass
    return resolver.used_problem_resolver


def make_cases(index: PackageIndex, seed: int, count: int) -> list[OracleCase]:
    """``count`` requests, the kinds in turn (combo, conflict, pin, alt, resolver)."""
    rng = random.Random(seed)
    pool = target_pool(index)
    conflicts = conflict_pool(index)
    pins = pin_pool(index, pool + conflicts)
    alternatives = alternative_pool(index, pool)
    kinds = ("combo", "conflict", "pin", "alt", "resolver")
    out: list[OracleCase] = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "resolver":
            for _attempt in range(300):  # conflict-style requests until one needs it
                targets = rng.sample(pool, rng.randint(1, 5))
                for breaker in rng.sample(conflicts, rng.randint(1, 2)):
                    targets.insert(rng.randint(0, len(targets)), breaker)
                recommends = rng.random() < 0.7
                if _needs_resolver(index, targets, recommends):
                    break
            out.append((f"resolver{i}{'+rec' if recommends else ''}", tuple(targets),
                        recommends))
            continue
        k = rng.randint(2, 6)
        if kind == "combo":
            targets = rng.sample(pool, k)
        elif kind == "conflict":
            c = rng.randint(1, min(3, k))
            targets = rng.sample(conflicts, c) + rng.sample(pool, k - c)
            rng.shuffle(targets)
        elif kind == "alt":
            if rng.random() < 0.5:
                name, breaker = rng.choice(alternatives)
                targets = [n for n in rng.sample(pool, k - 2) if n not in (name, breaker)]
                targets.insert(rng.randint(0, len(targets)), name)
            else:
                breaker = rng.choice(conflicts)
                targets = [n for n in rng.sample(pool, k - 1) if n != breaker]
            targets.append(breaker)  # last: its conflicts hit what the others chose
        else:
            c = rng.randint(1, min(2, k))
            chosen = rng.sample(pins, c)
            targets = [f"{name}={rng.choice(versions)}" for name, versions in chosen]
            targets += rng.sample(pool, k - c)
            rng.shuffle(targets)
        recommends = rng.random() < 0.5
        out.append((f"{kind}{i}{'+rec' if recommends else ''}", tuple(targets), recommends))
    return out
