"""Install order rules: Pre-Depends always earlier, Depends earlier except inside cycles."""

from __future__ import annotations

import random
from pathlib import Path

from distro.install_order import dependency_edges, install_order, order_violations
from distro.resolver import resolve
from tests.test_resolver_rules import repo, stanza


def _names(tmp_path: Path, *stanzas: str, targets: tuple[str, ...] = ("a",)) -> list[str]:
    res = resolve(repo(tmp_path, *stanzas).index(), list(targets))
    order = install_order(res.packages)
    assert order_violations(order) == []
    return [p.name for p in order.packages]


def test_dependencies_first(tmp_path: Path) -> None:
    names = _names(tmp_path, stanza("a", Depends="b, c"), stanza("b", Pre_Depends="d"),
                   stanza("c", Depends="d"), stanza("d"))
    assert names == ["d", "b", "c", "a"]


def test_cycle_kept_together_and_pre_depends_honoured(tmp_path: Path) -> None:
    res = resolve(repo(tmp_path, stanza("a", Depends="x"), stanza("x", Depends="y"),
                       stanza("y", Pre_Depends="z", Depends="x"), stanza("z", Depends="y"),
                       stanza("w"), stanza("b", Depends="w")).index(), ["a", "b"])
    order = install_order(res.packages)
    names = [p.name for p in order.packages]
    assert order_violations(order) == []
    assert len(order.cycles) == 1 and set(order.cycles[0]) == {"x", "y", "z"}
    pos = {n: i for i, n in enumerate(names)}
    assert pos["z"] < pos["y"]  # Pre-Depends inside the cycle
    assert max(pos[n] for n in "xyz") - min(pos[n] for n in "xyz") == 2  # contiguous
    assert pos["a"] > pos["x"]


def test_order_is_deterministic(tmp_path: Path) -> None:
    stanzas = [stanza(f"p{i}", Depends=", ".join(f"p{j}" for j in range(i + 1, min(i + 4, 30))))
               if i < 29 else stanza("p29") for i in range(30)]
    res = resolve(repo(tmp_path, *stanzas).index(), ["p0"])
    reference = [p.name for p in install_order(res.packages).packages]
    rng = random.Random(5)
    for _ in range(5):
        shuffled = list(res.packages)
        rng.shuffle(shuffled)
        assert [p.name for p in install_order(shuffled).packages] == reference
    assert reference[0] == "p29" and reference[-1] == "p0"


def test_violations_are_reported(tmp_path: Path) -> None:
    res = resolve(repo(tmp_path, stanza("a", Pre_Depends="b"), stanza("b")).index(), ["a"])
    order = install_order(res.packages)
    bad = type(order)(tuple(reversed(order.packages)), ())
    assert order_violations(bad) == ["a: Pre-Depends b not satisfied by an earlier entry"]


def test_virtual_edges(tmp_path: Path) -> None:
    res = resolve(repo(tmp_path, stanza("a", Depends="mta"),
                       stanza("exim", Provides="mta")).index(), ["a"])
    edges = dependency_edges(res.packages)
    assert edges[("a", "amd64")] == [(("exim", "amd64"), False)]
