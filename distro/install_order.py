"""Install order for a resolved closure.

Every Pre-Depends is satisfied by an earlier entry; every Depends is satisfied by an earlier
entry except inside a dependency cycle, whose members are kept together. Strongly connected
components (Tarjan) of the Depends/Pre-Depends graph are emitted in dependency order, ties broken
by name; inside a component, Pre-Depends edges are honoured first and then as many Depends edges
as the cycle allows, again deterministically by name.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from distro.packages_index import OrGroup, PackageIndex, PackageVersion, Relation
from distro.versions import version_satisfies

__all__ = ["InstallOrder", "dependency_edges", "install_order", "order_ids", "order_violations"]

_OPS = {1: "<=", 2: ">=", 3: "<<", 4: ">>", 5: "=", 6: "!="}

Key = tuple[str, str]


@dataclass(frozen=True)
class InstallOrder:
    """The closure in install order; ``cycles`` lists each multi-package component."""

    packages: tuple[PackageVersion, ...]
    cycles: tuple[tuple[str, ...], ...]


def _key(ver: PackageVersion, native: str) -> Key:
    return (ver.name, native if ver.arch == "all" else ver.arch)


def _satisfiers(rel: Relation, by_name: dict[str, list[PackageVersion]],
                providers: dict[str, list[tuple[PackageVersion, Relation]]]) -> list[PackageVersion]:
    out = [v for v in by_name.get(rel.name, [])
           if (rel.arch != "any" or v.multi_arch == "allowed")
           and version_satisfies(v.version, rel.op, rel.version)]
    if rel.arch == "any":
        return out
    for ver, prv in providers.get(rel.name, []):
        if rel.op is None or (prv.version is not None
                              and version_satisfies(prv.version, rel.op, rel.version)):
            out.append(ver)
    return out


def dependency_edges(packages: Sequence[PackageVersion], native_arch: str = "amd64"
                     ) -> dict[Key, list[tuple[Key, bool]]]:
    """For each package, the closure members satisfying its (Pre-)Depends: (key, pre)."""
    by_name: dict[str, list[PackageVersion]] = {}
    providers: dict[str, list[tuple[PackageVersion, Relation]]] = {}
    _add_all(packages, by_name, providers)
    edges: dict[Key, list[tuple[Key, bool]]] = {}
    for ver in packages:
        key = _key(ver, native_arch)
        out: list[tuple[Key, bool]] = []
        groups: list[tuple[OrGroup, bool]] = [(g, True) for g in ver.pre_depends]
        groups += [(g, False) for g in ver.depends]
        for group, pre in groups:
            for rel in group:
                sats = sorted(k for s in _satisfiers(rel, by_name, providers)
                              if (k := _key(s, native_arch)) != key)
                if sats:
                    out.append((sats[0], pre))
                    break
        edges[key] = out
    return edges


def _components(nodes: list[Key], edges: dict[Key, list[tuple[Key, bool]]]) -> list[list[Key]]:
    """Tarjan's strongly connected components, iteratively."""
    index: dict[Key, int] = {}
    low: dict[Key, int] = {}
    on_stack: set[Key] = set()
    stack: list[Key] = []
    comps: list[list[Key]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[Key, int]] = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            succ = edges.get(node, [])
            recurse = False
            while i < len(succ):
                nxt = succ[i][0]
                i += 1
                if nxt not in index:
                    work.append((node, i))
                    work.append((nxt, 0))
                    recurse = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if recurse:
                continue
            if low[node] == index[node]:
                comp: list[Key] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                comps.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return comps


def _order_cycle(members: list[Key], edges: dict[Key, list[tuple[Key, bool]]]) -> list[Key]:
    """Members of one cycle: Pre-Depends first, then as many Depends as possible, by name."""
    inside = set(members)
    placed: list[Key] = []
    done: set[Key] = set()
    while len(placed) < len(members):
        best: tuple[int, Key] | None = None
        for m in members:
            if m in done:
                continue
            pending = [(d, pre) for d, pre in edges.get(m, []) if d in inside and d not in done]
            if any(pre for _d, pre in pending):
                continue
            cand = (len(pending), m)
            best = cand if best is None or cand < best else best
        if best is None:  # a Pre-Depends cycle: fall back to name order
            best = (0, min(m for m in members if m not in done))
        placed.append(best[1])
        done.add(best[1])
    return placed


def _order(nodes: list[Key], edges: dict[Key, list[tuple[Key, bool]]]
           ) -> tuple[list[Key], list[tuple[Key, ...]]]:
    """The keys in install order, and each multi-package component (in its order)."""
    comps = _components(sorted(nodes), edges)
    comp_of = {k: i for i, comp in enumerate(comps) for k in comp}
    deps_left = [0] * len(comps)
    users: list[set[int]] = [set() for _ in comps]
    for k, out in edges.items():
        for d, _pre in out:
            a, b = comp_of[k], comp_of[d]
            if a != b and a not in users[b]:
                users[b].add(a)
                deps_left[a] += 1
    heap = [(comps[i][0], i) for i in range(len(comps)) if deps_left[i] == 0]
    heapq.heapify(heap)
    ordered: list[Key] = []
    cycles: list[tuple[Key, ...]] = []
    while heap:
        _name, i = heapq.heappop(heap)
        members = comps[i] if len(comps[i]) == 1 else _order_cycle(comps[i], edges)
        if len(members) > 1:
            cycles.append(tuple(members))
        ordered.extend(members)
        for user in sorted(users[i]):
            deps_left[user] -= 1
            if deps_left[user] == 0:
                heapq.heappush(heap, (comps[user][0], user))
    return ordered, cycles


