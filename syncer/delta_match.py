"""Find, in a basis file of any size, the blocks of a target signature; plan and assemble.

The basis is memory-mapped and processed in windows of ``WINDOW`` bytes, so memory stays bounded
whatever its size. In each window:

1. *Phase check*: the block-aligned offsets at the phase of the last match (offset mod block
   size) are hashed as whole blocks, vectorised. In a file system image or an unchanged region
   almost everything matches here, including long zero runs, and nothing else is done.
2. *Rolling search* over the gaps that the phase check left: the weak hash of every offset comes
   from one cumulative sum (NumPy); a bitmap and a sorted table cut that to the candidates whose
   weak hash is in the signature; the greedy scan then moves from match to match in Python (it
   searches the sorted candidate offsets for the next one at or after the end of the last
   match), checking the strong hash of each candidate it visits.

The result says, for every unique target block, at which basis offset it was found (or -1).
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import xxhash

from syncer.delta_signature import Signature, block_weak, rolling_weak

WINDOW = 1 << 20
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class MatchResult:
    source: I64  # per unique block: basis offset where it was found, or -1
    basis_size: int

    @property
    def found_unique(self) -> int:
        return int(np.count_nonzero(self.source >= 0))


@dataclass(frozen=True)
class BlockPlan:
    """What to fetch: target ranges (offset, length) whose concatenation is the payload."""

    ranges: tuple[tuple[int, int], ...]
    fetch_blocks: tuple[int, ...]  # target block indices whose bytes are in the payload, in order
    payload_size: int
    reused_bytes: int  # target bytes taken from the basis


class _Table:
    """Weak-hash lookup: a 2**24-bit prefilter plus weak -> unique ids."""

    def __init__(self, sig: Signature) -> None:
        self.sig = sig
        self.bitmap = np.zeros(1 << 24, dtype=np.bool_)
        self.bitmap[sig.weak >> np.uint32(8)] = True
        self.sorted_weak = np.unique(sig.weak)
        self.by_weak: dict[int, list[int]] = {}
        for uid, w in enumerate(sig.weak.tolist()):
            self.by_weak.setdefault(w, []).append(uid)

    def hits(self, weaks: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp]:
        """Indices i with weaks[i] in the signature."""
        pre = np.flatnonzero(self.bitmap[weaks >> np.uint32(8)])
        if pre.size == 0 or self.sorted_weak.size == 0:
            return pre
        cand = weaks[pre]
        pos = np.searchsorted(self.sorted_weak, cand)
        pos[pos >= self.sorted_weak.size] = 0
        return pre[self.sorted_weak[pos] == cand]


def match_basis(sig: Signature, basis: Path,
                progress: Callable[[int], None] | None = None) -> MatchResult:
    """Locate the signature's unique blocks in ``basis`` (see module docstring)."""
    n_unique = len(sig.strong)
    source = np.full(n_unique, -1, dtype=np.int64)
    size = basis.stat().st_size
    L = sig.block_size
    if n_unique == 0 or size < L:
        return MatchResult(source, size)
    table = _Table(sig)
    strong = sig.strong
    slen = sig.strong_len
    last_offset = size - L  # the last offset where a whole block starts
    with open(basis, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            pos = 0  # next offset allowed to start a match
            phase = 0
            for w0 in range(0, last_offset + 1, WINDOW):
                w1 = min(w0 + WINDOW, last_offset + 1)  # offsets [w0, w1)
                start = max(w0, pos)
                if start >= w1:
                    continue

                def verify(k: int, w: int) -> bool:
                    uids = table.by_weak.get(w)
                    if not uids:
                        return False
                    digest = xxhash.xxh3_128_digest(view[k:k + L])[:slen]
                    hit = False
                    for uid in uids:
                        if strong[uid] == digest:
                            hit = True
                            if source[uid] < 0:
                                source[uid] = k
                    return hit

                # 1. phase check on aligned offsets
                a0 = start + ((phase - start) % L)
                matched: list[int] = []
                if a0 < w1:
                    count = (w1 - 1 - a0) // L + 1
                    rows = np.frombuffer(mm, dtype=np.uint8, count=count * L, offset=a0)
                    weaks = block_weak(rows.reshape(count, L))
                    for i in table.hits(weaks).tolist():
                        k = a0 + i * L
                        if verify(k, int(weaks[i])):
                            matched.append(k)
                # 2. rolling search over the gaps between aligned matches
                gaps: list[tuple[int, int]] = []
                cursor = start
                for k in matched:
                    if k > cursor:
                        gaps.append((cursor, k))
                    cursor = max(cursor, k + L)
                if cursor < w1:
                    gaps.append((cursor, w1))
                last_match = matched[-1] if matched else -1
                for g0, g1 in gaps:
                    g0 = max(g0, pos)
                    if g0 >= g1:
                        continue
                    data = np.frombuffer(mm, dtype=np.uint8, count=g1 + L - 1 - g0, offset=g0)
                    weaks = rolling_weak(data, L)
                    cand = table.hits(weaks)
                    if cand.size == 0:
                        continue
                    idx = 0
                    n_cand = cand.size
                    while idx < n_cand:
                        rel = int(cand[idx])
                        k = g0 + rel
                        if verify(k, int(weaks[rel])):
                            last_match = k
                            pos = k + L
                            idx = int(np.searchsorted(cand, rel + L, side="left"))
                        else:
                            idx += 1
                if matched and matched[-1] + L > pos:
                    pos = matched[-1] + L
                if last_match >= 0:
                    phase = last_match % L
                    pos = max(pos, last_match + L)
                if progress is not None:
                    progress(w1 - w0)
        finally:
            del view
            _close_quietly(mm)
    return MatchResult(source, size)


def plan_blocks(sig: Signature, match: MatchResult) -> BlockPlan:
    """Ranges to fetch: one copy of each unique block not found, plus the tail, merged."""
    L = sig.block_size
    missing = match.source < 0
    fetch: list[int] = []
    if sig.n_blocks:
        first_seen = np.full(len(sig.strong), -1, dtype=np.int64)
        bm = sig.block_map
        # first occurrence of each unique id: ids are assigned in order of first occurrence
        order = np.flatnonzero(np.r_[True, bm[1:] > np.maximum.accumulate(bm)[:-1]])
        first_seen[bm[order]] = order
        fetch = sorted(int(first_seen[u]) for u in np.flatnonzero(missing).tolist())
    ranges: list[tuple[int, int]] = []
    for b in fetch:
        off = b * L
        if ranges and ranges[-1][0] + ranges[-1][1] == off:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + L)
        else:
            ranges.append((off, L))
    if sig.tail_size:
        off = sig.tail_offset
        if ranges and ranges[-1][0] + ranges[-1][1] == off:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + sig.tail_size)
        else:
            ranges.append((off, sig.tail_size))
    payload = sum(length for _, length in ranges)
    return BlockPlan(tuple(ranges), tuple(fetch), payload, sig.target_size - payload)


