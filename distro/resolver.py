"""The package closure ``apt-get install`` reaches on an empty system, decided as apt decides.

This is apt 2.6's own algorithm, ported statement by statement onto :mod:`distro.debcache`
(whose package IDs, version, dependency and provides orders are apt's):

* the driver of ``apt-get install`` (``DoCacheManipulationFromCommandLine``): each target
  (``name``, ``name:arch``, ``name=version``, a virtual package with one provider) gets its
  candidate set, is protected and marked without its dependencies, in command-line order;
  then every target is marked with auto-install in package-ID order;
* ``pkgDepCache::MarkInstall`` with its helpers (collecting dependencies, removing
  conflicting candidates, installing or-groups through ``getAllPossibleSolutions`` sorted
  by ``CompareProviders``, discarding candidates whose critical dependencies cannot be
  satisfied, propagating protection to single solutions of critical dependencies);
* the dependency-state cache apt reads those decisions from: a dependency's state is
  recomputed only when its target package (or a package whose candidate provides the
  target) changes state through ``pkgDepCache::Update``, so a candidate discarded without
  an update still counts as available until then, exactly as in apt;
* ``pkgProblemResolver::Resolve`` when something is left broken (scores, the score-sorted
  package list with libstdc++'s ``std::sort`` over apt's hash-table order, keep/remove/
  kill-list decisions, ``FixByInstall``);
* ``DoAutomaticRemove``: new installs no longer reachable from the requested packages
  (through Depends, Pre-Depends, Recommends and Suggests) are not installed after all,
  unless an installed package still depends on them while something is broken.

Configuration is apt's default without any ``apt.conf.d`` (``APT::Install-Recommends``
follows ``ResolveOptions.install_recommends``; no Suggests, no NeverAutoRemove patterns).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from distro.versions import compare_versions

if TYPE_CHECKING:
    from distro.packages_index import PackageIndex, PackageVersion

__all__ = [
    "Chain",
    "ResolutionError",
    "Resolution",
    "ResolveOptions",
    "Resolver",
    "resolve",
]

# apt's constants
DEPENDS, PREDEPENDS, SUGGESTS, RECOMMENDS, CONFLICTS, REPLACES, OBSOLETES, BREAKS, ENHANCES = \
    range(1, 10)
_DEP_NAMES = {1: "Depends", 2: "PreDepends", 3: "Suggests", 4: "Recommends", 5: "Conflicts",
              6: "Replaces", 7: "Obsoletes", 8: "Breaks", 9: "Enhances"}
_TEXT_NAMES = {1: "Depends", 2: "Pre-Depends", 3: "Suggests", 4: "Recommends",
               5: "Conflicts", 6: "Replaces", 7: "Obsoletes", 8: "Breaks", 9: "Enhances"}
_NEGATIVE = frozenset((CONFLICTS, BREAKS, OBSOLETES))
_CRITICAL = frozenset((DEPENDS, PREDEPENDS, CONFLICTS, BREAKS, OBSOLETES))
OR, MA_IMPLICIT = 0x10, 0x20
MA_SAME = 4
FLAG_ESSENTIAL, FLAG_IMPORTANT = 8, 16
KEEP, INSTALL, DELETE = 0, 1, 2
INST, CAND = 0, 1
_MAX_DEPTH = 3000
_DEP_SCORE = {DEPENDS: 1, PREDEPENDS: 1, SUGGESTS: 0, RECOMMENDS: 1, CONFLICTS: -1,
              REPLACES: 0, OBSOLETES: 0, BREAKS: -1, ENHANCES: 0}
_PRIO_SCORE = (0, 3, 2, 1, -1, -2)
_OPS = {1: "<=", 2: ">=", 3: "<<", 4: ">>", 5: "=", 6: "!="}


@dataclass(frozen=True)
class ResolveOptions:
    """How to resolve: Recommends, the Essential/required base set.

    Additional architectures are a property of the index (``load_index(foreign_arches=...)``).
    """

    install_recommends: bool = True
    include_base: bool = False


@dataclass(frozen=True)
class Chain:
    """Why a package is installed: the dependency links from a target down to it."""

    links: tuple[tuple[str, str, str], ...]  # (parent, dependency type, dependency text)

    def render(self, name: str) -> str:
        if not self.links:
            return f"{name} (requested)"
        parts: list[str] = []
        for parent, dep_type, text in self.links:
            parts.append(f"{parent} --{dep_type}: {text}-->")
        parts.append(name)
        return " ".join(parts)


@dataclass(frozen=True)
class Resolution:
    """The closure: apt version IDs in package-ID order, and why each package is there.

    ``packages`` (the records) and the chains in ``reasons`` are made on first use.
    """

    targets: tuple[str, ...]
    ids: tuple[int, ...]
    index: PackageIndex = field(repr=False, compare=False)
    reasons: Mapping[str, Chain] = field(hash=False, repr=False, compare=False)

    @functools.cached_property
    def packages(self) -> tuple[PackageVersion, ...]:
        return tuple(self.index.version(v) for v in self.ids)

    def names(self) -> set[str]:
        c = self.index.cache
        return {c.pkg_name(c.v_pkg[v]) for v in self.ids}

    def explain(self, name: str) -> str:
        chain = self.reasons.get(name)
        if chain is None:
            raise KeyError(name)
        return chain.render(name)


class ResolutionError(RuntimeError):
    """A target cannot be installed; ``chain`` names the unmet dependency path."""

    def __init__(self, message: str, chain: tuple[str, ...] = (),
                 alternatives: tuple[str, ...] = ()) -> None:
        self.chain = chain
        self.alternatives = alternatives
        super().__init__(message)


class Resolver:
    """One ``apt-get install`` over a :class:`~distro.packages_index.PackageIndex`."""

    def __init__(self, index: PackageIndex, options: ResolveOptions | None = None,
                 trace: list[str] | None = None) -> None:
        self.index = index
        c = self.c = index.cache
        self.options = options or ResolveOptions()
        self.recommends = self.options.install_recommends
        self.trace = trace
        self.native = c.native_arch
        self.arch_rank = {a: n for n, a in enumerate(c.arches)}
        self._arch_sid: dict[int, int] = {}
        # bound arrays
        self.p_name, self.p_flags = c.p_name, c.p_flags
        self.v_pkg, self.v_str, self.v_pin = c.v_pkg, c.v_str, c.v_pin
        self.d_type, self.d_op, self.d_target, self.d_ver = c.d_type, c.d_op, c.d_target, c.d_ver
        self.d_owner = c.d_owner
        self.r_ver, self.r_pver, self.r_flags = c.r_ver, c.r_pver, c.r_flags
        # pkgDepCache state (absent keys: keep, nothing to install, policy candidate)
        self.mode: dict[int, int] = {}
        self.inst: dict[int, int] = {}
        self.cand: dict[int, int] = {}
        self.protected: set[int] = set()
        self.auto: set[int] = set()
        self.clock = 1
        self.hist: dict[int, list[tuple[int, int, int]]] = {}
        self.refreshed: dict[int, int] = {}
        self.reasons: dict[int, tuple[tuple[int, int], ...]] = {}
        self._stack: list[tuple[int, int]] = []
        self._groups: dict[int, list[tuple[int, int]]] = {}
        self._sat: dict[tuple[int, int, int], bool] = {}
        self._memo: dict[int, tuple[int, bool]] = {}
        # pkgProblemResolver flags, and whether it had to run
        self.used_problem_resolver = False
        self.fix_protected: set[int] = set()
        self.fix_remove: set[int] = set()

    # ------------------------------------------------------------------ cache helpers

    def name(self, pid: int) -> str:
        return self.c.pkg_name(pid)

    def full_name(self, pid: int) -> str:
        return f"{self.c.pkg_name(pid)}:{self.c.pkg_arch(pid)}"

    def groups(self, vid: int) -> list[tuple[int, int]]:
        """The version's dependencies as or-groups (first, last) in apt's order."""
        g = self._groups.get(vid)
        if g is None:
            g = []
            start = self.c.v_dstart[vid]
            end = start + self.c.v_dcount[vid]
            d_op = self.d_op
            first = start
            for d in range(start, end):
                if not d_op[d] & OR:
                    g.append((first, d))
                    first = d + 1
            if first < end:
                g.append((first, end - 1))
            self._groups[vid] = g
        return g

    def policy_cand(self, pid: int) -> int:
        best, best_prio = -1, -1
        v_pin = self.v_pin
        for v in self.c.versions(pid):
            prio = v_pin[v]
            if prio == 0 or prio <= best_prio:
                continue
            best, best_prio = v, prio
        return best

    def get_cand(self, pid: int) -> int:
        v = self.cand.get(pid)
        if v is None:
            v = self.cand[pid] = self.policy_cand(pid)
        return v

    def satisfies(self, ver_sid: int, d: int) -> bool:
        """DepIterator::IsSatisfied / debVersioningSystem::CheckDep on string IDs."""
        want = self.d_ver[d]
        if want == 0:
            return True
        if ver_sid == 0:
            return False
        op = self.d_op[d] & 0x0F
        key = (ver_sid, op, want)
        hit = self._sat.get(key)
        if hit is not None:
            return hit
        if ver_sid == want:
            res = op in (1, 2, 5)
        else:
            cmp = compare_versions(self.c.string(ver_sid), self.c.string(want))
            res = (cmp <= 0 if op == 1 else cmp >= 0 if op == 2 else cmp < 0 if op == 3
                   else cmp > 0 if op == 4 else cmp == 0 if op == 5 else cmp != 0 if op == 6
                   else False)
        self._sat[key] = res
        return res

    def ign_pkg(self, d: int, target: int) -> bool:
        """DepIterator::IsIgnorable(PkgIterator)."""
        if self.d_type[d] not in _NEGATIVE:
            return False
        owner_v = self.d_owner[d]
        owner = self.v_pkg[owner_v]
        if self.p_name[owner] != self.p_name[target]:
            return False
        if owner == target:
            return True
        if self.c.v_ma[owner_v] & MA_SAME:
            return not self.d_op[d] & MA_IMPLICIT
        return False

    def ign_prv(self, d: int, r: int) -> bool:
        """DepIterator::IsIgnorable(PrvIterator)."""
        if self.d_type[d] not in _NEGATIVE:
            return False
        owner = self.v_pkg[self.d_owner[d]]
        prov_owner = self.v_pkg[self.r_ver[r]]
        if self.p_name[prov_owner] == self.p_name[owner]:
            return True
        return bool(self.d_op[d] & MA_IMPLICIT)

    # ------------------------------------------------------------------ state and history

    def _record(self, pid: int) -> None:
        h = self.hist.get(pid)
        entry = (self.clock, self.inst.get(pid, -1), self.get_cand(pid))
        if h is None:
            self.hist[pid] = [entry]
        else:
            h.append(entry)
        self.clock += 1

    def set_inst(self, pid: int, vid: int) -> None:
        self._record(pid)
        if vid < 0:
            self.inst.pop(pid, None)
        else:
            self.inst[pid] = vid

    def set_cand(self, pid: int, vid: int) -> None:
        self._record(pid)
        self.cand[pid] = vid

    def update(self, pid: int) -> None:
        """pkgDepCache::Update(Pkg): refresh the states of dependencies on the package and on
        everything its candidate provides."""
        t = self.clock
        self.clock += 1
        self.refreshed[pid] = t
        cand = self.get_cand(pid)
        if cand >= 0:
            r_pkg = self.c.r_pkg
            for r in self.c.ver_provides(cand):
                self.refreshed[r_pkg[r]] = t

    def state_at(self, pid: int, kind: int, t: int) -> int:
        h = self.hist.get(pid)
        if h is not None and h[-1][0] > t:
            for tc, old_inst, old_cand in h:
                if tc > t:
                    return old_inst if kind == INST else old_cand
        if kind == INST:
            return self.inst.get(pid, -1)
        v = self.cand.get(pid)
        return v if v is not None else self.get_cand(pid)

    def check_dep(self, d: int, kind: int, t: int | None = None) -> bool:
        """pkgDepCache::CheckDep against install or candidate versions, as of time ``t``
        (the dependency's last refresh) or now."""
        target = self.d_target[d]
        if t is None:
            t = self.clock + 1
        negative = self.d_type[d] in _NEGATIVE
        if not negative or not self.ign_pkg(d, target):
            v = self.state_at(target, kind, t)
            if v >= 0 and (self.d_ver[d] == 0 or self.satisfies(self.v_str[v], d)):
                return True
        if not self.c.p_rcount[target] or self.d_type[d] == OBSOLETES:
            return False
        r_ver, v_pkg, state_at = self.r_ver, self.v_pkg, self.state_at
        for r in self.c.provides(target):
            if negative and self.ign_prv(d, r):
                continue
            rv = r_ver[r]
            if state_at(v_pkg[rv], kind, t) != rv:
                continue
            if self.satisfies(self.r_pver[r], d):
                return True
        return False

    def cached(self, d: int, kind: int) -> bool:
        """The raw (not inverted) cached DepInstall / DepCVer bit of one dependency: its
        state as of its last refresh (apt's DepState), which cannot change until the next
        refresh, so it is memoised by refresh time."""
        t = self.refreshed.get(self.d_target[d], 0)
        key = d + d + kind
        hit = self._memo.get(key)
        if hit is not None and hit[0] == t:
            return hit[1]
        res = self.check_dep(d, kind, t)
        self._memo[key] = (t, res)
        return res

    def group_inst_ok(self, first: int, last: int) -> bool:
        """The or-group's cached install state as VersionState reads it."""
        cached = self.cached
        if self.d_type[first] in _NEGATIVE:
            return not cached(last, INST)
        for d in range(first, last + 1):  # noqa: SIM110 (a loop: no generator on the hot path)
            if cached(d, INST):
                return True
        return False

    def important(self, dtype: int) -> bool:
        if dtype in _CRITICAL:
            return True
        return dtype == RECOMMENDS and self.recommends

    def broken(self, pid: int, policy: bool) -> bool:
        """InstBroken (critical) or, with ``policy``, also InstPolicyBroken."""
        v = self.inst.get(pid, -1)
        if v < 0:
            return False
        d_type = self.d_type
        for first, last in self.groups(v):
            dtype = d_type[first]
            if dtype in _CRITICAL:
                if not self.group_inst_ok(first, last):
                    return True
            elif policy and self.important(dtype) and not self.group_inst_ok(first, last):
                return True
        return False

    def broken_count(self) -> int:
        return sum(1 for p in self.inst if self.broken(p, False))

    def policy_broken_count(self) -> int:
        return sum(1 for p in self.inst if self.broken(p, True))

    def is_install(self, pid: int) -> bool:
        return self.mode.get(pid, KEEP) == INSTALL

    # ------------------------------------------------------------------ mark helpers

    def mode_change_ok(self, pid: int, mode: int, depth: int, from_user: bool) -> bool:
        if depth > _MAX_DEPTH:
            return False
        if self.c.p_vcount[pid] == 0:
            return False
        if from_user:
            return True
        if self.mode.get(pid, KEEP) == mode:
            return True
        if pid in self.protected:
            return False
        return not (mode == DELETE and self.p_flags[pid] & (FLAG_ESSENTIAL | FLAG_IMPORTANT))

    def mark_keep(self, pid: int, depth: int = 0, from_user: bool = False) -> bool:
        if not self.mode_change_ok(pid, KEEP, depth, from_user):
            return False
        if self.mode.get(pid, KEEP) == KEEP:
            return True
        self.mode.pop(pid, None)
        self.set_inst(pid, -1)
        self.update(pid)
        return True

    def mark_delete(self, pid: int, depth: int = 0, from_user: bool = False) -> bool:
        if not self.mode_change_ok(pid, DELETE, depth, from_user):
            return False
        if self.mode.get(pid, KEEP) == DELETE or pid not in self.inst:
            return True
        if not from_user and pid not in self.auto:  # a manual install request
            return False
        self.mode.pop(pid, None)
        self.set_inst(pid, -1)
        self.update(pid)
        return True

    def state_change(self, pid: int, from_user: bool) -> bool:
        cand = self.get_cand(pid)
        if pid in self.protected and self.inst.get(pid, -1) == cand:
            return True
        self.mode[pid] = INSTALL
        self.set_inst(pid, cand)
        if from_user:
            self.auto.discard(pid)
        else:
            self.auto.add(pid)
        self.update(pid)
        if pid not in self.reasons:
            self.reasons[pid] = tuple(self._stack)
        return True

    def discard_candidate(self, pid: int) -> None:
        new = self.inst.get(pid, -1)
        if self.get_cand(pid) != new:
            self.set_cand(pid, new)

    def discard_install(self, pid: int) -> None:
        """MarkInstall_DiscardInstall."""
        if self.mode.get(pid, KEEP) == KEEP and pid not in self.inst \
                and self.get_cand(pid) < 0:
            return
        self.mode.pop(pid, None)
        if pid in self.inst:
            self.set_inst(pid, -1)
        self.update(pid)
        self.discard_candidate(pid)

    def deps_satisfiable(self, pid: int, depth: int) -> bool:
        """IsInstallOkDependenciesSatisfiableByCandidates (reads the cached states)."""
        cand = self.get_cand(pid)
        if cand < 0:
            return True
        d_type = self.d_type
        for first, last in self.groups(cand):
            dtype = d_type[first]
            if dtype not in _CRITICAL or dtype in _NEGATIVE:
                continue
            if any(self.cached(d, INST) or self.cached(d, CAND) for d in range(first, last + 1)):
                continue
            if self.trace is not None:
                self.trace.append(f"{'  ' * (depth + 1)}{self.dep_text(first, last)} can't be "
                                  "satisfied!")
            if pid not in self.protected:
                self.set_cand(pid, -1)
                if self.mode.get(pid, KEEP) != DELETE:
                    self.mode.pop(pid, None)
            return False
        return True

    def dep_text(self, first: int, last: int) -> str:
        parts = []
        for d in range(first, last + 1):
            text = self.full_name(self.d_target[d])
            if self.d_ver[d]:
                text += f" ({_OPS[self.d_op[d] & 0x0F]} {self.c.string(self.d_ver[d])})"
            parts.append(text)
        owner = self.v_pkg[self.d_owner[first]]
        return f"{self.full_name(owner)} {_DEP_NAMES[self.d_type[first]]} on {' | '.join(parts)}"

    # ------------------------------------------------------------------ solutions

    def from_dependency(self, d: int) -> list[int]:
        """VersionList::FromDependency(CANDIDATE)."""
        if not self.cached(d, CAND):
            return []
        out: list[int] = []
        target = self.d_target[d]
        if not self.ign_pkg(d, target):
            tv = self.get_cand(target)
            if tv >= 0 and self.satisfies(self.v_str[tv], d):
                out.append(tv)
        r_ver, v_pkg = self.r_ver, self.v_pkg
        for r in self.c.provides(target):
            if self.ign_prv(d, r):
                continue
            rv = r_ver[r]
            if self.get_cand(v_pkg[rv]) == rv and self.satisfies(self.r_pver[r], d):
                out.append(rv)
        return out

    def _provider_key(self, target_name: int) -> Callable[[int], tuple[int, ...]]:
        """CompareProviders as a sort key."""
        v_pkg, p_name, p_flags, protected = self.v_pkg, self.p_name, self.p_flags, self.protected
        v_prio, p_arch = self.c.v_prio, self.c.p_arch
        rank = self._arch_rank

        def key(v: int) -> tuple[int, ...]:
            p = v_pkg[v]
            flags = p_flags[p]
            return (0 if p in protected else 1, 0 if p_name[p] == target_name else 1,
                    0 if flags & FLAG_ESSENTIAL else 1, 0 if flags & FLAG_IMPORTANT else 1,
                    rank(p_arch[p]), v_prio[v], -p)
        return key

    def _arch_rank(self, sid: int) -> int:
        r = self._arch_sid.get(sid)
        if r is None:
            r = self._arch_sid[sid] = self.arch_rank.get(self.c.string(sid), len(self.arch_rank))
        return r

    def possible_solutions(self, first: int, last: int, sort: bool) -> list[int]:
        """getAllPossibleSolutions(CANDIDATE, sorted) (or CANDANDINST unsorted)."""
        out: list[int] = []
        for d in range(first, last + 1):
            found = self.from_dependency(d)
            if sort and len(found) > 1:
                found.sort(key=self._provider_key(self.p_name[self.d_target[d]]))
            out.extend(found)
        if not sort:
            out.sort()
        unique: list[int] = []
        for v in out:
            if not unique or unique[-1] != v:
                unique.append(v)
        if self.d_type[last] not in _NEGATIVE:
            mode = self.mode
            unique = [v for v in unique
                      if not (self.v_pkg[v] in self.protected
                              and mode.get(self.v_pkg[v], KEEP) in (DELETE, KEEP))]
        return unique

    # ------------------------------------------------------------------ MarkInstall

    def mark_install(self, pid: int, auto_inst: bool, depth: int, from_user: bool) -> bool:
        if not self.mode_change_ok(pid, INSTALL, depth, from_user):
            return False
        if self.get_cand(pid) < 0:
            return False
        protect = pid in self.protected
        if not protect and not self.broken(pid, True) and self.mode.get(pid, KEEP) == INSTALL:
            return True
        if auto_inst and not self.deps_satisfiable(pid, depth):
            return False
        if from_user:
            self.state_change(pid, True)
        fail_early = not protect and not from_user
        has_failed = False
        to_install: list[tuple[int, int]] = []
        if auto_inst:
            pv = self.get_cand(pid)
            to_remove: list[int] = []
            for first, last in self.groups(pv):
                dtype = self.d_type[first]
                if dtype in _NEGATIVE:
                    found = not self.cached(first, INST)
                else:
                    found = any(self.cached(d, INST) for d in range(first, last + 1))
                if found and not protect:
                    continue
                if not self.important(dtype):
                    continue
                if dtype in _NEGATIVE:
                    if dtype != OBSOLETES:
                        to_remove.append(first)
                else:
                    to_install.append((first, last))
            if not self.remove_conflicts(to_remove, depth, protect, from_user):
                if fail_early:
                    return False
                has_failed = True
        if not from_user:
            self.state_change(pid, False)
        if not auto_inst:
            return not has_failed
        already = pid in self.protected
        self.protected.add(pid)
        try:
            ok = self.install_deps(pid, depth, to_install, already, from_user)
        finally:
            if not already:
                self.protected.discard(pid)
        if not ok:
            if fail_early:
                self.discard_install(pid)
                return False
            has_failed = True
        return not has_failed

    def remove_conflicts(self, to_remove: list[int], depth: int, propagate: bool,
                         from_user: bool) -> bool:
        failed = False
        for d in to_remove:
            for ver in self.possible_solutions(d, d, True):
                pkg = self.v_pkg[ver]
                if self.get_cand(pkg) != ver:
                    continue
                if self.mode.get(pkg, KEEP) == INSTALL and not self.mark_keep(pkg, depth):
                    failed = True
                    if not propagate and not from_user:
                        break
                elif propagate:
                    self.discard_candidate(pkg)
                    self.protected.add(pkg)
            if failed and not propagate and not from_user:
                break
        return not failed

    def install_deps(self, pid: int, depth: int, to_install: list[tuple[int, int]],
                     propagate: bool, from_user: bool) -> bool:
        failed = False
        for first, last in to_install:
            found = any(self.cached(d, INST) for d in range(first, last + 1))
            if found and not propagate:
                continue
            critical = self.d_type[first] in _CRITICAL
            if found:
                if not critical:
                    continue
                sols = self.possible_solutions(first, last, False)
                if len(sols) != 1:
                    continue
                spkg = self.v_pkg[sols[0]]
                if spkg in self.protected:
                    continue
                self.protected.add(spkg)
                self._stack.append((pid, first))
                try:
                    if not self.mark_install(spkg, True, depth + 1, False):
                        failed = True
                finally:
                    self._stack.pop()
                continue
            sols = self.possible_solutions(first, last, True)
            self._stack.append((pid, first))
            try:
                for ver in sols:
                    spkg = self.v_pkg[ver]
                    if self.get_cand(spkg) != ver:
                        continue
                    if self.trace is not None:
                        self.trace.append(f"{'  ' * (depth + 1)}Installing {self.full_name(spkg)}"
                                          f" as {_DEP_NAMES[self.d_type[last]]} of "
                                          f"{self.full_name(pid)}")
                    if propagate and critical and len(sols) == 1:
                        if not self.mark_install(spkg, False, depth + 1, False):
                            continue
                        self.protected.add(spkg)
                    if not self.mark_install(spkg, True, depth + 1, False):
                        continue
                    found = True
                    break
            finally:
                self._stack.pop()
            if not found and critical:
                failed = True
                if not propagate and not from_user:
                    break
        return not failed

    def set_candidate_version(self, pid: int, vid: int) -> None:
        if self.get_cand(pid) == vid:
            return
        if self.get_cand(pid) == self.inst.get(pid, -1) and self.is_install(pid):
            self.set_inst(pid, vid)
        self.set_cand(pid, vid)
        self.update(pid)

    # ------------------------------------------------------------------ the driver

    def select_target(self, spec: str) -> tuple[int, int]:
        """A command-line target: (package, version) as apt-get's cacheset helper picks."""
        c = self.c
        name, eq, wanted = spec.partition("=")
        name, colon, arch = name.partition(":")
        arch = arch if colon else self.native
        if arch == "all":
            arch = self.native
        pkgs = c.find(name, "any" if arch == "any" else arch)
        pid = pkgs[0] if pkgs else -1
        if pid < 0 and not c.find(name):
            raise ResolutionError(f"unable to locate package {name}", (name,))
        if pid >= 0 and eq:
            for v in c.versions(pid):
                verstr = c.string(self.v_str[v])
                if verstr == wanted or (wanted.endswith("*")
                                        and verstr.startswith(wanted[:-1])):
                    return pid, v
        elif pid >= 0:
            cand = self.get_cand(pid)
            if cand >= 0:
                return pid, cand
        if pid < 0:
            pid = c.find(name)[0]
        # a virtual package: one providing package (ignoring M-A duplicates) is taken
        chosen: list[int] = []
        for r in c.provides(pid):
            v = self.r_ver[r]
            if eq:
                if self.r_pver[r] and c.string(self.r_pver[r]) == wanted:
                    chosen.append(v)
            elif self.get_cand(self.v_pkg[v]) == v:
                chosen.append(v)
        names = sorted({c.pkg_name(self.v_pkg[v]) for v in chosen})
        if len(names) == 1:
            v = chosen[0]
            return self.v_pkg[v], v
        if names:
            raise ResolutionError(
                f"{name} is a virtual package provided by several packages "
                f"({', '.join(names)}); select one explicitly", (name,), tuple(names))
        if eq:
            raise ResolutionError(f"version {wanted!r} for {name!r} was not found", (name,))
        raise ResolutionError(f"package {name} has no installation candidate", (name,))

    def run(self, targets: Sequence[str]) -> Resolution:
        specs = list(targets)
        if self.options.include_base:
            specs = [*self.index.essential_and_required(), *specs]
        chosen: list[tuple[int, int]] = []
        seen: set[int] = set()
        for spec in specs:
            pid, vid = self.select_target(spec)
            if vid not in seen:
                seen.add(vid)
                chosen.append((pid, vid))
        later: list[int] = []  # apt's doAutoInstallLater: a vector, command-line order
        for pid, vid in chosen:
            self.set_candidate_version(pid, vid)
            self.fix_protected.add(pid)
            self.fix_remove.discard(pid)
            self.protected.add(pid)
            self.mark_install(pid, False, 0, True)
            later.append(pid)
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 20000))
        try:
            for pid in later:
                self.mark_install(pid, True, 0, True)
            if self.broken_count():
                self.used_problem_resolver = True
                ProblemResolver(self).resolve()
            self.auto_remove()
        finally:
            sys.setrecursionlimit(limit)
        self._check_result([p for p, _v in chosen])
        installed = sorted(p for p, m in self.mode.items() if m == INSTALL)
        return Resolution(targets=tuple(self.name(p) for p, _v in chosen),
                          ids=tuple(self.inst[p] for p in installed),
                          index=self.index, reasons=_Chains(self, installed))

    def _chain(self, pid: int) -> Chain:
        links = []
        for parent, dep in self.reasons.get(pid, ()):
            last = dep
            while self.d_op[last] & OR:
                last += 1
            links.append((self.name(parent), _TEXT_NAMES[self.d_type[dep]],
                          self.relation_text(dep, last)))
        return Chain(tuple(links))

    def relation_text(self, first: int, last: int) -> str:
        parts = []
        for d in range(first, last + 1):
            target = self.d_target[d]
            name = self.name(target)
            arch = self.c.pkg_arch(target)
            if arch == "any" and ":" in name:
                text = name
            elif arch != self.native and arch != "any":
                text = f"{name}:{arch}"
            else:
                text = name
            if self.d_ver[d]:
                text += f" ({_OPS[self.d_op[d] & 0x0F]} {self.c.string(self.d_ver[d])})"
            parts.append(text)
        return " | ".join(parts)

    def _check_result(self, targets: list[int]) -> None:
        for pid in targets:
            if not self.is_install(pid):
                raise ResolutionError(f"{self.name(pid)} cannot be installed", (self.name(pid),))
        for pid in sorted(self.inst):
            v = self.inst[pid]
            for first, last in self.groups(v):
                dtype = self.d_type[first]
                if dtype not in _CRITICAL or self.group_inst_ok(first, last):
                    continue
                chain = self._chain(pid)
                path = tuple([*(link[0] for link in chain.links), self.name(pid)])
                text = self.relation_text(first, last)
                if dtype in _NEGATIVE:
                    msg = f"{self.name(pid)} {_TEXT_NAMES[dtype]} {text}, which is also to be installed"
                else:
                    msg = f"{self.name(pid)} {_TEXT_NAMES[dtype]} {text}, which cannot be installed"
                raise ResolutionError(f"unmet dependency: {' -> '.join(path)}: {msg}",
                                      (*path, text))

    # ------------------------------------------------------------------ autoremove

    def auto_remove(self) -> None:
        """DoAutomaticRemove without removals: garbage new installs are not installed."""
        marked = self.mark_required()
        too_much = [p for p, m in sorted(self.mode.items()) if m == INSTALL and p not in marked]
        if not too_much:
            return
        for pid in too_much:
            self.mark_delete(pid)
        pending = [p for p in too_much if not self.is_install(p)]
        if not pending or not (self.broken_count() or self.policy_broken_count()):
            return
        # a new install whose candidate has an important dependency on a package (or on
        # something its candidate provides), satisfied or not, brings that package back;
        # apt restarts its scan after each one, so the first needed in ID order comes next
        needed: set[int] = set()
        for other, m in self.mode.items():
            if m == INSTALL:
                self._add_needed(other, needed)
        changed = True
        while changed:
            changed = False
            for pid in pending:
                too = {pid}
                cand = self.get_cand(pid)
                if cand >= 0:
                    too.update(self.c.r_pkg[r] for r in self.c.ver_provides(cand))
                if too & needed:
                    self.mark_install(pid, False, 0, False)
                    pending.remove(pid)
                    if self.is_install(pid):
                        self._add_needed(pid, needed)
                    changed = True
                    break

    def _add_needed(self, pid: int, needed: set[int]) -> None:
        ov = self.get_cand(pid)
        if ov < 0:
            return
        start = self.c.v_dstart[ov]
        d_type, d_target = self.d_type, self.d_target
        for d in range(start, start + self.c.v_dcount[ov]):
            dtype = d_type[d]
            if dtype in _NEGATIVE or not self.important(dtype):
                continue
            needed.add(d_target[d])

    def mark_required(self) -> set[int]:
        """pkgDepCache::MarkRequired: what the requested (manual) and essential packages
        reach through Depends, Pre-Depends, Recommends and Suggests among new installs."""
        marked: set[int] = set()
        explored: set[int] = set()
        d_type, d_target, v_pkg, c = self.d_type, self.d_target, self.v_pkg, self.c
        mode, inst, p_rcount = self.mode, self.inst, c.p_rcount

        def boring(p: int) -> bool:
            return self.mode.get(p, KEEP) != INSTALL

        def tv_of(p: int) -> int:
            return self.inst.get(p, -1) if self.mode.get(p, KEEP) == INSTALL else -1

        roots = [p for p in sorted(self.mode) if not boring(p)
                 and (p not in self.auto or self.p_flags[p] & (FLAG_ESSENTIAL | FLAG_IMPORTANT))]
        for root in roots:
            if root in marked:
                continue
            stack = [(root, tv_of(root))]
            while stack:
                p, v = stack.pop()
                if v < 0 or p in marked:
                    continue
                if boring(p):
                    explored.add(p)
                    continue
                marked.add(p)
                start = c.v_dstart[v]
                for d in range(start, start + c.v_dcount[v]):
                    if d_type[d] > SUGGESTS and d_type[d] != RECOMMENDS:
                        continue  # Depends 1, Pre-Depends 2, Suggests 3, Recommends 4
                    t = d_target[d]
                    if t in explored:
                        continue
                    unsatisfied = False
                    by_source: dict[int, list[int]] = {}
                    if mode.get(t, KEEP) == INSTALL:
                        tv = inst.get(t, -1)
                        if tv >= 0:
                            if not self.satisfies(self.v_str[tv], d):
                                unsatisfied = True
                            else:
                                by_source[c.v_src[tv]] = [tv]
                    if not by_source and not unsatisfied:
                        marked.add(t)
                    for r in (c.provides(t) if p_rcount[t] else ()):
                        rv = self.r_ver[r]
                        pp = v_pkg[rv]
                        if boring(pp):
                            continue
                        pv = tv_of(pp)
                        if pv < 0 or pv != rv:
                            continue
                        if not self.satisfies(self.r_pver[r], d):
                            unsatisfied = True
                        else:
                            by_source.setdefault(c.v_src[pv], []).append(pv)
                    if not unsatisfied:
                        explored.add(t)
                    for vers in by_source.values():
                        if len(vers) == 1:
                            stack.append((v_pkg[vers[0]], vers[0]))
                            continue
                        best = max(vers, key=lambda x: _SourceVersion(c.string(c.v_srcver[x])))
                        top = c.string(c.v_srcver[best])
                        for pv in vers:
                            if c.string(c.v_srcver[pv]) == top:
                                stack.append((v_pkg[pv], pv))
        return marked


