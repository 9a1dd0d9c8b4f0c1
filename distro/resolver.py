"""The package closure ``apt-get install`` reaches on an empty system, decided as apt decides.

This follows apt 2.6's ``pkgDepCache::MarkInstall`` and ``apt-get install``'s driver:

* every target is first marked (and protected) without its dependencies, then each target's
  dependencies are installed in package-ID order (apt's ``doAutoInstallLater`` set);
* a dependency group already satisfied by a marked package is skipped; otherwise the candidates
  of every alternative (real package and providers, sorted by apt's ``CompareProviders``) are
  tried in order and the first whose own installation succeeds wins;
* a package whose critical dependency cannot be satisfied even by candidates is not installable
  (its candidate is discarded); a failed automatic install unmarks the package again;
* Conflicts/Breaks of a package being installed un-mark unprotected conflicting packages;
* protected packages (targets, and single solutions of their critical dependencies) re-examine
  all their dependencies; Recommends follow ``install_recommends``; Suggests are ignored.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from distro.packages_index import OrGroup, PackageIndex, PackageVersion, Relation
from distro.versions import version_satisfies

__all__ = [
    "Chain",
    "ResolutionError",
    "Resolution",
    "ResolveOptions",
    "Resolver",
    "resolve",
]

PkgId = tuple[str, str]
_CRITICAL = ("PreDepends", "Depends", "Conflicts", "Breaks")
_NEGATIVE = ("Conflicts", "Breaks")
_MAX_DEPTH = 3000


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
    """The marked closure: package versions in apt's marking order, and why each is there."""

    targets: tuple[str, ...]
    packages: tuple[PackageVersion, ...]
    reasons: dict[str, Chain] = field(hash=False)

    def names(self) -> set[str]:
        return {p.name for p in self.packages}

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


def _dep_list(ver: PackageVersion, recommends: bool) -> list[tuple[str, OrGroup]]:
    """The version's dependencies in apt's cache order (Pre-Depends, Depends, Conflicts, ...)."""
    deps: list[tuple[str, OrGroup]] = [("PreDepends", g) for g in ver.pre_depends]
    deps += [("Depends", g) for g in ver.depends]
    deps += [("Conflicts", (r,)) for r in ver.conflicts]
    deps += [("Breaks", (r,)) for r in ver.breaks]
    if recommends:
        deps += [("Recommends", g) for g in ver.recommends]
    return deps