def install_order(packages: Sequence[PackageVersion], native_arch: str = "amd64"
                  ) -> InstallOrder:
    """Order a closure so dependencies come first (see the module docstring)."""
    by_key = {_key(v, native_arch): v for v in packages}
    ordered, cycles = _order(list(by_key), dependency_edges(packages, native_arch))
    return InstallOrder(tuple(by_key[k] for k in ordered),
                        tuple(tuple(m[0] for m in c) for c in cycles))


def order_ids(index: PackageIndex, ids: Sequence[int]) -> tuple[list[int], list[tuple[str, ...]]]:
    """:func:`install_order` for apt version IDs, straight from the package cache (the same
    edges as :func:`dependency_edges` finds in the records): (ordered IDs, cycles)."""
    c = index.cache
    p_name, v_pkg, v_str, d_type, d_op, d_target, d_ver = (
        c.p_name, c.v_pkg, c.v_str, c.d_type, c.d_op, c.d_target, c.d_ver)
    keys: dict[int, Key] = {}
    by_name: dict[int, list[int]] = {}  # by name string ID
    providers: dict[int, list[tuple[int, int]]] = {}
    for v in ids:
        pid = v_pkg[v]
        keys[v] = (c.pkg_name(pid), c.pkg_arch(pid))
        by_name.setdefault(p_name[pid], []).append(v)
        if c.v_rcount[v]:
            for r in c.ver_provides(v):
                if not c.r_flags[r] & 0x20:
                    providers.setdefault(p_name[c.r_pkg[r]], []).append((v, c.r_pver[r]))
    any_names: dict[int, tuple[int, str | None]] = {}

    def base(target: int) -> tuple[int, str | None]:
        """(name string ID, qualifier) of a dependency target: ``foo:any`` -> (foo, any)."""
        sid = p_name[target]
        hit = any_names.get(sid)
        if hit is None:
            name = c.string(sid)
            if c.pkg_arch(target) == "any" and ":" in name:
                bare, _, qual = name.rpartition(":")
                hit = (index.name_id(bare), qual)
            else:
                hit = (sid, None)
            any_names[sid] = hit
        return hit

    def sat(ver_sid: int, op: int, want: int) -> bool:
        return want == 0 or (ver_sid != 0 and version_satisfies(
            c.string(ver_sid), _OPS[op], c.string(want)))

    edges: dict[Key, list[tuple[Key, bool]]] = {}
    for v in ids:
        key = keys[v]
        out: list[tuple[Key, bool]] = []
        start = c.v_dstart[v]
        deps = range(start, start + c.v_dcount[v])
        for dtype, pre in ((2, True), (1, False)):
            group_done = False
            for d in deps:
                if d_type[d] != dtype:
                    continue
                op = d_op[d]
                if not group_done:
                    sid, qual = base(d_target[d])
                    want = d_ver[d]
                    cmp = op & 0x0F
                    found = [w for w in by_name.get(sid, ())
                             if (qual != "any" or c.v_ma[w] & ~1 == 8)
                             and sat(v_str[w], cmp, want)]
                    if qual != "any":
                        found += [w for w, pver in providers.get(sid, ())
                                  if sat(pver, cmp, want)]
                    sats = sorted(k for w in found if (k := keys[w]) != key)
                    if sats:
                        out.append((sats[0], pre))
                        group_done = True
                if not op & 0x10:
                    group_done = False
        edges[key] = out
    by_key = {k: v for v, k in keys.items()}
    ordered, cycles = _order(list(by_key), edges)
    return [by_key[k] for k in ordered], [tuple(m[0] for m in cyc) for cyc in cycles]


def order_violations(order: InstallOrder, native_arch: str = "amd64") -> list[str]:
    """Rule breaches: a Pre-Depends not met by an earlier entry, or a Depends outside cycles."""
    problems: list[str] = []
    cycle_members = {name: i for i, c in enumerate(order.cycles) for name in c}
    all_names: dict[str, list[PackageVersion]] = {}
    all_providers: dict[str, list[tuple[PackageVersion, Relation]]] = {}
    _add_all(order.packages, all_names, all_providers)
    by_name: dict[str, list[PackageVersion]] = {}
    providers: dict[str, list[tuple[PackageVersion, Relation]]] = {}
    for ver in order.packages:
        for kind, groups in (("Pre-Depends", ver.pre_depends), ("Depends", ver.depends)):
            for group in groups:
                if any(_satisfiers(r, by_name, providers) for r in group):
                    continue
                full = [s for r in group for s in _satisfiers(r, all_names, all_providers)]
                if not full or all(s.name == ver.name for s in full):
                    continue  # satisfied by itself, or not by the closure (not ours to judge)
                same_cycle = ver.name in cycle_members and any(
                    cycle_members.get(s.name) == cycle_members[ver.name] for s in full)
                if kind == "Depends" and same_cycle:
                    continue
                text = " | ".join(str(r) for r in group)
                problems.append(f"{ver.name}: {kind} {text} not satisfied by an earlier entry")
        _add_all([ver], by_name, providers)
    return problems


def _add_all(packages: Sequence[PackageVersion], by_name: dict[str, list[PackageVersion]],
             providers: dict[str, list[tuple[PackageVersion, Relation]]]) -> None:
    for s in packages:
        by_name.setdefault(s.name, []).append(s)
        for prv in s.provides:
            providers.setdefault(prv.name, []).append((s, prv))
