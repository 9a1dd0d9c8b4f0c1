"""Packages index loading: formats, the parse cache, malformed stanzas, CLI plans."""

from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import pytest

from distro.debian_repo import MalformedIndexError
from distro.packages_index import Relation, load_index, release_priority
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
    cold = load_index([path], cache_dir=tmp_path / "cache")
    assert sorted(cold.names()) == ["a", "b", "c"]
    assert [v.version for v in cold.versions("b")] == ["1:2.0"]
    assert [p.name for p in cold.providers("va")] == ["a"]
    assert cold.essential_and_required() == ["c"]
    assert len(list((tmp_path / "cache").iterdir())) == 1
    warm = load_index([path], cache_dir=tmp_path / "cache")
    assert sorted(warm.names()) == sorted(cold.names())
    a = warm.candidate("a", "amd64")
    assert a is not None and a.depends == ((Relation("b", None, ">=", "1.0"),),
                                           (Relation("c", None, None, None),
                                            Relation("d", None, None, None)))
    assert a.provides == (Relation("va", None, "=", "1"),) and a.line == 1
    # apt's package IDs: a, then b and c, d met in a's Depends, then va from its Provides
    c = warm.cache
    assert [c.pkg_name(p) for p in range(c.n_packages)] == ["a", "b", "c", "d", "va"]


def test_cache_follows_the_file(tmp_path: Path) -> None:
    """A changed Packages file (size or mtime) gets a new cache; the old one is not used."""
    path = tmp_path / "Packages"
    path.write_text(GOOD)
    assert load_index([path], cache_dir=tmp_path / "c").has_name("a")
    path.write_text(stanza("zz"))
    index = load_index([path], cache_dir=tmp_path / "c")
    assert sorted(index.names()) == ["zz"]
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "Packages"
    path.write_text(GOOD)
    load_index([path], cache_dir=tmp_path / "c")
    (cached,) = (tmp_path / "c").iterdir()
    cached.write_bytes(b"garbage")
    assert sorted(load_index([path], cache_dir=tmp_path / "c").names()) == ["a", "b", "c"]


def test_lz4(tmp_path: Path) -> None:
    lz4_frame = pytest.importorskip("lz4.frame")
    path = tmp_path / "Packages.lz4"
    path.write_bytes(lz4_frame.compress(GOOD.encode()))
    assert sorted(load_index([path], use_cache=False).names()) == ["a", "b", "c"]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("\n\n" + GOOD + "\nthis is not a field\n", 28, "expected 'Field: value'"),
    ("Package: a\nVersion: 1.0\n\nPackage: b\nVersion: 1\nArchitecture: all\n", 1,
     "without a Architecture"),
    ("Package: a\nPackage: b\nVersion: 1.0\nArchitecture: all\n", 2, "duplicate Package"),
    ("Package: a\nVersion: x1.0\nArchitecture: all\n", 2, "invalid version"),
    ("Package: A_b\nVersion: 1.0\nArchitecture: all\n", 1, "invalid package name"),
    ("Package: a\nVersion: 1.0\nArchitecture: all\nProvides: (= 1)\n", 4, "Provides"),
    (stanza("ok") + "\n" + stanza("a", Depends="b (>= 1.0, c"), 11, "malformed Depends"),
])
def test_malformed_stanzas(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "Packages"
    path.write_text(text)
    with pytest.raises(MalformedIndexError, match=message) as info:
        load_index([path], use_cache=False)
    assert info.value.source == str(path) and info.value.line == line


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


@pytest.mark.parametrize(("raw", "line", "message"), [
    (b"Package: a\nVersion: 1.0\nArchitecture: all\n\nPackage: b\nVersion: 1.0\n"
     b"Architecture: all\nDescription: caf\xe9\n", 8, "not valid UTF-8"),
    (b"Package: a\nVersion: 1.0\nArchitecture: all\nDescription: x\x00\n", 4, "NUL"),
])
def test_binary_and_bad_utf8(tmp_path: Path, raw: bytes, line: int, message: str) -> None:
    path = tmp_path / "Packages"
    path.write_bytes(raw)
    with pytest.raises(MalformedIndexError, match=message) as info:
        load_index([path], use_cache=False)
    assert info.value.line == line
