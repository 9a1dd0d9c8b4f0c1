"""Debian version ordering, checked against dpkg --compare-versions."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distro.versions import (
    InvalidVersionError,
    compare_versions,
    is_valid_version,
    parse_version,
    sort_versions,
    version_satisfies,
)

_PART_CHARS = "0123456789abzAZ.+~"


def _dpkg_cmp(a: str, b: str) -> int:
    for op, result in (("lt", -1), ("eq", 0)):
        proc = subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False,
                              capture_output=True)
        if proc.returncode == 0:
            return result
    return 1


@st.composite
def versions(draw: st.DrawFn) -> str:
    epoch = draw(st.sampled_from(["", "", "", "1:", "2:", "0:", "10:"]))
    upstream = draw(st.sampled_from("0123456789")) + draw(
        st.text(alphabet=_PART_CHARS, max_size=8))
    revision = draw(st.sampled_from(["", "", "-1", "-0", "-1~bpo1", "-2+deb12u1", "-1.1",
                                     "-a", "-1~"]))
    return f"{epoch}{upstream}{revision}"


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg is not installed")
@settings(max_examples=150, deadline=None)
@given(versions(), versions())
def test_matches_dpkg(a: str, b: str) -> None:
    assert compare_versions(a, b) == _dpkg_cmp(a, b), (a, b)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1.0", "1.0", 0), ("1.0~rc1", "1.0", -1), ("1.0", "1.0+b1", -1), ("1:0.1", "9.9", 1),
    ("1.10", "1.9", 1), ("1.0a", "1.0+", -1), ("1.0-1", "1.0-1~bpo1", 1), ("0:1.0", "1.0", 0),
    ("1.0", "1.0-0", 0), ("2.36-9+deb12u10", "2.36-9+deb12u9", 1), ("1.0~~", "1.0~", -1),
    ("1.001", "1.1", 0),
])
def test_known_pairs(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_parse_and_validity() -> None:
    v = parse_version("2:1.2-3-4")
    assert (v.epoch, v.upstream, v.revision) == (2, "1.2-3", "4")
    assert str(v) == "2:1.2-3-4"
    assert is_valid_version("1:2.3~rc1+dfsg-4")
    for bad in ("", "a1.0", "1.0 2", "x:1.0", "1:"):
        assert not is_valid_version(bad), bad
    with pytest.raises(InvalidVersionError):
        parse_version("x:1")


def test_satisfies_and_sort() -> None:
    assert version_satisfies("1.0", ">=", "1.0~")
    assert version_satisfies("1.0", "<<", "1.0.1")
    assert not version_satisfies("1.0", ">>", "1.0")
    assert version_satisfies("1.0", "=", "0:1.0")
    assert version_satisfies("2.0", ">", "1.0")  # obsolete spelling of >=
    assert version_satisfies("anything", None, None)
    assert sort_versions(["1.10", "1.9", "1:0.1", "1.9~rc"]) == ["1.9~rc", "1.9", "1.10", "1:0.1"]
