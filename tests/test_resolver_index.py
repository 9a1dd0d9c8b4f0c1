"""Packages index loading: formats, the parse cache, malformed stanzas, CLI plans."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pytest

from distro.debian_repo import MalformedIndexError
from distro.packages_index import load_packages_file, release_priority
from distro.plans import index_specs
from syncer.cli import main as cli_main
from tests.test_resolver_rules import stanza

GOOD = "\n".join([stanza("a", Depends="b (>= 1.0), c | d", Provides="va (= 1)"),
                  stanza("b", "1:2.0"), stanza("c", arch="all", Essential="yes",
                                                Priority="required")])


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
def test_formats_and_cache(tmp_path: Path, suffix: str) -> None:
    raw = GOOD.encode()
    data = {"": raw, ".gz": gzip.compress(raw), ".xz": lzma.compress(raw)}[suffix]
    path = tmp_path / f"Packages{suffix}"
    path.write_bytes(data)
    cold = load_packages_file(path, cache_dir=tmp_path / "cache")
    assert cold.names == ["a", "b", "c"] and cold.versions[1] == "1:2.0"
    assert cold.provides == {"va": [0]} and cold.essential == [2] and cold.required == [2]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    warm = load_packages_file(path, cache_dir=tmp_path / "cache")
    assert warm.names == cold.names
    depends_at = cold.data.find(b"\nDepends")  # b is first met in a's Depends, then c, d
    assert warm.mention_code("b") == cold.mention_code("b") == (2 << 32) | depends_at
    assert cold.mention_code("a") == 0 and cold.mention_code("zz") is None
    assert cold.mention_code("d") == (2 << 32) | (depends_at + 2)


def test_lz4(tmp_path: Path) -> None:
    lz4_frame = pytest.importorskip("lz4.frame")
    path = tmp_path / "Packages.lz4"
    path.write_bytes(lz4_frame.compress(GOOD.encode()))
    assert load_packages_file(path, use_cache=False).names == ["a", "b", "c"]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("\n\n" + GOOD + "\nthis is not a field\n", 28, "expected 'Field: value'"),
    ("Package: a\nVersion: 1.0\n\nPackage: b\nVersion: 1\nArchitecture: all\n", 1,
     "without a Architecture"),
    ("Package: a\nPackage: b\nVersion: 1.0\nArchitecture: all\n", 2, "duplicate Package"),
    ("Package: a\nVersion: x1.0\nArchitecture: all\n", 2, "invalid version"),
    ("Package: A_b\nVersion: 1.0\nArchitecture: all\n", 1, "invalid package name"),
    ("Package: a\nVersion: 1.0\nArchitecture: all\nProvides: (= 1)\n", 4, "Provides"),
])
def test_malformed_stanzas(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "Packages"
    path.write_text(text)
    with pytest.raises(MalformedIndexError, match=message) as info:
        load_packages_file(path, use_cache=False)
    assert info.value.source == str(path) and info.value.line == line


def test_malformed_relation_is_reported_on_use(tmp_path: Path) -> None:
    from distro.packages_index import load_index
    from distro.resolver import resolve

    path = tmp_path / "Packages"
    path.write_text(stanza("ok") + "\n" + stanza("a", Depends="b (>= 1.0, c"))
    index = load_index([path], use_cache=False)
    with pytest.raises(MalformedIndexError) as info:
        resolve(index, ["a"])
    assert info.value.source == str(path) and info.value.line == 11


def test_release_priority_and_specs(tmp_path: Path) -> None:
    assert release_priority("Suite: stable\n") == 500
    assert release_priority("NotAutomatic: yes\nButAutomaticUpgrades: yes\n") == 100
    assert release_priority("NotAutomatic: yes\n") == 1
    lists = tmp_path / "lists"
    lists.mkdir()
    pk = lists / "host_debian_dists_bpo_main_binary-amd64_Packages"
    pk.write_text(GOOD)
    (lists / "host_debian_dists_bpo_InRelease").write_text("NotAutomatic: yes\n")
    assert [s.priority for s in index_specs([pk])] == [1]


def test_cli_resolve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "Packages"
    path.write_text(GOOD)
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert cli_main(["resolve", "--index", str(path), *cache, "a"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in plan["packages"]] == ["b", "c", "a"]
    assert plan["packages"][0]["filename"] == "pool/b_1:2.0_amd64.deb"
    assert set(plan["packages"][0]) == {"name", "version", "arch", "filename", "size", "sha256",
                                        "cycle"}
    assert cli_main(["resolve", "--index", str(path), *cache, "--format", "table", "a"]) == 0
    assert "3 packages" in capsys.readouterr().out
    assert cli_main(["resolve", "--index", str(path), *cache, "--explain", "c", "a"]) == 0
    assert capsys.readouterr().out.strip() == "a --Depends: c | d--> c"
    assert cli_main(["resolve", "--index", str(path), *cache, "zzz"]) == 1
    assert "unable to locate package zzz" in capsys.readouterr().err
