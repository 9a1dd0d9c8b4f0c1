"""`distro-sync`: the operator's command line.

Each subcommand lives in its own module with `register(subparsers)` that adds its parser and
sets `func` (called with the parsed arguments, returning the exit code). `--help` speaks to
operators (what to run, in which order), not about the code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

DESCRIPTION = """\
Pre-warm and watch the regional caches of an edgedepot fleet, and point sites at them.

Everything starts from an inventory file (TOML) that names the origin, the regions with
their cache nodes, the site profiles (apt packages, pip requirements, images) and the sites.
"""

EPILOG = """\
typical day:
  distro-sync plan fleet.toml              what each region needs, and what it already holds
  distro-sync push fleet.toml              make every region pull its plan (progress bars)
  distro-sync status fleet.toml --watch    progress, failures and unreachable nodes
  distro-sync sync fleet.toml              bring every region's indexes up to date (by delta)
  distro-sync console fleet.toml --listen 0.0.0.0:8090
                                           live web view of the fleet for the whole team
  distro-sync site-config fleet.toml site-001 > bootstrap.sh
                                           the script that points a new site at its region

exit status: 0 all good, 1 something in the fleet needs attention (a node unreachable or a
plan failed: the output says which), 2 the inventory or the command line is wrong.
The inventory format is described in the README ("The operator's CLI") and at the top of
syncer/inventory.py. Run `distro-sync COMMAND --help` for a command's options.
"""

SUBCOMMAND_MODULES = (
    "syncer.demo.cmd",
    "syncer.cmd_resolve",
    "syncer.cmd_delta",
    "syncer.cmd_fleet",
    "syncer.cmd_console",
)
# Commands whose module is known without importing the others: `distro-sync resolve` runs
# once per request, so it does not pay for the fleet client's imports (aiohttp, rich).
_ONLY = {"resolve": "syncer.cmd_resolve", "delta": "syncer.cmd_delta", "demo": "syncer.demo.cmd"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with only ``command``'s when it has its own
    module (the others are then not imported)."""
    parser = argparse.ArgumentParser(prog="distro-sync", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")
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
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return quiet_broken_pipe()


def quiet_broken_pipe() -> int:
    """The reader went away (`distro-sync plan ... | head`): stop quietly, as `cat` does. Any
    output still buffered goes to /dev/null, so the interpreter's final flush cannot raise
    again, and the exit status is the shell's for SIGPIPE (128 + 13)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
