"""Resolver rules on small hand-written indexes; each case is also checked against real apt-get
(in a private root over the same file) when apt-get is installed."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pytest

from distro.packages_index import IndexSpec, PackageIndex, load_index
from distro.resolver import ResolutionError, ResolveOptions, resolve
from tests.plugin.apt_oracle import AptListSet, AptOracle

HAVE_APT = shutil.which("apt-get") is not None
_SHA = "0" * 64


def stanza(name: str, version: str = "1.0", arch: str = "amd64", **fields: str) -> str:
    """One Packages stanza; keyword fields use underscores for dashes (Pre_Depends)."""
    lines = [f"Package: {name}", f"Version: {version}", f"Architecture: {arch}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in fields.items()]
    lines += [f"Filename: pool/{name}_{version}_{arch}.deb", "Size: 100", f"SHA256: {_SHA}"]
    return "\n".join(lines) + "\n"


class Repo:
    """A tiny repository: one or more Packages files, our index and apt's view of it."""

    def __init__(self, root: Path, *files: str) -> None:
        self.root = root
        self.paths: list[Path] = []
        for n, text in enumerate(files):
            path = root / f"f{n}" / "Packages"
            path.parent.mkdir(parents=True)
            path.write_text(textwrap.dedent(text).strip() + "\n")
            self.paths.append(path)

    def index(self) -> PackageIndex:
        return load_index([IndexSpec(p) for p in self.paths], cache_dir=self.root / "cache")

    def ours(self, targets: Sequence[str], recommends: bool = True) -> set[tuple[str, str]]:
        res = resolve(self.index(), targets, ResolveOptions(install_recommends=recommends))
        return {(p.name, p.version) for p in res.packages}

    def apt(self, targets: Sequence[str], recommends: bool = True) -> set[tuple[str, str]] | None:
        if not HAVE_APT:
            return None
        lists = [AptListSet(p, None, f"d{n}", "test", "main") for n, p in enumerate(self.paths)]
        result = AptOracle(self.root / "apt", lists).simulate(targets, recommends=recommends)
        return {(n, v) for n, v, _a in result.packages} if result.returncode == 0 else set()

    def check(self, targets: Sequence[str], expected: set[str], recommends: bool = True) -> None:
        ours = self.ours(targets, recommends)
        assert {n for n, _v in ours} == expected
        theirs = self.apt(targets, recommends)
        if theirs is not None:
            assert ours == theirs, f"apt-get chose {sorted(theirs)}"


def repo(tmp_path: Path, *stanzas: str) -> Repo:
    return Repo(tmp_path, "\n".join(stanzas))


def test_depends_and_pre_depends(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Pre_Depends="b", Depends="c (>= 1.0)"), stanza("b"),
             stanza("c", "1.5", Depends="d"), stanza("d"), stanza("unrelated"))
    r.check(["a"], {"a", "b", "c", "d"})


def test_or_group_takes_first_installable_alternative(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="missing | c (>= 2) | b | c"), stanza("b"),
             stanza("c"))
    r.check(["a"], {"a", "b"})


def test_or_group_prefers_already_marked_alternative(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="b | c"), stanza("b"), stanza("c"))
    r.check(["a", "c"], {"a", "c"})


def test_or_group_satisfied_by_earlier_plain_dependency(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="c, b | c"), stanza("b"), stanza("c"))
    r.check(["a"], {"a", "c"})
    r2 = Repo(tmp_path / "second", stanza("a", Depends="b | c, c") + "\n" + stanza("b")
              + "\n" + stanza("c"))
    r2.check(["a"], {"a", "b", "c"})


def test_virtual_package_and_versioned_provides(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="mta, libx (>= 2)"),
             stanza("postfix", Provides="mta"),
             stanza("libx-old", Provides="libx"),             # unversioned: not enough
             stanza("libx-new", Provides="libx (= 2.1)"))
    r.check(["a"], {"a", "postfix", "libx-new"})


def test_provider_choice_follows_priority(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="awk"),
             stanza("gawk", Provides="awk", Priority="optional"),
             stanza("mawk", Provides="awk", Priority="required"))
    r.check(["a"], {"a", "mawk"})


def test_real_package_preferred_over_providers(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="x"), stanza("y", Provides="x", Priority="required"),
             stanza("x", Priority="optional"))
    r.check(["a"], {"a", "x"})


def test_any_qualifier_and_multi_arch(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="py:any, perl:any | perl-base"),
             stanza("py", Multi_Arch="allowed"), stanza("perl"), stanza("perl-base"))
    r.check(["a"], {"a", "py", "perl-base"})


