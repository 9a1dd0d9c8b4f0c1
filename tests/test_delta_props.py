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
from syncer.delta_match import (
    assemble,
    edge_blocks,
    make_recipe,
    match_basis,
    plan_blocks,
    refine,
)
from syncer.delta_patch import apply_patch, make_patch
from syncer.delta_signature import (
    compute_signature,
    compute_sub_hashes,
    decode_signature,
    decode_sub_hashes,
    encode_signature,
    encode_sub_hashes,
    sub_block_size,
)

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


@st.composite
def shifted_edits(draw: st.DrawFn) -> tuple[bytes, bytes, int, int, int]:
    """Aligned rewrites, then insertions/deletions, then a tail: whole blocks of the basis
    rewritten in place on its grid, small insertions and deletions (never a whole block) that
    shift everything after them, and new bytes at the end. Events are 3 blocks apart, so each
    makes its own run of missing blocks. Returns (basis, target, block size, bytes a perfect
    delta must fetch: rewritten + inserted + appended, number of edits)."""
    block = draw(st.sampled_from([256, 512, 1024, 4096]))
    slots = draw(st.integers(2, 10))  # groups of 6 blocks: a rewrite at 0, an ins/del at 3
    seed = draw(st.integers(0, 1 << 30))
    basis = _noise(slots * 6 * block + 2 * block + draw(st.integers(0, block - 1)), seed)
    target = bytearray(basis)
    new_bytes = 0
    rewrites = draw(st.sets(st.integers(0, slots - 1), min_size=1))
    shifts = draw(st.lists(st.tuples(st.integers(0, slots - 1), st.booleans(),
                                     st.integers(1, block - 1), st.integers(0, block - 1)),
                           min_size=1, max_size=slots, unique_by=lambda t: t[0]))
    for slot in rewrites:  # rewrites first, on the basis's grid
        at = slot * 6 * block
        target[at:at + block] = _noise(block, seed + 1 + slot)
        new_bytes += block
    for slot, insert, length, within in sorted(shifts, reverse=True):  # from the end: offsets
        at = (slot * 6 + 3) * block + within                          # stay the basis's
        if insert:
            target[at:at] = _noise(length, seed + 100 + slot)
            new_bytes += length
        else:
            del target[at:at + length]
    tail = draw(st.integers(0, 2 * block))
    target += _noise(tail, seed + 7)
    return basis, bytes(target), block, new_bytes + tail, len(rewrites) + len(shifts)


def blocks_roundtrip(basis: bytes, target: bytes, block_size: int | None, work: Path,
                     refined: bool = True) -> tuple[bytes, int]:
    """The target rebuilt by the block path (with the sub-block round when ``refined``), and
    the payload bytes it fetched."""
    for name in ("out", "payload"):
        (work / name).unlink(missing_ok=True)
    (work / "b").write_bytes(basis)
    (work / "t").write_bytes(target)
    sha = hashlib.sha256(target).hexdigest()
    sig = compute_signature(work / "t", block_size)
    sig = decode_signature(encode_signature(sig), sha)
    match = match_basis(sig, work / "b")
    plan = plan_blocks(sig, match)
    recipe = make_recipe(sig, match, plan)
    edges = edge_blocks(sig, match, plan)
    if refined and edges.blocks:
        served = compute_sub_hashes(work / "t", edges.ranges, edges.sub_block, sha)
        sub = decode_sub_hashes(encode_sub_hashes(served), sha, edges.sub_block, edges.count)
        refined_recipe = make_recipe(sig, match, plan, refine(edges, sub, work / "b"),
                                     edges.sub_block)
        assert refined_recipe.payload_size <= recipe.payload_size
        recipe = refined_recipe
    (work / "payload").write_bytes(b"".join(target[o:o + n] for o, n in recipe.ranges))
    digest = assemble(recipe, work / "b", work / "payload", work / "out")
    out = (work / "out").read_bytes()
    assert digest == hashlib.sha256(out).hexdigest()
    assert recipe.payload_size <= len(target)
    return out, recipe.payload_size


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
        assert blocks_roundtrip(basis, target, block_size, Path(tmp))[0] == target
        assert blocks_roundtrip(basis, target, block_size, Path(tmp), refined=False)[0] == target


@SETTINGS
@given(shifted_edits())
def test_shifted_edits_cost_their_own_bytes(case: tuple[bytes, bytes, int, int, int]
                                           ) -> None:
    """Edits on the basis's grid, shifted by earlier insertions, straddle two target blocks;
    the finer round fetches about the edit, not both blocks: at most the new bytes, two
    partial sub-blocks per edit, and the target's last partial block and the one before it
    (the run at the end has no block after it to anchor to)."""
    basis, target, block, new_bytes, edits = case
    with tempfile.TemporaryDirectory() as tmp:
        out, fetched = blocks_roundtrip(basis, target, block, Path(tmp))
        assert out == target
        bound = new_bytes + edits * 2 * sub_block_size(block) + 2 * block
        assert fetched <= bound, (fetched, bound)
        (Path(tmp) / "patch").mkdir()
        patched, _ = patch_roundtrip(basis, target, Path(tmp) / "patch")
        assert patched == target


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
    out, fetched = blocks_roundtrip(basis, target, 1024, tmp_path, refined=False)
    assert out == target
    # only the blocks straddling the edit points and the tail are fetched
    assert fetched <= 4 * 1024


def test_patch_is_near_the_limit_on_a_small_edit(tmp_path: Path) -> None:
    basis = _noise(500_000, 3)
    target = basis[:200_000] + b"new bytes" + basis[200_000:]
    out, size = patch_roundtrip(basis, target, tmp_path)
    assert out == target and size < 2000


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257])
def test_tiny_files(tmp_path: Path, n: int) -> None:
    data = _noise(n, n)
    assert blocks_roundtrip(data[::-1], data, 256, tmp_path)[0] == data