class Resolver:
    """One apt-get-install-like marking session over a :class:`PackageIndex`."""

    def __init__(self, index: PackageIndex, options: ResolveOptions | None = None) -> None:
        self.index = index
        self.options = options or ResolveOptions()
        self.native = index.native_arch
        self.marked: dict[PkgId, PackageVersion] = {}
        self.discarded: set[PkgId] = set()
        self.protected: set[PkgId] = set()
        self.reasons: dict[PkgId, Chain] = {}
        self.failures: list[tuple[PkgId, str, OrGroup]] = []
        self._stack: list[tuple[PkgId, str, OrGroup]] = []

    # ------------------------------------------------------------------ state helpers

    def pid(self, ver: PackageVersion) -> PkgId:
        return (ver.name, self.native if ver.arch == "all" else ver.arch)

    def cand(self, pid: PkgId) -> PackageVersion | None:
        if pid in self.discarded:
            return None
        return self.index.candidate(pid[0], pid[1])

    def _target(self, rel: Relation, owner_arch: str) -> PkgId:
        if rel.arch is None:
            return (rel.name, owner_arch)
        if rel.arch == "native":
            return (rel.name, self.native)
        return (rel.name, rel.arch)

    def _provide_ok(self, rel: Relation, ver: PackageVersion) -> bool:
        for prv in ver.provides:
            if prv.name != rel.name:
                continue
            if rel.op is None:
                return True
            if prv.version is not None and version_satisfies(prv.version, rel.op, rel.version):
                return True
        return False

    def _real_options(self, rel: Relation, owner_arch: str) -> list[tuple[PkgId, bool, bool]]:
        """Real packages that may satisfy ``rel``: (id, needs MA: allowed, needs MA: foreign)."""
        target = self._target(rel, owner_arch)
        if target[1] == "any":
            return [((rel.name, a), True, False) for a in self.index.arches]
        opts = [(target, False, False)]
        if rel.arch is None and len(self.index.arches) > 1:
            opts += [((rel.name, a), False, True) for a in self.index.arches if a != target[1]]
        return opts

    @staticmethod
    def _ma_ok(ver: PackageVersion, allowed: bool, foreign: bool) -> bool:
        if allowed:
            return ver.multi_arch == "allowed"
        return not foreign or ver.multi_arch == "foreign"

    def check(self, rel: Relation, owner: PackageVersion, negative: bool, mode: str) -> bool:
        """apt's CheckDep for one alternative against install (``i``) or candidate (``c``)."""
        owner_pid = self.pid(owner)
        for pid, allowed, foreign in self._real_options(rel, owner_pid[1]):
            if negative and pid == owner_pid:
                continue
            ver = self.marked.get(pid) if mode == "i" else self.cand(pid)
            if ver is not None and self._ma_ok(ver, allowed, foreign) \
                    and version_satisfies(ver.version, rel.op, rel.version):
                return True
        if rel.arch == "any":
            return False
        for prv in self.index.providers(rel.name):
            ppid = self.pid(prv)
            if negative and ppid == owner_pid:
                continue
            state = self.marked.get(ppid) if mode == "i" else self.cand(ppid)
            if state is not prv:
                continue
            if self._provide_ok(rel, prv):
                return True
        return False

    def group_installed(self, group: OrGroup, owner: PackageVersion, dep_type: str) -> bool:
        """DepInstall: satisfied by marked packages (for negative deps: nothing conflicts)."""
        if dep_type in _NEGATIVE:
            return not self.check(group[0], owner, True, "i")
        return any(self.check(r, owner, False, "i") for r in group)

    def candidates_for(self, rel: Relation, owner: PackageVersion, negative: bool
                       ) -> list[PackageVersion]:
        """FromDependency(CANDIDATE): the target's and providers' satisfying candidates."""
        owner_pid = self.pid(owner)
        out: list[PackageVersion] = []
        for pid, allowed, foreign in self._real_options(rel, owner_pid[1]):
            ver = self.cand(pid)
            if ver is not None and not (negative and pid == owner_pid) \
                    and self._ma_ok(ver, allowed, foreign) \
                    and version_satisfies(ver.version, rel.op, rel.version):
                out.append(ver)
        if rel.arch == "any":
            return out
        for prv in self.index.providers(rel.name):
            ppid = self.pid(prv)
            if negative and ppid == owner_pid:
                continue
            if self.cand(ppid) is prv and self._provide_ok(rel, prv):
                out.append(prv)
        return out

    def _compare_providers(self, target: str, a: PackageVersion, b: PackageVersion) -> int:
        """apt's CompareProviders as a cmp function (negative: ``a`` is preferred)."""
        pa, pb = self.pid(a), self.pid(b)
        if (pa in self.protected) != (pb in self.protected):
            return -1 if pa in self.protected else 1
        if a.name != b.name:
            if a.name == target:
                return -1
            if b.name == target:
                return 1
        if a.essential != b.essential:
            return -1 if a.essential else 1
        if a.important != b.important:
            return -1 if a.important else 1
        if pa[1] != pb[1]:
            for arch in self.index.arches:
                if pa[1] == arch:
                    return -1
                if pb[1] == arch:
                    return 1
        if a.priority_rank != b.priority_rank:
            return -1 if a.priority_rank < b.priority_rank else 1
        ra, rb = self.index.mention_rank(a.name), self.index.mention_rank(b.name)
        if ra != rb:
            return -1 if ra > rb else 1
        return 0

    def possible_solutions(self, group: OrGroup, owner: PackageVersion, negative: bool
                           ) -> list[PackageVersion]:
        """getAllPossibleSolutions(CANDIDATE, sorted) over an or-group."""
        out: list[PackageVersion] = []
        for rel in group:
            found = self.candidates_for(rel, owner, negative)
            cmp = functools.partial(self._compare_providers, rel.name)
            out.extend(sorted(found, key=functools.cmp_to_key(cmp)))
        unique: list[PackageVersion] = []
        for ver in out:
            if not unique or unique[-1] is not ver:
                unique.append(ver)
        if not negative:
            unique = [v for v in unique
                      if not (self.pid(v) in self.protected and self.pid(v) not in self.marked)]
        return unique

    def inst_broken(self, pid: PkgId, policy: bool) -> bool:
        """InstBroken (critical deps) or, with ``policy``, InstPolicyBroken (+Recommends)."""
        ver = self.marked.get(pid)
        if ver is None:
            return False
        for dep_type, group in _dep_list(ver, self.options.install_recommends):
            if dep_type not in _CRITICAL and not policy:
                continue
            if not self.group_installed(group, ver, dep_type):
                return True
        return False

    def _discard(self, pid: PkgId) -> None:
        self.marked.pop(pid, None)
        self.reasons.pop(pid, None)
        self.discarded.add(pid)

    def _mark(self, pid: PkgId, ver: PackageVersion) -> None:
        if pid not in self.marked:
            self.marked[pid] = ver
            self.reasons[pid] = Chain(tuple(
                (p[0], t, " | ".join(str(r) for r in g)) for p, t, g in self._stack))

    # ------------------------------------------------------------------ MarkInstall

    def deps_satisfiable(self, pid: PkgId, ver: PackageVersion) -> bool:
        """IsInstallOkDependenciesSatisfiableByCandidates."""
        for dep_type, group in _dep_list(ver, self.options.install_recommends):
            if dep_type not in _CRITICAL or dep_type in _NEGATIVE:
                continue
            if any(self.check(r, ver, False, "i") or self.check(r, ver, False, "c")
                   for r in group):
                continue
            self.failures.append((pid, dep_type, group))
            if pid not in self.protected:
                self.discarded.add(pid)
                self.marked.pop(pid, None)
            return False
        return True

    def mark_install(self, pid: PkgId, auto_inst: bool, depth: int, from_user: bool) -> bool:
        if depth > _MAX_DEPTH:
            return False
        if not from_user and pid not in self.marked and pid in self.protected:
            return False
        ver = self.cand(pid)
        if ver is None:
            return False
        if pid not in self.protected and pid in self.marked and not self.inst_broken(pid, True):
            return True
        if auto_inst and not self.deps_satisfiable(pid, ver):
            return False
        if from_user:
            self._mark(pid, ver)
        if not auto_inst:
            self._mark(pid, ver)
            return True
        propagate = pid in self.protected
        fail_early = not propagate and not from_user
        has_failed = False
        to_install: list[tuple[str, OrGroup]] = []
        to_remove: list[tuple[str, OrGroup]] = []
        for dep_type, group in _dep_list(ver, self.options.install_recommends):
            if self.group_installed(group, ver, dep_type) and not propagate:
                continue
            (to_remove if dep_type in _NEGATIVE else to_install).append((dep_type, group))
        if not self._remove_conflicts(ver, to_remove, propagate, from_user):
            if fail_early:
                return False
            has_failed = True
        if not from_user:
            self._mark(pid, ver)
        already = propagate
        self.protected.add(pid)
        try:
            ok = self._install_deps(pid, ver, depth, to_install, propagate, from_user)
        finally:
            if not already:
                self.protected.discard(pid)
        if not ok:
            if fail_early:
                self._discard(pid)
                return False
            has_failed = True
        return not has_failed

    def _remove_conflicts(self, ver: PackageVersion, to_remove: list[tuple[str, OrGroup]],
                          propagate: bool, from_user: bool) -> bool:
        failed = False
        for _dep_type, group in to_remove:
            for other in self.possible_solutions(group, ver, True):
                opid = self.pid(other)
                if self.cand(opid) is not other:
                    continue
                if opid in self.marked and opid in self.protected:
                    failed = True
                    if not propagate and not from_user:
                        break
                    continue
                if opid in self.marked:
                    self.marked.pop(opid)
                    self.reasons.pop(opid, None)
                if propagate:
                    self.discarded.add(opid)
                    self.protected.add(opid)
            if failed and not propagate and not from_user:
                break
        return not failed

    def _install_deps(self, pid: PkgId, ver: PackageVersion, depth: int,
                      to_install: list[tuple[str, OrGroup]], propagate: bool,
                      from_user: bool) -> bool:
        failed = False
        for dep_type, group in to_install:
            found = self.group_installed(group, ver, dep_type)
            critical = dep_type in _CRITICAL
            if found and not propagate:
                continue
            if found:
                if not critical:
                    continue
                sols = self.possible_solutions(group, ver, False)
                if len(sols) != 1:
                    continue
                spid = self.pid(sols[0])
                if spid in self.protected:
                    continue
                self.protected.add(spid)
                self._stack.append((pid, dep_type, group))
                try:
                    if not self.mark_install(spid, True, depth + 1, False):
                        failed = True
                finally:
                    self._stack.pop()
                continue
            sols = self.possible_solutions(group, ver, False)
            self._stack.append((pid, dep_type, group))
            try:
                for sol in sols:
                    spid = self.pid(sol)
                    if self.cand(spid) is not sol:
                        continue
                    if propagate and critical and len(sols) == 1:
                        if not self.mark_install(spid, False, depth + 1, False):
                            continue
                        self.protected.add(spid)
                    if not self.mark_install(spid, True, depth + 1, False):
                        continue
                    found = True
                    break
            finally:
                self._stack.pop()
            if not found and critical:
                self.failures.append((pid, dep_type, group))
                failed = True
                if not propagate and not from_user:
                    break
        return not failed

    # ------------------------------------------------------------------ driver

    def select_target(self, spec: str) -> PkgId:
        """A command-line target (``name``, ``name:arch``, virtual with one provider)."""
        name, _, arch = spec.partition(":")
        arch = arch or self.native
        if self.index.candidate(name, arch) is not None:
            return (name, arch)
        providers = [p for p in self.index.providers(name) if self.cand(self.pid(p)) is p]
        names = sorted({p.name for p in providers})
        if len(names) == 1:
            return self.pid(providers[0])
        if names:
            raise ResolutionError(
                f"{name} is a virtual package provided by several packages "
                f"({', '.join(names)}); select one explicitly", (name,), tuple(names))
        if self.index.has_name(name) or self.index.is_virtual_only(name):
            raise ResolutionError(f"package {name} has no installation candidate", (name,))
        raise ResolutionError(f"unable to locate package {name}", (name,))

    def run(self, targets: Sequence[str]) -> Resolution:
        specs = list(targets)
        if self.options.include_base:
            specs = [*self.index.essential_and_required(), *specs]
        pids: list[PkgId] = []
        for spec in specs:
            pid = self.select_target(spec)
            if pid not in pids:
                pids.append(pid)
        for pid in pids:
            self.protected.add(pid)
            self.mark_install(pid, False, 0, True)
        for pid in sorted(pids, key=lambda p: self.index.mention_rank(p[0])):
            self.mark_install(pid, True, 0, True)
        self._check_result(pids)
        order = list(self.marked)
        return Resolution(
            targets=tuple(p[0] for p in pids),
            packages=tuple(self.marked[p] for p in order),
            reasons={p[0]: self.reasons.get(p, Chain(())) for p in order})

    def _check_result(self, pids: list[PkgId]) -> None:
        for pid in pids:
            if pid not in self.marked:
                raise ResolutionError(f"{pid[0]} cannot be installed", (pid[0],))
        for pid, ver in self.marked.items():
            for dep_type, group in _dep_list(ver, False):
                if self.group_installed(group, ver, dep_type):
                    continue
                chain = self.reasons.get(pid, Chain(()))
                path = tuple([*(link[0] for link in chain.links), pid[0]])
                text = " | ".join(str(r) for r in group)
                if dep_type in _NEGATIVE:
                    msg = f"{pid[0]} {dep_type} {text}, which is also to be installed"
                else:
                    msg = f"{pid[0]} {dep_type} {text}, which cannot be installed"
                raise ResolutionError(
                    f"unmet dependency: {' -> '.join(path)}: {msg}", (*path, text))


def resolve(index: PackageIndex, targets: Sequence[str],
            options: ResolveOptions | None = None) -> Resolution:
    """The closure ``apt-get install TARGETS`` would install on an empty system."""
    return Resolver(index, options).run(targets)
