"""Property tests: both delta paths rebuild any target from any basis, byte for byte."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import syncer.delta_patch as delta_patch
from syncer.delta_match import assemble, match_basis, plan_blocks
from syncer.delta_patch import apply_patch, make_patch
from syncer.delta_signature import compute_signature, decode_signature, encode_signature

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _noise(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


@st.composite
def basis_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["noise", "zeros", "repeated", "text", "mixed", "empty", "tiny"]))
    n = draw(st.integers(0, 40_000))
    seed = draw(st.integers(0, 1 << 30))
    if kind == "empty":
        return b""
    if kind == "tiny":
        return _noise(draw(st.integers(1, 300)), seed)
    if kind == "zeros":
        return bytes(n)
    if kind == "repeated":
        unit = _noise(draw(st.sampled_from([1, 7, 256, 300, 512])), seed)
        return (unit * (n // len(unit) + 1))[:n]
    if kind == "text":
        words = [b"Package: ", b"Version: 1.", b"Depends: libc6\n", b"\n", b"Size: 42\n"]
        rng = np.random.default_rng(seed)
        return b"".join(words[int(i)] for i in rng.integers(0, len(words), n // 8))
    if kind == "mixed":
        return _noise(n // 3, seed) + bytes(n // 3) + _noise(n // 3, seed + 1)
    return _noise(n, seed)


@st.composite
def pairs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    basis = draw(basis_bytes())
    how = draw(st.sampled_from(["edits", "edits", "edits", "identical", "unrelated", "zeros",
                                "truncate", "empty"]))
    if how == "identical":
        return basis, basis
    if how == "unrelated":
        return basis, draw(basis_bytes())
    if how == "zeros":
        return basis, bytes(draw(st.integers(0, 30_000)))
    if how == "empty":
        return basis, b""
    if how == "truncate":
        return basis, basis[:draw(st.integers(0, len(basis)))]
    target = bytearray(basis)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["rewrite", "insert", "delete", "append"]))
        at = draw(st.integers(0, len(target)))
        length = draw(st.integers(1, 3000))
        seed = draw(st.integers(0, 1 << 30))
        if op == "rewrite":
            target[at:at + length] = _noise(len(target[at:at + length]), seed)
        elif op == "insert":
            target[at:at] = _noise(length, seed)
        elif op == "delete":
            del target[at:at + length]
        else:
            target += _noise(length, seed)
    return basis, bytes(target)


def blocks_roundtrip(basis: bytes, target: bytes, block_size: int | None, work: Path) -> bytes:
    (work / "b").write_bytes(basis)
    (work / "t").write_bytes(target)
    sig = compute_signature(work / "t", block_size)
    sig = decode_signature(encode_signature(sig), hashlib.sha256(target).hexdigest())
    match = match_basis(sig, work / "b")
    plan = plan_blocks(sig, match)
    (work / "payload").write_bytes(b"".join(target[o:o + n] for o, n in plan.ranges))
    digest = assemble(sig, match, plan, work / "b", work / "payload", work / "out")
    out = (work / "out").read_bytes()
    assert digest == hashlib.sha256(out).hexdigest()
    assert plan.payload_size <= len(target)
    return out


def patch_roundtrip(basis: bytes, target: bytes, work: Path) -> tuple[bytes, int]:
    (work / "b").write_bytes(basis)
    (work / "t").write_bytes(target)
    info = make_patch(work / "b", work / "t", work / "p")
    assert info.target_sha256 == hashlib.sha256(target).hexdigest()
    apply_patch(work / "b", work / "p", work / "out", expected_target=info.target_sha256)
    return (work / "out").read_bytes(), (work / "p").stat().st_size


@SETTINGS
@given(pairs(), st.sampled_from([None, 256, 512, 1024]))
def test_blocks_path_reproduces_target(pair: tuple[bytes, bytes], block_size: int | None
                                       ) -> None:
    basis, target = pair
    with tempfile.TemporaryDirectory() as tmp:
        assert blocks_roundtrip(basis, target, block_size, Path(tmp)) == target


@SETTINGS
@given(pairs())
def test_patch_path_reproduces_target(pair: tuple[bytes, bytes]) -> None:
    basis, target = pair
    with tempfile.TemporaryDirectory() as tmp:
        out, _ = patch_roundtrip(basis, target, Path(tmp))
        assert out == target


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pairs())
def test_segmented_patch_reproduces_target(pair: tuple[bytes, bytes]) -> None:
    """Small segment and prefix limits, so the segmenting code runs on small inputs."""
    basis, target = pair
    saved = (delta_patch.SINGLE_LIMIT, delta_patch.SEGMENT, delta_patch.PREFIX_BUDGET,
             delta_patch.PAD, delta_patch.DIAGONAL)
    (delta_patch.SINGLE_LIMIT, delta_patch.SEGMENT, delta_patch.PREFIX_BUDGET,
     delta_patch.PAD, delta_patch.DIAGONAL) = (4096, 8192, 12288, 512, 1024)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out, _ = patch_roundtrip(basis, target, Path(tmp))
            assert out == target
    finally:
        (delta_patch.SINGLE_LIMIT, delta_patch.SEGMENT, delta_patch.PREFIX_BUDGET,
         delta_patch.PAD, delta_patch.DIAGONAL) = saved


def test_blocks_find_shifted_and_repeated_content(tmp_path: Path) -> None:
    base = _noise(64 * 1024, 1)
    basis = b"x" * 17 + base + bytes(200_000)
    target = base[:30_000] + bytes(100_000) + base[30_000:]
    assert blocks_roundtrip(basis, target, 1024, tmp_path) == target
    sig = compute_signature(tmp_path / "t", 1024)
    plan = plan_blocks(sig, match_basis(sig, tmp_path / "b"))
    # only the blocks straddling the edit points and the tail are fetched
    assert plan.payload_size <= 4 * 1024


def test_patch_is_near_the_limit_on_a_small_edit(tmp_path: Path) -> None:
    basis = _noise(500_000, 3)
    target = basis[:200_000] + b"new bytes" + basis[200_000:]
    out, size = patch_roundtrip(basis, target, tmp_path)
    assert out == target and size < 2000


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257])
def test_tiny_files(tmp_path: Path, n: int) -> None:
    data = _noise(n, n)
    assert blocks_roundtrip(data[::-1], data, 256, tmp_path) == data
