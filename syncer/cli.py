"""`distro-sync`: the operator's command line (demo now; plan/push/status/sync in later issues)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distro-sync")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="self-contained demonstration: origin, cache, 10 apt clients")
    demo.add_argument("--workdir", type=Path, help="keep the demo's files here (default: temp)")
    demo.add_argument("--clients", type=int, default=10)
    demo.add_argument("--packages", type=int, default=40)
    demo.add_argument("--total-mb", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from syncer.demo import run_demo
        return run_demo(args.workdir, clients=args.clients, n_packages=args.packages,
                        total_bytes=int(args.total_mb * 1_000_000))
    return 2


if __name__ == "__main__":
    sys.exit(main())
