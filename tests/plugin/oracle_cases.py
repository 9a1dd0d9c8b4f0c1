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
  the request unsatisfiable or push the resolver to other choices.

The pools come from the index itself (names matching the patterns, sorted), so a request
list is a pure function of the lists and the seed.
"""

from __future__ import annotations

import random
import re

from distro.packages_index import PackageIndex

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


def make_cases(index: PackageIndex, seed: int, count: int) -> list[OracleCase]:
    """``count`` requests, the kinds in turn (combo, conflict, pin)."""
    rng = random.Random(seed)
    pool = target_pool(index)
    conflicts = conflict_pool(index)
    pins = pin_pool(index, pool + conflicts)
    kinds = ("combo", "conflict", "pin")
    out: list[OracleCase] = []
    for i in range(count):
        kind = kinds[i % 3]
        k = rng.randint(2, 6)
        if kind == "combo":
            targets = rng.sample(pool, k)
        elif kind == "conflict":
            c = rng.randint(1, min(3, k))
            targets = rng.sample(conflicts, c) + rng.sample(pool, k - c)
            rng.shuffle(targets)
        else:
            c = rng.randint(1, min(2, k))
            chosen = rng.sample(pins, c)
            targets = [f"{name}={rng.choice(versions)}" for name, versions in chosen]
            targets += rng.sample(pool, k - c)
            rng.shuffle(targets)
        recommends = rng.random() < 0.5
        out.append((f"{kind}{i}{'+rec' if recommends else ''}", tuple(targets), recommends))
    return out
