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
        found: npt.NDArray[np.intp] = pre[self.sorted_weak[pos] == cand]
        return found


def match_basis(sig: Signature, basis: Path,
                progress: Callable[[int], None] | None = None) -> MatchResult:
    """Locate the signature's unique blocks in ``basis`` (see module docstring)."""
    n_unique = len(sig.strong)
    source = np.full(n_unique, -1, dtype=np.int64)
    size = basis.stat().st_size
    L = sig.block_size
    if n_unique == 0 or size < L:
        return MatchResult(source, size)
    with open(basis, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        scan = _Scan(sig, _Table(sig), mm, progress)
        try:
            scan.run()
        finally:
            scan.view.release()
            close_quietly(mm)
        source[:] = scan.source
    return MatchResult(source, size)


def first_blocks(sig: Signature) -> I64:
    """Per unique block: the index of its first target block (ids are assigned in order of
    first occurrence, so those are the blocks where the map exceeds its running maximum)."""
    first = np.full(len(sig.strong), -1, dtype=np.int64)
    bm = sig.block_map
    if bm.size:
        order = np.flatnonzero(np.r_[True, bm[1:] > np.maximum.accumulate(bm)[:-1]])
        first[bm[order]] = order
    return first


class _Scan:
    """The greedy scan: after a match, the following basis blocks are checked against the
    following target blocks (one strong hash each: the sequence rule); where that breaks, the
    aligned blocks are checked against all signature blocks (weak + strong, vectorised, which
    keeps zero runs and repeated blocks fast), and where that breaks, the rolling search runs."""

    def __init__(self, sig: Signature, table: _Table, mm: mmap.mmap,
                 progress: Callable[[int], None] | None) -> None:
        self.sig = sig
        self.table = table
        self.mm = mm
        self.view = memoryview(mm)  # slices of a memoryview do not copy (mmap slices do)
        self.source: list[int] = [-1] * len(sig.strong)  # a list: faster per item than NumPy
        self.progress = progress
        self.L = sig.block_size
        self.n_offsets = len(mm) - self.L + 1  # offsets where a whole block starts
        self.block_map: list[int] = sig.block_map.tolist()
        self.first_block: list[int] = first_blocks(sig).tolist()
        self.next_block = -1  # target block expected at the next basis offset, or -1

    def verify(self, k: int, weak: int) -> int:
        """The unique block at offset k (recorded as found there), or -1."""
        uids = self.table.by_weak.get(weak)
        if not uids:
            return -1
        digest = xxhash.xxh3_128_digest(self.view[k:k + self.L])[:self.sig.strong_len]
        hit = -1
        for uid in uids:
            if self.sig.strong[uid] == digest:
                hit = uid
                if self.source[uid] < 0:
                    self.source[uid] = k
        return hit

    def _found(self, uid: int) -> None:
        self.next_block = self.first_block[uid] + 1

    def sequence_run(self, pos: int) -> int:
        """Blocks from ``pos`` that are the target's next blocks in order (strong hash only)."""
        j = self.next_block
        if j < 0:
            return 0
        L = self.L
        slen = self.sig.strong_len
        strong = self.sig.strong
        bm = self.block_map
        n_blocks = len(bm)
        view = self.view
        source = self.source
        run = 0
        k = pos
        stop = min(self.n_offsets, pos + 8 * WINDOW)  # return now and then: pages get dropped
        while j < n_blocks and k < stop:
            uid = bm[j]
            if xxhash.xxh3_128_digest(view[k:k + L])[:slen] != strong[uid]:
                break
            if source[uid] < 0:
                source[uid] = k
            j += 1
            k += L
            run += 1
        self.next_block = j if j < n_blocks else -1
        return run

    def aligned_run(self, pos: int, batch: int) -> int:
        """How many consecutive blocks starting at ``pos`` are signature blocks."""
        L = self.L
        count = min(batch, (self.n_offsets - 1 - pos) // L + 1)
        if count <= 0:
            return 0
        rows = np.frombuffer(self.mm, dtype=np.uint8, count=count * L, offset=pos)
        weaks = block_weak(rows.reshape(count, L)).tolist()
        del rows
        run = 0
        while run < count:
            uid = self.verify(pos + run * L, weaks[run])
            if uid < 0:
                break
            self._found(uid)
            run += 1
        return run

    def roll(self, pos: int, end: int) -> int:
        """First offset in [pos, end) where a block matches (recorded), or -1."""
        data = np.frombuffer(self.mm, dtype=np.uint8, count=end + self.L - 1 - pos, offset=pos)
        weaks = rolling_weak(data, self.L)
        cand = self.table.hits(weaks).tolist()
        found = -1
        for rel in cand:
            uid = self.verify(pos + rel, int(weaks[rel]))
            if uid >= 0:
                self._found(uid)
                found = pos + rel
                break
        del data, weaks
        return found

    def run(self) -> None:
        L = self.L
        pos = 0
        phase = 0
        batch = 16
        chunk = 4 * L
        dropped = 0
        while pos < self.n_offsets:
            if pos - dropped >= 8 * WINDOW:  # drop mapped pages behind us from RSS
                drop_pages(self.mm, 0, pos - WINDOW)
                if self.progress is not None:
                    self.progress(pos - dropped)
                dropped = pos
            if (pos - phase) % L == 0:
                run = self.sequence_run(pos)
                if run:
                    pos += run * L
                    continue
                run = self.aligned_run(pos, batch)
                if run:
                    pos += run * L
                    batch = min(batch * 2, 256)
                    continue
            batch = 16
            end = min(pos + chunk, self.n_offsets)
            found = self.roll(pos, end)
            if found >= 0:
                phase = found % L
                pos = found + L
                chunk = 4 * L
            else:
                pos = end
                chunk = min(chunk * 2, WINDOW)


def plan_blocks(sig: Signature, match: MatchResult) -> BlockPlan:
    """Ranges to fetch: one copy of each unique block not found, plus the tail, merged."""
    L = sig.block_size
    missing = match.source < 0
    fetch: list[int] = []
    if sig.n_blocks:
        first_seen = first_blocks(sig)
        fetch = sorted(int(first_seen[u]) for u in np.flatnonzero(missing).tolist())
    ranges: list[tuple[int, int]] = []

    def add(off: int, length: int) -> None:
        if ranges and ranges[-1][0] + ranges[-1][1] == off:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
        else:
            ranges.append((off, length))

    for b in fetch:
        add(b * L, L)
    if sig.tail_size:
        add(sig.tail_offset, sig.tail_size)
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
                written = 0
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
                        written += 1
                        if written % 4 == 0:  # every 16 MiB: drop mapped pages from RSS
                            drop_pages(bmm, 0, bsize)
                            drop_pages(pm, 0, plan.payload_size)
                if sig.tail_size:
                    buf += pview[plan.payload_size - sig.tail_size:plan.payload_size]
                digest.update(buf)
                of.write(buf)
                of.flush()
                del pview, bview
            finally:
                if bmm is not None:
                    close_quietly(bmm)
                if pm is not None:
                    close_quietly(pm)
        finally:
            bf.close()
    return digest.hexdigest()


def close_quietly(mm: mmap.mmap) -> None:
    """Close a map; if views of it are still alive (NumPy arrays, a traceback's frames), the map
    goes with the last of them."""
    try:
        mm.close()
    except BufferError:
        pass


def drop_pages(mm: mmap.mmap | None, start: int, end: int) -> None:
    """Tell the kernel this process no longer needs these mapped pages (they stay cached)."""
    if mm is None or end <= start:
        return
    page = mmap.PAGESIZE
    start -= start % page
    end = min(end, len(mm))
    if end > start:
        mm.madvise(mmap.MADV_DONTNEED, start, end - start)