def test_arch_all_and_foreign_arch_ignored(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", arch="all", Depends="b"), stanza("b", arch="i386"),
             stanza("b", "0.9", arch="amd64"))
    r.check(["a"], {"a", "b"})
    assert ("b", "0.9") in r.ours(["a"])


def test_candidate_is_highest_version_across_indexes(tmp_path: Path) -> None:
    r = Repo(tmp_path, stanza("a", "1:1.0") + "\n" + stanza("b", "2.0~rc1"),
             stanza("a", "1.9") + "\n" + stanza("b", "2.0~rc1+b1"))
    r.check(["a", "b"], {"a", "b"})
    assert r.ours(["a", "b"]) == {("a", "1:1.0"), ("b", "2.0~rc1+b1")}


def test_pin_priority_overrides_version(tmp_path: Path) -> None:
    r = Repo(tmp_path, stanza("a", "1.0"), stanza("a", "2.0"))
    index = load_index([IndexSpec(r.paths[0], 500), IndexSpec(r.paths[1], 100)],
                       cache_dir=tmp_path / "c")
    assert [p.version for p in resolve(index, ["a"]).packages] == ["1.0"]


def test_exact_version_dependency(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="common (= 2.0)"), stanza("common", "2.0"))
    r.check(["a"], {"a", "common"})
    bad = Repo(tmp_path / "bad", stanza("a", Depends="common (= 1.0)") + "\n"
               + stanza("common", "2.0"))
    with pytest.raises(ResolutionError, match="common"):
        bad.ours(["a"])
    assert bad.apt(["a"]) in (None, set())


def test_conflicting_alternative_is_skipped(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="x | y"), stanza("x", Conflicts="t"), stanza("y"),
             stanza("t"))
    r.check(["t", "a"], {"t", "a", "y"})


def test_breaking_alternative_is_skipped(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="x | y"), stanza("x", Breaks="t (<< 2)"),
             stanza("y"), stanza("t"))
    r.check(["t", "a"], {"t", "a", "y"})


def test_recommends_recursive_and_optional(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Recommends="b, broken", Suggests="s"),
             stanza("b", Recommends="c"), stanza("c"), stanza("s"),
             stanza("broken", Depends="nowhere"))
    r.check(["a"], {"a", "b", "c"})
    r.check(["a"], {"a"}, recommends=False)


def test_virtual_target(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("exim", Provides="mta"), stanza("gawk", Provides="awk"),
             stanza("mawk", Provides="awk"))
    r.check(["mta"], {"exim"})
    with pytest.raises(ResolutionError, match="gawk, mawk") as info:
        r.ours(["awk"])
    assert info.value.alternatives == ("gawk", "mawk")


def test_unknown_target(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a"))
    with pytest.raises(ResolutionError, match="unable to locate package nope"):
        r.ours(["nope"])


def test_unsatisfiable_chain_is_named(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("top", Depends="mid"), stanza("mid", Depends="leaf (>= 3)"),
             stanza("leaf", "2.0"))
    with pytest.raises(ResolutionError) as info:
        r.ours(["top"])
    assert "top" in str(info.value) and "mid" in str(info.value) and "leaf" in str(info.value)
    assert r.apt(["top"]) in (None, set())


def test_dependency_loop(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="b"), stanza("b", Depends="c"),
             stanza("c", Depends="a, d"), stanza("d"))
    r.check(["a"], {"a", "b", "c", "d"})


def test_base_set_option(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("base-files", Essential="yes", Priority="required"),
             stanza("dpkg", Priority="required", Depends="tar"), stanza("tar"), stanza("a"))
    res = resolve(r.index(), ["a"], ResolveOptions(include_base=True))
    assert {p.name for p in res.packages} == {"base-files", "dpkg", "tar", "a"}
    theirs = r.apt(["base-files", "dpkg", "a"])
    if theirs is not None:
        assert {(p.name, p.version) for p in res.packages} == theirs


def test_foreign_architecture(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("lib", arch="i386", Depends="tool, libc"),
             stanza("tool", Multi_Arch="foreign"), stanza("libc", arch="i386"),
             stanza("libc", arch="amd64"))
    index = load_index([IndexSpec(r.paths[0])], foreign_arches=("i386",),
                       cache_dir=tmp_path / "c")
    res = resolve(index, ["lib:i386"])
    assert {(p.name, p.arch) for p in res.packages} == {
        ("lib", "i386"), ("tool", "amd64"), ("libc", "i386")}


def test_explain_chain(tmp_path: Path) -> None:
    r = repo(tmp_path, stanza("a", Depends="b"), stanza("b", Depends="c"), stanza("c"))
    res = resolve(r.index(), ["a"])
    assert res.explain("c") == "a --Depends: b--> b --Depends: c--> c"
    assert res.explain("a") == "a (requested)"