class _Chains(Mapping[str, Chain]):
    """Resolution.reasons: each package's chain, made when asked for."""

    def __init__(self, resolver: Resolver, installed: list[int]) -> None:
        self._r = resolver
        self._by_name = {resolver.name(p): p for p in installed}
        self._made: dict[str, Chain] = {}

    def __getitem__(self, name: str) -> Chain:
        chain = self._made.get(name)
        if chain is None:
            chain = self._made[name] = self._r._chain(self._by_name[name])
        return chain

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)


class _SourceVersion:
    """Orders source version strings with dpkg's comparison (for max())."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __lt__(self, other: _SourceVersion) -> bool:
        return compare_versions(self.text, other.text) < 0


class ProblemResolver:
    """pkgProblemResolver::ResolveInternal(BrokenFix=true) over a Resolver's state."""

    def __init__(self, r: Resolver) -> None:
        self.r = r
        self.pre_installed: set[int] = set()
        self.not_upgradable: set[int] = set()
        self.scores: dict[int, int] = {}

    def score(self, pid: int) -> int:
        return self.scores.get(pid, 0)

    def hash_positions(self) -> memoryview:
        return self.r.c.hashpos

    def resolve(self) -> bool:
        r = self.r
        again = True
        while again:  # BrokenFix: packages left with an install version but not marked
            again = False
            stray = [q for q in r.inst if not r.is_install(q) and r.broken(q, False)]
            for p in sorted(stray, key=self.hash_positions().__getitem__):
                r.mark_install(p, False, 0, False)
                if r.is_install(p):
                    again = True
        self.pre_installed = {p for p, m in r.mode.items() if m == INSTALL}
        self.make_scores()
        order = self.sorted_packages()
        change = True
        counter = 0
        while counter < 20 and change:
            change = False
            for pid in order:
                if pid not in r.inst or not r.broken(pid, False):
                    continue
                if self.fix_one(pid, counter):
                    change = True
            counter += 1
        if r.broken_count():
            return False
        for pid, m in r.mode.items():
            if m == INSTALL and pid not in self.pre_installed:
                r.auto.add(pid)
        return True

    def make_scores(self) -> None:
        r, c = self.r, self.r.c
        scores: dict[int, int] = {}
        installed = sorted(r.inst)
        for pid in installed:
            iv = r.inst[pid]
            score = scores.get(pid, 0)
            if r.p_flags[pid] & (FLAG_ESSENTIAL | FLAG_IMPORTANT):
                score += 100
            prio = c.v_prio[iv]
            score += _PRIO_SCORE[prio] if prio <= 5 else _PRIO_SCORE[5]
            scores[pid] = score
            start = c.v_dstart[iv]
            for d in range(start, start + c.v_dcount[iv]):
                weight = _DEP_SCORE[r.d_type[d]]
                if weight == 0:
                    continue
                t = r.d_target[d]
                if not r.ign_pkg(d, t):
                    if r.d_ver[d]:
                        tv = r.inst.get(t, -1)
                        if tv < 0 or not r.satisfies(r.v_str[tv], d):
                            continue
                    scores[t] = scores.get(t, 0) + weight
                providers = set()
                for rr in c.provides(t):
                    if r.ign_prv(d, rr):
                        continue
                    rv = r.r_ver[rr]
                    pp = r.v_pkg[rv]
                    if r.inst.get(pp, -1) != rv or not r.satisfies(r.r_pver[rr], d):
                        continue
                    providers.add(pp)
                for pp in providers:
                    scores[pp] = scores.get(pp, 0) + weight
        old = dict(scores)
        for pid in installed:
            iv = r.inst[pid]
            if old.get(pid, 0) <= 0:
                continue
            start = c.v_dstart[iv]
            for d in range(start, start + c.v_dcount[iv]):
                if r.d_type[d] not in (DEPENDS, PREDEPENDS, RECOMMENDS):
                    continue
                t = r.d_target[d]
                if t in r.inst:
                    scores[t] = scores.get(t, 0) + old[pid]
        changed = [p for p in scores if scores[p] != old.get(p, 0)]
        if changed:
            # one pass in PkgBegin order: a provider's own transfer includes what it got
            pos = self.hash_positions()
            pending = sorted(changed, key=pos.__getitem__)
            queued = set(pending)
            while pending:
                pid = pending.pop(0)
                transfer = abs(scores.get(pid, 0) - old.get(pid, 0))
                if transfer == 0:
                    continue
                providers = set()
                for rr in c.provides(pid):
                    if r.r_flags[rr] & MA_IMPLICIT:
                        continue
                    rv = r.r_ver[rr]
                    pp = r.v_pkg[rv]
                    if r.inst.get(pp, -1) == rv:
                        providers.add(pp)
                for pp in providers:
                    scores[pp] = scores.get(pp, 0) + transfer
                    if pp not in queued and pos[pp] > pos[pid]:
                        queued.add(pp)
                        pending.append(pp)
                        pending.sort(key=pos.__getitem__)
        for pid in r.fix_protected:
            scores[pid] = scores.get(pid, 0) + 10000
        for pid in c.flagged:  # Essential or Important
            scores[pid] = scores.get(pid, 0) + 5000
        self.scores = scores

    def sorted_packages(self) -> list[int]:
        """std::sort(PList, ScoreSort) over apt's PkgBegin order, as libstdc++ sorts."""
        order = self.r.c.hashorder
        scores = self.scores
        keys = [-scores.get(order[i], 0) for i in range(len(order))]
        idx = list(range(len(order)))
        std_sort(idx, keys)
        return [order[i] for i in idx]

    # ------------------------------------------------------------------ DoUpgrade

    def do_upgrade(self, pid: int) -> bool:
        r = self.r
        if pid in self.not_upgradable or r.get_cand(pid) < 0:
            return False
        if pid in r.fix_protected:
            return False
        self.not_upgradable.add(pid)
        was_kept = r.mode.get(pid, KEEP) == KEEP
        if not r.mark_install(pid, False, 0, False):
            return False
        iv = r.inst.get(pid, -1)
        if iv < 0:
            return False
        fail = False
        for first, last in r.groups(iv):
            if r.d_type[last] not in _CRITICAL:
                continue
            start = first
            while True:
                if r.group_inst_ok(first, last):
                    break
                target = self.smart_target(start)
                if target in r.protected:
                    fail = True
                elif r.cached(start, CAND) != (r.d_type[start] in _NEGATIVE):
                    if not self.do_upgrade(target):
                        fail = True
                    else:
                        fail = False
                        break
                else:
                    if r.d_type[start] in _NEGATIVE:
                        break
                    fail = True
                if start == last:
                    break
                start += 1
            if fail:
                break
        if fail:
            if was_kept:
                r.mark_keep(pid)
            else:
                r.mark_delete(pid)
            return False
        return True

    def smart_target(self, d: int) -> int:
        """DepIterator::SmartTargetPkg."""
        r, c = self.r, self.r.c
        target = r.d_target[d]
        prv = list(c.provides(target))
        if not prv or c.p_vcount[target]:
            return target
        owner = r.v_pkg[r.d_owner[d]]
        rest = [r.v_pkg[r.r_ver[x]] for x in prv if r.v_pkg[r.r_ver[x]] != owner]
        return rest[0] if rest else target

    def all_targets(self, d: int) -> list[int]:
        """DepIterator::AllTargets: every version (not only candidates) satisfying ``d``."""
        r, c = self.r, self.r.c
        target = r.d_target[d]
        out = []
        for v in c.versions(target):
            if r.ign_pkg(d, r.v_pkg[v]) or not r.satisfies(r.v_str[v], d):
                continue
            out.append(v)
        for rr in c.provides(target):
            if r.ign_prv(d, rr) or not r.satisfies(r.r_pver[rr], d):
                continue
            out.append(r.r_ver[rr])
        return out

    # ------------------------------------------------------------------ one broken package

    def fix_one(self, pid: int, counter: int) -> bool:
        """The body of ResolveInternal's loop for one broken installed package ``pid``."""
        r = self.r
        c = r.c
        d_type, d_op = r.d_type, r.d_op
        change = False
        kill: list[tuple[int, int]] = []
        or_remove, or_keep = 0, 1
        iv = r.inst[pid]
        dpos = c.v_dstart[iv]
        dend = dpos + c.v_dcount[iv]
        start: int | None = None
        end: int | None = None
        gstart = -1
        in_or = False
        or_op = or_remove
        old_size = 0
        while dpos < dend or in_or:
            if start == end:
                if in_or and old_size == len(kill):
                    if or_op == or_remove:
                        if pid not in r.protected:
                            r.mark_delete(pid)
                            change = True
                    elif or_op == or_keep:
                        r.mark_keep(pid)
                        change = True
                in_or = False
                or_op = or_remove
                if dpos >= dend:
                    break
                start = end = gstart = dpos
                last_or = True
                while dpos < dend and last_or:
                    last_or = bool(d_op[dpos] & OR)
                    dpos += 1
                    if last_or:
                        end = dpos
                if d_type[end] not in _CRITICAL:
                    continue
                in_or = start != end
                old_size = len(kill)
            else:
                assert start is not None
                start += 1
                if d_type[start] not in _CRITICAL:
                    continue
            assert start is not None and end is not None
            if r.group_inst_ok(gstart, end):
                in_or = False
                continue
            negative = d_type[start] in _NEGATIVE
            vlist = self.all_targets(start)
            if not vlist and pid not in r.protected and not negative:
                if in_or:
                    continue
                change = True
                r.mark_keep(pid)
                break
            done = False
            for ver in vlist:
                pkg = r.v_pkg[ver]
                if r.inst.get(pkg, -1) != ver and negative:
                    continue
                if self.score(pid) <= self.score(pkg) or d_type[end] not in _NEGATIVE:
                    if pid in r.protected:
                        if self.do_upgrade(pkg):
                            if self.score(pkg) > self.score(pid):
                                self.scores[pkg] = self.score(pid)
                            break
                        continue
                    installed = r.is_install(pid)
                    r.mark_keep(pid)
                    if not r.broken(pid, False):
                        if or_op == or_remove:
                            or_op = or_keep
                        if in_or and installed:
                            r.mark_install(pid, False, 0, False)
                    elif not self.do_upgrade(pid):
                        if not in_or:
                            r.mark_delete(pid)
                            if counter > 1 and self.score(pkg) > self.score(pid):
                                self.scores[pid] = self.score(pkg)
                        else:
                            t = r.d_target[start]
                            if (r.mode.get(t, KEEP) != DELETE and t not in r.fix_remove
                                    and r.get_cand(t) >= 0):
                                old_broken = r.broken_count()
                                r.mark_install(t, True, 1, False)
                                if r.broken(t, False) or r.broken_count() > old_broken:
                                    r.mark_delete(t, 1)
                    change = True
                    done = True
                    break
                if d_type[start] == BREAKS and not r.cached(end, CAND):
                    r.mark_install(pkg, False, 0, False)
                    continue
                if pkg in r.protected and r.mode.get(pkg, KEEP) != DELETE:
                    continue
                kill.append((pkg, end))
                if not negative:
                    break
            if not vlist and not negative and pid not in r.protected:
                installed = r.is_install(pid)
                r.mark_keep(pid)
                if not r.broken(pid, False):
                    if or_op == or_remove:
                        or_op = or_keep
                    if in_or and installed:
                        r.mark_install(pid, False, 0, False)
                elif not in_or:
                    r.mark_delete(pid)
                change = True
                done = True
            if in_or:
                continue
            if done:
                break
        if pid in r.inst:
            for pkg, dep in kill:
                # (Cache[dep] & DepGNow) is set only for (inverted) negative dependencies, as
                # nothing is installed now; those are fixed by keeping the other package
                found = d_type[dep] in _NEGATIVE and r.mark_keep(pkg)
                if (not found or counter > 1) and self.score(pid) > self.score(pkg):
                    self.scores[pkg] = self.score(pid)
                    change = True
                if found:
                    change = True
        return change


