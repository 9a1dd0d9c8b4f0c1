"""`distro-sync`: the operator's command line.

Each subcommand lives in its own module with `register(subparsers)` that adds its parser and
sets `func` (called with the parsed arguments, returning the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMAND_MODULES = (
    "syncer.demo.cmd",
    "syncer.cmd_resolve",
    "syncer.cmd_delta",
    "syncer.cmd_fleet",
)
# Commands whose module is known without importing the others: `distro-sync resolve` runs
# once per request, so it does not pay for the fleet client's imports (aiohttp, rich).
_ONLY = {"resolve": "syncer.cmd_resolve", "delta": "syncer.cmd_delta", "demo": "syncer.demo.cmd"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with only ``command``'s when it has its own
    module (the others are then not imported)."""
    parser = argparse.ArgumentParser(prog="distro-sync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = (_ONLY[command],) if command in _ONLY else SUBCOMMAND_MODULES
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue  # subcommand not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list else None
    args = build_parser(command).parse_args(args_list)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
