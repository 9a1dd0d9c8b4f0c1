"""`distro-sync demo`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def run(args: argparse.Namespace) -> int:
    from syncer.demo.run import run_demo

    return run_demo(args.workdir, clients=args.clients, n_packages=args.packages,
                    total_bytes=int(args.total_mb * 1_000_000))


def register(sub: Any) -> None:
    demo = sub.add_parser("demo", help="self-contained demonstration: origin, cache, site installs")
    demo.add_argument("--workdir", type=Path, help="keep the demo's files here (default: temp)")
    demo.add_argument("--clients", type=int, default=10, help="concurrent apt-get sites")
    demo.add_argument("--packages", type=int, default=40)
    demo.add_argument("--total-mb", type=float, default=20.0)
    demo.set_defaults(func=run)