def std_sort(a: list[int], k: list[int]) -> None:
    """libstdc++'s std::sort (introsort, then insertion sort) of ``a`` by ``k[x] < k[y]``,
    in place, element moves as libstdc++ makes them (ties end up where it puts them)."""
    n = len(a)
    if n < 2:
        return
    _introsort_loop(a, k, 0, n, 2 * (n.bit_length() - 1))
    if n > 16:
        _insertion_sort(a, k, 0, 16)
        for i in range(16, n):
            _unguarded_linear_insert(a, k, i)
    else:
        _insertion_sort(a, k, 0, n)


def _introsort_loop(a: list[int], k: list[int], first: int, last: int, depth: int) -> None:
    while last - first > 16:
        if depth == 0:
            _heap_sort(a, k, first, last)
            return
        depth -= 1
        mid = first + (last - first) // 2
        # __move_median_to_first(first, first + 1, mid, last - 1)
        x, y, z = first + 1, mid, last - 1
        kx, ky, kz = k[a[x]], k[a[y]], k[a[z]]
        if kx < ky:
            m = y if ky < kz else (z if kx < kz else x)
        elif kx < kz:
            m = x
        elif ky < kz:
            m = z
        else:
            m = y
        a[first], a[m] = a[m], a[first]
        # __unguarded_partition(first + 1, last, first)
        pv = k[a[first]]
        lo, hi = first + 1, last
        while True:
            while k[a[lo]] < pv:
                lo += 1
            hi -= 1
            while pv < k[a[hi]]:
                hi -= 1
            if not lo < hi:
                break
            a[lo], a[hi] = a[hi], a[lo]
            lo += 1
        _introsort_loop(a, k, lo, last, depth)
        last = lo


