"""Known-basis patches: the target compressed with zstd against the basis as a raw prefix.

zstd with the basis as a *prefix* (what ``zstd --patch-from`` does), long-distance matching on,
and a window covering prefix and target, reaches the physical limit of a delta. Holding a 1 GiB
pair in memory is not an option, so the target is cut into segments (256 KiB, doubling up to
``SEGMENT`` bytes each: a client serves the first bytes after a small first frame) and each
is compressed against its own prefix: the basis regions where the segment's blocks were found by
the block matcher (plus padding), and the same region of the basis (the "diagonal"), within a
``PREFIX_BUDGET``. A pair small enough for memory is one segment against the whole basis.

Container (integers little endian)::

    b"EDPAT" u16 version  32s target_sha256  u64 target_size  32s basis_sha256  u64 basis_size
    u32 n_segments
    per segment: u64 target_offset  u64 target_len  u32 n_ranges  (u64 off, u64 len)*n_ranges
                 u64 frame_len  frame (a zstd frame with content checksum)

The prefix of a segment is the concatenation of its basis ranges. Applying checks every length
and offset, every frame's checksum, and the sha256 of the whole result.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from backports import zstd

from distro.digests import file_sha256
from syncer.delta_io import FileSink, Sink
from syncer.delta_match import close_quietly, drop_pages, match_basis
from syncer.delta_signature import Signature, compute_signature

MAGIC = b"EDPAT"
VERSION = 1
_HEADER = struct.Struct("<5sH32sQ32sQI")
_SEG = struct.Struct("<QQI")
_RANGE = struct.Struct("<QQ")
_LEN = struct.Struct("<Q")

SINGLE_LIMIT = 96 << 20  # basis + target up to this: one segment against the whole basis
SEGMENT = 16 << 20
FIRST_SEGMENT = 32 << 10  # segments ramp up 32 KiB, 64 KiB, ... 16 MiB: the first bytes of
                          # a target are rebuilt (and served) after a frame of a few kB, which
                          # crosses a slow link as soon as the first packets of a whole fetch
PREFIX_BUDGET = 48 << 20
PAD = 64 << 10  # around each basis region a segment's blocks came from
DIAGONAL = 1 << 20
LEVEL = 5  # segmented pairs: as small as level 9 here, twice as fast
SMALL_LEVEL = 12  # one-segment pairs (indexes): the text between matches matters more
MAX_WINDOW_LOG = 31
MIN_PREFIX = 8  # zstd refuses shorter raw dictionaries


class PatchError(ValueError):
    """A patch is malformed, of another version, for another pair, or does not reproduce."""


@dataclass(frozen=True)
class PatchInfo:
    target_sha256: str
    target_size: int
    basis_sha256: str
    basis_size: int
    segments: int


@dataclass(frozen=True)
class SegmentPlan:
    target_offset: int
    target_len: int
    ranges: tuple[tuple[int, int], ...]


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    spans.sort()
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def plan_segments(basis_size: int, target_size: int, sig: Signature | None,
                  source: np.ndarray | None) -> list[SegmentPlan]:
    """Cut the target into segments and choose each one's basis prefix ranges."""
    if target_size == 0:
        return []
    if basis_size + target_size <= SINGLE_LIMIT:
        whole = ((0, basis_size),) if basis_size >= MIN_PREFIX else ()
        return [SegmentPlan(0, target_size, whole)]
    plans: list[SegmentPlan] = []
    L = sig.block_size if sig is not None else 4096
    for t0, t1 in _segment_bounds(target_size):
        weighted: list[tuple[int, int, int]] = []  # (blocks, start, end)
        if sig is not None and source is not None and sig.n_blocks:
            b0, b1 = t0 // L, min(t1 // L, sig.n_blocks)
            src = source[sig.block_map[b0:b1]]
            src = np.sort(src[src >= 0])
            if src.size:
                spans = _merge([(max(0, s - PAD), min(basis_size, s + L + PAD))
                                for s in np.unique(src // PAD * PAD).tolist()])
                starts = np.array([a for a, _ in spans], dtype=np.int64)
                counts = np.bincount(np.searchsorted(starts, src, side="right") - 1,
                                     minlength=len(spans))
                weighted = [(int(c), a, b) for c, (a, b) in zip(counts.tolist(), spans,
                                                               strict=True)]
        diag = (max(0, t0 - DIAGONAL), min(basis_size, t1 + DIAGONAL))
        chosen: list[tuple[int, int]] = []
        budget = PREFIX_BUDGET
        if diag[1] > diag[0]:
            weighted.append((1 << 40, diag[0], diag[1]))  # the diagonal first
        for _, a, b in sorted(weighted, key=lambda w: -w[0]):
            for ca, cb in chosen:  # trim overlap with what is chosen already
                if ca <= a < cb:
                    a = cb
                if ca < b <= cb:
                    b = ca
            if b <= a:
                continue
            take = min(b - a, budget)
            if take <= 0:
                break
            chosen.append((a, a + take))
            budget -= take
        ranges = tuple((a, b - a) for a, b in _merge(chosen))
        if sum(length for _, length in ranges) < MIN_PREFIX:
            ranges = ()
        plans.append(SegmentPlan(t0, t1 - t0, ranges))
    return plans


def _segment_bounds(target_size: int) -> list[tuple[int, int]]:
    bounds: list[tuple[int, int]] = []
    t0 = 0
    step = min(FIRST_SEGMENT, SEGMENT)
    while t0 < target_size:
        t1 = min(t0 + step, target_size)
        bounds.append((t0, t1))
        t0 = t1
        step = min(step * 2, SEGMENT)
    return bounds


def _read_ranges(view: memoryview, ranges: tuple[tuple[int, int], ...]) -> bytes:
    if len(ranges) == 1:
        off, length = ranges[0]
        return bytes(view[off:off + length])
    return b"".join(view[off:off + length] for off, length in ranges)


def _prefix_dict(view: memoryview, ranges: tuple[tuple[int, int], ...]) -> zstd.ZstdDict:
    return zstd.ZstdDict(_read_ranges(view, ranges), is_raw=True)


def _window_log(total: int) -> int:
    return max(20, min(MAX_WINDOW_LOG, (max(total, 1) - 1).bit_length()))


def compress_segment(prefix: bytes, data: bytes, level: int = LEVEL) -> bytes:
    CP = zstd.CompressionParameter
    options: dict[int, int] = {
        CP.compression_level: level,
        CP.window_log: _window_log(len(prefix) + len(data)),
        CP.enable_long_distance_matching: 1,
        CP.checksum_flag: 1,
    }
    if len(prefix) >= MIN_PREFIX:
        zdict = zstd.ZstdDict(prefix, is_raw=True)
        del prefix
        comp = zstd.ZstdCompressor(options=options, zstd_dict=zdict.as_prefix)
    else:
        comp = zstd.ZstdCompressor(options=options)
    return comp.compress(data, zstd.ZstdCompressor.FLUSH_FRAME)


def make_patch(basis: Path, target: Path, out: Path, *, basis_sha256: str | None = None,
               target_sig: Signature | None = None, level: int | None = None) -> PatchInfo:
    """Write a patch that turns ``basis`` into ``target`` to ``out`` (a new file)."""
    basis_size = basis.stat().st_size
    target_size = target.stat().st_size
    sig: Signature | None = None
    source = None
    if basis_size + target_size > SINGLE_LIMIT:
        sig = target_sig if target_sig is not None else compute_signature(target)
        source = match_basis(sig, basis).source
    plans = plan_segments(basis_size, target_size, sig, source)
    if level is None:
        level = SMALL_LEVEL if len(plans) <= 1 else LEVEL
    bsha = basis_sha256 or file_sha256(basis)
    tsha = hashlib.sha256()
    with open(basis, "rb") as bf, open(target, "rb") as tf, open(out, "xb") as of:
        bmm = mmap.mmap(bf.fileno(), 0, access=mmap.ACCESS_READ) if basis_size else None
        try:
            bview = memoryview(bmm) if bmm is not None else memoryview(b"")
            of.write(_HEADER.pack(MAGIC, VERSION, bytes(32), target_size, bytes.fromhex(bsha),
                                  basis_size, len(plans)))
            for plan in plans:
                data = tf.read(plan.target_len)
                tsha.update(data)
                frame = compress_segment(_read_ranges(bview, plan.ranges), data, level)
                of.write(_SEG.pack(plan.target_offset, plan.target_len, len(plan.ranges)))
                for off, length in plan.ranges:
                    of.write(_RANGE.pack(off, length))
                of.write(_LEN.pack(len(frame)))
                of.write(frame)
                del data, frame
                drop_pages(bmm, 0, basis_size)
            del bview
        finally:
            if bmm is not None:
                close_quietly(bmm)
        digest = tsha.hexdigest()
        of.seek(0)
        of.write(_HEADER.pack(MAGIC, VERSION, bytes.fromhex(digest), target_size,
                              bytes.fromhex(bsha), basis_size, len(plans)))
    return PatchInfo(digest, target_size, bsha, basis_size, len(plans))


class _Reader(Protocol):
    def read(self, n: int) -> bytes: ...


def read_patch_info(fh: _Reader) -> PatchInfo:
    raw = fh.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        raise PatchError("patch truncated in its header")
    magic, version, tsha, tsize, bsha, bsize, nseg = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise PatchError("not an edgedepot patch")
    if version != VERSION:
        raise PatchError(f"patch format version {version}, this client reads {VERSION}")
    return PatchInfo(tsha.hex(), tsize, bsha.hex(), bsize, nseg)


def _read_exact(fh: _Reader, n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise PatchError(f"patch truncated in {what}")
    return data


def _segment_header(fh: _Reader, info: PatchInfo, expected: int) -> tuple[SegmentPlan, int]:
    toff, tlen, nr = _SEG.unpack(_read_exact(fh, _SEG.size, "a segment header"))
    if toff != expected or tlen <= 0 or toff + tlen > info.target_size or nr > 1 << 16:
        raise PatchError("patch segment header is inconsistent")
    ranges = tuple(_RANGE.unpack(_read_exact(fh, _RANGE.size, "a range")) for _ in range(nr))
    for off, length in ranges:
        if off + length > info.basis_size:
            raise PatchError("patch refers beyond the end of the basis")
    (flen,) = _LEN.unpack(_read_exact(fh, _LEN.size, "a frame length"))
    if flen > 2 * tlen + (1 << 20):
        raise PatchError("patch frame length is implausible")
    return SegmentPlan(toff, tlen, ranges), flen


def apply_patch_stream(basis: Path, fh: _Reader, sink: Sink, *, skip: int = 0,
                       expected_target: str | None = None,
                       expected_basis: str | None = None,
                       at_end: Callable[[], bool] | None = None) -> PatchInfo:
    """Rebuild the target from a patch read from ``fh`` (which may still be arriving) into
    ``sink``, from target byte ``skip`` on. Each segment goes to the sink only after its frame
    decoded completely (its content checksum verified), so the sink never receives bytes a
    broken patch or a rotten basis made. The caller checks the target's sha256."""
    basis_size = basis.stat().st_size
    info = read_patch_info(fh)
    if expected_target is not None and info.target_sha256 != expected_target:
        raise PatchError(f"patch produces {info.target_sha256}, not {expected_target}")
    if expected_basis is not None and info.basis_sha256 != expected_basis:
        raise PatchError(f"patch applies to basis {info.basis_sha256}, not {expected_basis}")
    if info.basis_size != basis_size:
        raise PatchError(f"patch wants a basis of {info.basis_size} bytes, "
                         f"this one has {basis_size}")
    with open(basis, "rb") as bf:
        bmm = mmap.mmap(bf.fileno(), 0, access=mmap.ACCESS_READ) if basis_size else None
        try:
            bview = memoryview(bmm) if bmm is not None else memoryview(b"")
            expected = 0
            for _ in range(info.segments):
                plan, flen = _segment_header(fh, info, expected)
                expected = plan.target_offset + plan.target_len
                if expected <= skip:  # rebuilt by an earlier, interrupted run
                    _discard(fh, flen)
                    continue
                data = _decode_segment(bview, plan, fh, flen)
                start = max(0, skip - plan.target_offset)
                sink.write(memoryview(data)[start:])
                del data
                drop_pages(bmm, 0, basis_size)
            del bview
        finally:
            if bmm is not None:
                close_quietly(bmm)
    if expected != info.target_size:
        raise PatchError("patch segments do not cover the target")
    if at_end is not None and not at_end():
        raise PatchError("patch has trailing bytes")
    return info


def _discard(fh: _Reader, n: int) -> None:
    while n:
        got = len(fh.read(min(n, 1 << 20)))
        if not got:
            raise PatchError("patch truncated in a frame")
        n -= got


def _decode_segment(bview: memoryview, plan: SegmentPlan, fh: _Reader, flen: int) -> bytes:
    opts: dict[int, int] = {zstd.DecompressionParameter.window_log_max: MAX_WINDOW_LOG}
    if sum(length for _, length in plan.ranges) >= MIN_PREFIX:
        zdict = _prefix_dict(bview, plan.ranges)
        dec = zstd.ZstdDecompressor(zstd_dict=zdict.as_prefix, options=opts)
        del zdict
    else:
        dec = zstd.ZstdDecompressor(options=opts)
    parts: list[bytes] = []
    got = 0
    left = flen
    try:
        while left:  # the frame arrives in pieces: decode as it comes
            chunk = fh.read(min(left, 1 << 16))
            if not chunk:
                raise PatchError("patch truncated in a frame")
            left -= len(chunk)
            out = dec.decompress(chunk)
            got += len(out)
            if got > plan.target_len:
                raise PatchError(f"patch segment at {plan.target_offset} decodes to more than "
                                 f"{plan.target_len} bytes")
            parts.append(out)
    except zstd.ZstdError as exc:
        raise PatchError(f"patch segment at {plan.target_offset} is corrupt: {exc}") from exc
    if not dec.eof or got != plan.target_len:
        raise PatchError(f"patch segment at {plan.target_offset} decodes to {got} bytes, "
                         f"expected {plan.target_len}")
    return b"".join(parts)


def apply_patch(basis: Path, patch: Path, out: Path, *, expected_target: str | None = None,
                expected_basis: str | None = None) -> PatchInfo:
    """Rebuild the target into ``out`` (a new file); verified, or ``out`` removed and raise."""
    sink = FileSink(out)
    try:
        with open(patch, "rb") as pf:
            info = apply_patch_stream(basis, pf, sink, expected_target=expected_target,
                                      expected_basis=expected_basis,
                                      at_end=lambda: not pf.read(1))
        sink.close()
        if sink.hexdigest() != info.target_sha256:
            raise PatchError("patched result does not match the target sha256")
    except BaseException:
        sink.close()
        out.unlink(missing_ok=True)
        raise
    return info
