"""`distro-sync delta URL --basis FILE -o OUT`: fetch a blob as a delta against a local file."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from syncer.delta_client import DeltaClient, DeltaError, DeltaPath, DeltaResult


def _human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1000
    return f"{n} B"


async def _fetch(args: argparse.Namespace) -> DeltaResult:
    path: DeltaPath = args.path
    async with DeltaClient() as client:
        return await client.fetch(args.url, args.basis, args.output, path=path,
                                  block_size=args.block_size, basis_sha256=args.basis_sha256)


def run(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_fetch(args))
    except DeltaError as exc:
        print(f"distro-sync delta: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{result.path}: {result.size} bytes, sha256 {result.sha256}, via {result.method}")
    print(f"bytes received {result.bytes_received} ({_human(result.bytes_received)}), "
          f"bytes sent {result.bytes_sent} ({_human(result.bytes_sent)}), "
          f"total {result.wire_bytes}, requests {result.requests}, "
          f"reused from basis {result.reused_bytes}, resumed {result.resumed_bytes}, "
          f"{result.seconds:.2f} s")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("delta", help="fetch a blob from a node as a delta against a local file",
                       description="Fetch URL (…/delta/v1/blobs/<sha256>) into OUT using the "
                                   "bytes of FILE; prints the bytes moved both ways.")
    p.add_argument("url", help="blob URL on a node: http://HOST:PORT/delta/v1/blobs/<sha256>")
    p.add_argument("--basis", type=Path, help="the old version (or any related file) held here")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the blob")
    p.add_argument("--path", choices=("auto", "patch", "blocks"), default="auto",
                   help="auto: patch if the node has the basis, else block match (default)")
    p.add_argument("--block-size", type=int, default=None,
                   help="signature block size for the block path (default: chosen by size)")
    p.add_argument("--basis-sha256", default=None,
                   help="sha256 of the basis, if known (saves hashing it)")
    p.set_defaults(func=run)