def assemble(sig: Signature, match: MatchResult, plan: BlockPlan, basis: Path,
             payload: Path, out: Path) -> str:
    """Write the target to ``out`` (a new file) from basis blocks and the payload; sha256 hex.

    ``payload`` holds the bytes of ``plan.ranges``, concatenated.
    """
    L = sig.block_size
    if payload.stat().st_size != plan.payload_size:
        raise ValueError(f"payload is {payload.stat().st_size} bytes, plan says "
                         f"{plan.payload_size}")
    payload_pos: dict[int, int] = {}
    for i, b in enumerate(plan.fetch_blocks):
        payload_pos[int(sig.block_map[b])] = i * L
    digest = hashlib.sha256()
    src_list = match.source.tolist()
    bm = sig.block_map.tolist()
    with open(payload, "rb") as pf, open(out, "xb") as of:
        pm = mmap.mmap(pf.fileno(), 0, access=mmap.ACCESS_READ) if plan.payload_size else None
        bf = open(basis, "rb")
        try:
            bsize = basis.stat().st_size
            bmm = mmap.mmap(bf.fileno(), 0, access=mmap.ACCESS_READ) if bsize else None
            try:
                pview = memoryview(pm) if pm is not None else memoryview(b"")
                bview = memoryview(bmm) if bmm is not None else memoryview(b"")
                buf = bytearray()
                for uid in bm:
                    src = src_list[uid]
                    if src >= 0:
                        buf += bview[src:src + L]
                    else:
                        p = payload_pos[uid]
                        buf += pview[p:p + L]
                    if len(buf) >= 1 << 22:
                        digest.update(buf)
                        of.write(buf)
                        buf.clear()
                if sig.tail_size:
                    buf += pview[plan.payload_size - sig.tail_size:plan.payload_size]
                digest.update(buf)
                of.write(buf)
                of.flush()
                del pview, bview
            finally:
                if bmm is not None:
                    bmm.close()
                if pm is not None:
                    pm.close()
        finally:
            bf.close()
    return digest.hexdigest()


def _close_quietly(mm: mmap.mmap) -> None:
    """Close a map; if NumPy views of it are still alive, the map goes with the last of them."""
    try:
        mm.close()
    except BufferError:
        pass