def _insertion_sort(a: list[int], k: list[int], first: int, last: int) -> None:
    for i in range(first + 1, last):
        if k[a[i]] < k[a[first]]:
            val = a[i]
            a[first + 1:i + 1] = a[first:i]
            a[first] = val
        else:
            _unguarded_linear_insert(a, k, i)


def _unguarded_linear_insert(a: list[int], k: list[int], last: int) -> None:
    val = a[last]
    kv = k[val]
    nxt = last - 1
    while kv < k[a[nxt]]:
        a[last] = a[nxt]
        last = nxt
        nxt -= 1
    a[last] = val


def _heap_sort(a: list[int], k: list[int], first: int, last: int) -> None:
    """std::__partial_sort(first, last, last): make_heap, then sort_heap."""
    n = last - first
    if n >= 2:
        parent = (n - 2) // 2
        while True:
            _adjust_heap(a, k, first, parent, n, a[first + parent])
            if parent == 0:
                break
            parent -= 1
    while last - first > 1:
        last -= 1
        val = a[last]
        a[last] = a[first]
        _adjust_heap(a, k, first, 0, last - first, val)


def _adjust_heap(a: list[int], k: list[int], first: int, hole: int, length: int,
                 value: int) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if k[a[first + child]] < k[a[first + child - 1]]:
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length & 1 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    kv = k[value]
    while hole > top and k[a[first + parent]] < kv:
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


def resolve(index: PackageIndex, targets: Sequence[str],
            options: ResolveOptions | None = None) -> Resolution:
    """The closure ``apt-get install TARGETS`` would install on an empty system."""
    return Resolver(index, options).run(targets)
