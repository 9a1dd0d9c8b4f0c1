"""Tests for syncer.demo.sample_repo: the sample dependency graph and real .deb building."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from debian.debian_support import Version

from distro.debian_repo import stop_gpg_agent
from syncer.demo.sample_repo import (
    TOP_PACKAGE,
    SampleDeb,
    build_deb,
    build_sample_apt_repo,
    build_sample_debs,
    control_text,
    deb_filename,
    sample_graph,
)

needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb missing")
_REL = re.compile(r"^(\S+)(?: \((<<|<=|=|>=|>>) (\S+)\))?$")
_OPS = {
    "<<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "=": lambda a, b: a == b,
    ">=": lambda a, b: a >= b,
    ">>": lambda a, b: a > b,
}


def _alternatives(clause: str) -> list[tuple[str, str | None, str | None]]:
    out = []
    for alt in clause.split("|"):
        match = _REL.match(alt.strip())
        assert match is not None, clause
        out.append((match.group(1), match.group(2), match.group(3)))
    return out


def _satisfiers(specs: list[SampleDeb], clause: str) -> list[SampleDeb]:
    """Packages satisfying a clause: the first satisfiable alternative, by name or Provides."""
    for name, op, version in _alternatives(clause):
        found = [
            s
            for s in specs
            if (s.name == name and (op is None or _OPS[op](Version(s.version), Version(version))))
            or (op is None and name in s.provides)
        ]
        if found:
            return found
    return []


def _closure(specs: list[SampleDeb], roots: list[str], recommends: bool) -> set[str]:
    by_name = {s.name: s for s in specs}
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        spec = by_name[todo.pop()]
        if spec.name in seen:
            continue
        seen.add(spec.name)
        for clause in (*spec.pre_depends, *spec.depends, *(spec.recommends if recommends else ())):
            todo += [s.name for s in _satisfiers(specs, clause)[:1]]
    return seen


def test_graph_is_deterministic_and_sized() -> None:
    graph = sample_graph()
    assert graph == sample_graph() and len(graph) == 40
    assert sample_graph(seed=2) != graph
    assert len({s.name for s in graph}) == 40
    total = sum(s.payload_bytes for s in graph)
    assert 19_000_000 <= total <= 21_000_000
    sizes = sorted(s.payload_bytes for s in graph)
    assert sizes[0] < 20_000 and sizes[-1] > 1_000_000  # a few KB to a few MB
    for spec in graph:
        assert re.fullmatch(r"edge-[a-z0-9][a-z0-9+.-]+", spec.name), spec.name
        assert spec.architecture in ("all", "amd64")
        assert spec.description.splitlines()[0].strip()


def test_graph_is_consistent_and_rooted() -> None:
    for n, seed in ((22, 1), (40, 1), (40, 5), (120, 9)):
        graph = sample_graph(n, total_bytes=1_000_000, seed=seed)
        assert len(graph) == n and len({s.name for s in graph}) == n
        for spec in graph:
            for clause in (*spec.depends, *spec.pre_depends, *spec.recommends):
                assert _satisfiers(graph, clause), f"{spec.name}: {clause}"
        required = _closure(graph, [TOP_PACKAGE], recommends=False)
        everything = _closure(graph, [TOP_PACKAGE], recommends=True)
        assert everything == {s.name for s in graph}
        assert len(required) >= n - 2  # only Recommends-only packages may be missing


def test_graph_has_the_interesting_features() -> None:
    graph = {s.name: s for s in sample_graph()}
    assert "edge-libgcc-s1" in graph["edge-libc6"].depends  # a cycle ...
    assert any(c.startswith("edge-libc6 ") for c in graph["edge-libgcc-s1"].depends)
    nova = graph["edge-nova-compute"]
    assert "edge-qemu-system-x86 | edge-qemu-kvm" in nova.depends  # or-group
    assert "edge-time-daemon" in nova.depends  # virtual, provided by chrony only
    assert [s.name for s in graph.values() if "edge-time-daemon" in s.provides] == ["edge-chrony"]
    assert "edge-python3-mysqldb | edge-python3-pymysql" in graph["edge-python3-nova"].depends
    assert "edge-python3-mysqldb" not in graph  # first alternative missing
    assert any(s.pre_depends for s in graph.values())
    assert nova.recommends == ("edge-libvirt-clients",)
    assert any(" (= " in c for c in nova.depends)
    versions = [s.version for s in graph.values()]
    assert any(":" in v for v in versions) and any("~" in v for v in versions)


def test_graph_rejects_too_few_packages() -> None:
    with pytest.raises(ValueError, match="at least"):
        sample_graph(5)


def test_control_text_renders_relations() -> None:
    spec = SampleDeb(
        name="edge-demo",
        version="1:2.0~rc1-1",
        architecture="amd64",
        depends=("libfoo (>= 1.0)", "bar | baz"),
        pre_depends=("edge-init (>= 1.54~)",),
        recommends=(),
        provides=("edge-virtual",),
        payload_bytes=5000,
        description="short synopsis\nfirst line\n\nsecond paragraph",
    )
    text = control_text(spec)
    assert "Depends: libfoo (>= 1.0), bar | baz\n" in text
    assert "Pre-Depends: edge-init (>= 1.54~)\n" in text
    assert "Recommends" not in text and "Provides: edge-virtual\n" in text
    assert "Installed-Size: 5\n" in text
    assert text.endswith("Description: short synopsis\n first line\n .\n second paragraph\n")
    assert deb_filename(spec) == "edge-demo_2.0~rc1-1_amd64.deb"


@needs_dpkg
def test_build_deb_is_real_and_reproducible(tmp_path: Path) -> None:
    spec = SampleDeb(
        "edge-demo", "1:2.0-1", "amd64", ("edge-libc6 (>= 2.34)",), (), (), (), 3000, "demo"
    )
    first = build_deb(spec, tmp_path / "a", seed=7)
    again = build_deb(spec, tmp_path / "b", seed=7)
    other = build_deb(spec, tmp_path / "c", seed=8)
    assert first.name == "edge-demo_2.0-1_amd64.deb"
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(again.read_bytes()).hexdigest()
    assert digest != hashlib.sha256(other.read_bytes()).hexdigest()
    fields = subprocess.run(
        ["dpkg-deb", "-f", str(first)], capture_output=True, text=True, check=True
    ).stdout
    assert "Version: 1:2.0-1\n" in fields and "Depends: edge-libc6 (>= 2.34)\n" in fields
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(first)], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"root/root\s+3000 .* \./usr/share/edge-demo/payload\.bin", listing)
    assert first.stat().st_size > 3000  # random payload does not compress
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]


@needs_dpkg
def test_build_deb_compressions_and_validation(tmp_path: Path) -> None:
    spec = SampleDeb("edge-z", "1.0", "all", (), (), (), (), 100_000, "z")
    for compression in ("zstd", "gzip", "xz", None):
        out = build_deb(spec, tmp_path / str(compression), seed=1, compression=compression)
        members = subprocess.run(["ar", "t", str(out)], capture_output=True, text=True).stdout
        expected = {"zstd": "data.tar.zst", "xz": "data.tar.xz"}.get(
            str(compression), "data.tar.gz"
        )
        assert expected in members.split()
    with pytest.raises(ValueError):
        build_deb(SampleDeb("Bad_Name", "1.0", "all", (), (), (), (), 1, "x"), tmp_path, seed=1)
    with pytest.raises(ValueError):
        build_deb(SampleDeb("edge-ok", "x1.0", "all", (), (), (), (), 1, "x"), tmp_path, seed=1)


@needs_dpkg
def test_build_sample_debs_parallel(tmp_path: Path) -> None:
    specs = sample_graph(24, total_bytes=150_000, seed=4)
    paths = build_sample_debs(tmp_path, specs, seed=4, jobs=3)
    assert [p.name for p in paths] == [deb_filename(s) for s in specs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    again = build_sample_debs(tmp_path / "again", specs[:3], seed=4, jobs=1)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths[:3]]


@needs_dpkg
@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg missing")
def test_build_sample_apt_repo(tmp_path: Path) -> None:
    repo = build_sample_apt_repo(tmp_path, n_packages=22, total_bytes=80_000, seed=2)
    try:
        assert repo.top_package == TOP_PACKAGE == "edge-compute-node"
        assert len(repo.specs) == 22 and repo.specs == tuple(
            sample_graph(22, total_bytes=80_000, seed=2)
        )
        assert len(list(repo.deb_dir.glob("*.deb"))) == 22
        assert repo.signing_key is not None and repo.public_keyring is not None
        assert repo.public_keyring.stat().st_size > 100
        assert not (tmp_path / "dists").exists()  # the origin builds the tree itself
        stale = repo.deb_dir / "stale_1.0_all.deb"
        stale.write_bytes(b"junk")
        unsigned = build_sample_apt_repo(tmp_path, n_packages=22, total_bytes=80_000, signed=False)
        assert unsigned.signing_key is None and unsigned.public_keyring is None
        assert not stale.exists()  # deb_dir is rebuilt from scratch
    finally:
        if repo.signing_key is not None:
            stop_gpg_agent(repo.signing_key)
            if repo.signing_key.gnupg_home.name.startswith("edgegpg-"):  # short home in /tmp
                shutil.rmtree(repo.signing_key.gnupg_home, ignore_errors=True)
