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

Then `plan_blocks` lists the blocks to fetch; `edge_blocks` and `refine` run the second, finer
round (sub-block hashes of the blocks at the edges of each run of missing blocks, checked where
the run's neighbours say they would be, so an edit that straddles two blocks costs its own bytes,
not two blocks); `make_recipe` turns all that into the pieces of the target and the ranges to
fetch; `write_target` writes the target from the basis and the payload, while the payload is
still arriving.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import xxhash

from syncer.delta_io import FileSink, GrowingFile, Sink
from syncer.delta_signature import (
    Signature,
    SubHashes,
    block_weak,
    rolling_weak,
    sub_block_size,
)

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


# -- the second, finer round --------------------------------------------------------------------

@dataclass(frozen=True)
class EdgeBlocks:
    """The fetched blocks at the edges of each run of missing blocks, with where in the basis
    each would start if the run's neighbours continued into it (-1: no such neighbour): what
    to ask sub-block hashes for, and where to check them."""

    blocks: tuple[int, ...]  # target block indices, ascending
    left: tuple[int, ...]  # basis offset of the block's start, continuing the block before the run
    right: tuple[int, ...]  # basis offset of the block's start, leading up to the block after it
    sub_block: int
    block_size: int

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The blocks as merged target ranges (the body of the hash request)."""
        return _merged([(b * self.block_size, self.block_size) for b in self.blocks])

    @property
    def count(self) -> int:
        """Sub-block hashes the request asks for."""
        return len(self.blocks) * (self.block_size // self.sub_block)


def _merged(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for off, length in spans:
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + length)
        else:
            out.append((off, length))
    return tuple(out)


def edge_blocks(sig: Signature, match: MatchResult, plan: BlockPlan) -> EdgeBlocks:
    """Which fetched blocks a sub-block round could partly recover (see `EdgeBlocks`)."""
    L = sig.block_size
    sub = sub_block_size(L)
    if sig.n_blocks == 0 or not plan.fetch_blocks or 2 * sub > L:
        return EdgeBlocks((), (), (), sub, L)
    block_src = match.source[sig.block_map]
    missing = np.r_[False, block_src < 0, False].astype(np.int8)
    edges = np.flatnonzero(np.diff(missing))
    starts, ends = edges[::2].tolist(), edges[1::2].tolist()  # runs [a, b) of missing blocks
    fetched = set(plan.fetch_blocks)
    src = block_src.tolist()
    n = sig.n_blocks
    blocks: list[int] = []
    left: list[int] = []
    right: list[int] = []
    for a, b in zip(starts, ends, strict=True):
        p = src[a - 1] + L if a > 0 else -1
        q = src[b] if b < n else -1
        for j in sorted({a, b - 1}):
            if j in fetched:
                blocks.append(j)
                left.append(p + (j - a) * L if p >= 0 else -1)
                right.append(q - (b - j) * L if q >= 0 and q - (b - j) * L >= 0 else -1)
    return EdgeBlocks(tuple(blocks), tuple(left), tuple(right), sub, L)


def refine(edges: EdgeBlocks, sub: SubHashes, basis: Path) -> dict[int, list[tuple[int, int]]]:
    """Per edge block: (offset in the block, basis offset) of each sub-block found in the
    basis at one of its two candidate offsets (the block's hashes in ``sub``, in order)."""
    L = edges.block_size
    s = edges.sub_block
    per_block = L // s
    found: dict[int, list[tuple[int, int]]] = {}
    size = basis.stat().st_size
    if size == 0 or sub.count != len(edges.blocks) * per_block:
        return found
    with open(basis, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = memoryview(mm)
        try:
            hlen = sub.hash_len
            for i, block in enumerate(edges.blocks):
                hits: list[tuple[int, int]] = []
                for k in range(per_block):
                    want = sub.get(i * per_block + k)
                    for base in (edges.left[i], edges.right[i]):
                        at = base + k * s
                        if base < 0 or at + s > size:
                            continue
                        if xxhash.xxh3_128_digest(view[at:at + s])[:hlen] == want:
                            hits.append((k * s, at))
                            break
                if hits:
                    found[block] = hits
        finally:
            view.release()
            close_quietly(mm)
    return found


# -- the recipe: how the target is written ---------------------------------------------------------

@dataclass(frozen=True)
class Recipe:
    """The target as pieces in order, each ``(length, source)``: a basis offset when
    ``source >= 0``, else payload offset ``-source - 1``. ``ranges`` are the target ranges whose
    bytes, concatenated, make the payload (what the ranges request asks for)."""

    target_size: int
    pieces: tuple[tuple[int, int], ...]
    ranges: tuple[tuple[int, int], ...]
    payload_size: int

    @property
    def reused_bytes(self) -> int:
        return self.target_size - self.payload_size


def make_recipe(sig: Signature, match: MatchResult, plan: BlockPlan,
                found: dict[int, list[tuple[int, int]]] | None = None,
                sub_block: int = 0) -> Recipe:
    """The recipe for a block plan, with the sub-blocks a finer round found (if any)."""
    L = sig.block_size
    found = found or {}
    ranges: list[tuple[int, int]] = []
    payload = 0
    composition: dict[int, list[tuple[int, int]]] = {}  # fetched block -> its pieces

    def fetch(off: int, length: int) -> int:
        nonlocal payload
        at = payload
        if ranges and ranges[-1][0] + ranges[-1][1] == off:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
        else:
            ranges.append((off, length))
        payload += length
        return -at - 1

    for b in plan.fetch_blocks:
        pieces: list[tuple[int, int]] = []
        pos = 0
        for rel, at in found.get(b, ()):
            if rel > pos:
                pieces.append((rel - pos, fetch(b * L + pos, rel - pos)))
            pieces.append((sub_block, at))
            pos = rel + sub_block
        if pos < L:
            pieces.append((L - pos, fetch(b * L + pos, L - pos)))
        composition[b] = pieces
    tail = fetch(sig.tail_offset, sig.tail_size) if sig.tail_size else 0

    out: list[list[int]] = []

    def put(length: int, source: int) -> None:
        if out:
            last = out[-1]
            if (source >= 0) == (last[1] >= 0):
                end = last[1] + last[0] if source >= 0 else last[1] - last[0]
                if end == source:
                    last[0] += length
                    return
        out.append([length, source])

    src = match.source.tolist()
    first = first_blocks(sig).tolist() if sig.n_blocks else []
    for uid in sig.block_map.tolist():
        where = src[uid]
        if where >= 0:
            put(L, where)
        else:
            for length, source in composition[first[uid]]:
                put(length, source)
    if sig.tail_size:
        put(sig.tail_size, tail)
    return Recipe(sig.target_size, tuple((a, b) for a, b in out), tuple(ranges), payload)


class PayloadSource(Protocol):
    def read_at(self, offset: int, n: int) -> bytes: ...


class BlockMismatch(ValueError):
    """A rebuilt block does not match the signature's hash of it (a false match, a basis
    that changed since it was matched, or a corrupt payload); nothing of it was written."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"the target block at {offset} rebuilt wrong")
        self.offset = offset


COPY_CHUNK = 1 << 20
PASS_ON = 1 << 16  # payload bytes arrive over time: pass them on in steps this small


def write_target(recipe: Recipe, basis: Path, payload: PayloadSource, sink: Sink,
                 skip: int = 0, verify: Signature | None = None) -> None:
    """Write the target from the basis and the payload to ``sink``, from byte ``skip`` on
    (what a resumed rebuild has already). The payload may still be arriving: reads wait.

    With ``verify`` (the target's signature), every full block is checked against its strong
    hash before it is written, so the sink only receives verified blocks (`BlockMismatch`
    otherwise); the tail is covered by the caller's sha256 check."""
    L = verify.block_size if verify is not None else 0
    full = verify.n_blocks * L if verify is not None else 0
    start = skip - skip % L if verify is not None and skip < full else skip
    out = _Verified(sink, skip, start, verify)
    bsize = basis.stat().st_size
    with open(basis, "rb") as bf:
        bmm = mmap.mmap(bf.fileno(), 0, access=mmap.ACCESS_READ) if bsize else None
        try:
            bview = memoryview(bmm) if bmm is not None else memoryview(b"")
            pos = 0  # target offset of the piece
            since_drop = 0
            for length, source in recipe.pieces:
                end = pos + length
                at = max(start, pos)
                while at < end:
                    n = min(end - at, COPY_CHUNK)
                    if source >= 0:
                        src = source + at - pos
                        out.add(bview[src:src + n])
                        since_drop += n
                    else:
                        out.add(payload.read_at(-source - 1 + at - pos, n))
                        if out.pending >= PASS_ON:
                            out.flush()
                    at += n
                    if out.pending >= COPY_CHUNK:
                        out.flush()
                    if since_drop >= 16 << 20:  # drop mapped pages behind us from RSS
                        drop_pages(bmm, 0, bsize)
                        since_drop = 0
                pos = end
            out.flush(final=True)
            del bview
        finally:
            if bmm is not None:
                close_quietly(bmm)


class _Verified:
    """Buffers target bytes from ``start`` on and passes them to the sink block by verified
    block (bytes before ``skip`` are dropped, not written)."""

    def __init__(self, sink: Sink, skip: int, start: int, sig: Signature | None) -> None:
        self.sink = sink
        self.skip = skip
        self.at = start  # target offset of buf[0]
        self.buf = bytearray()
        self.sig = sig
        self.L = sig.block_size if sig is not None else 0
        self.full = sig.n_blocks * self.L if sig is not None else 0
        self.block_map = sig.block_map if sig is not None else None

    @property
    def pending(self) -> int:
        return len(self.buf)

    def add(self, data: bytes | memoryview) -> None:
        self.buf += data

    def flush(self, final: bool = False) -> None:
        end = self.at + len(self.buf)
        ready = end
        if self.sig is not None and self.at < self.full:
            checked = min(end, self.full)
            checked -= (checked - self.at) % self.L  # whole blocks only
            self._check(checked)
            ready = checked if checked < self.full or end <= self.full else end
            if final and end > checked and ready < end and checked < self.full:
                raise BlockMismatch(checked)  # the target ended inside a block
        cut = ready - self.at
        if cut <= 0:
            return
        lo = max(0, self.skip - self.at)
        if lo < cut:
            self.sink.write(bytes(memoryview(self.buf)[lo:cut]))
        del self.buf[:cut]
        self.at = ready

    def _check(self, upto: int) -> None:
        assert self.sig is not None and self.block_map is not None
        L = self.L
        strong = self.sig.strong
        slen = self.sig.strong_len
        view = memoryview(self.buf)
        try:
            for block in range(self.at // L, upto // L):
                rel = block * L - self.at
                digest = xxhash.xxh3_128_digest(view[rel:rel + L])[:slen]
                if digest != strong[int(self.block_map[block])]:
                    raise BlockMismatch(block * L)
        finally:
            view.release()


def assemble(recipe: Recipe, basis: Path, payload: Path, out: Path,
             verify: Signature | None = None) -> str:
    """Write the target to ``out`` (a new file) from the basis and a complete payload file;
    its sha256 hex."""
    if payload.stat().st_size != recipe.payload_size:
        raise ValueError(f"payload is {payload.stat().st_size} bytes, plan says "
                         f"{recipe.payload_size}")
    source = GrowingFile(payload, complete=True)
    sink = FileSink(out)
    try:
        write_target(recipe, basis, source, sink, verify=verify)
    finally:
        sink.close()
        source.close()
    return sink.hexdigest()


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
