"""`cache-node serve`, `cache-node fsck` and `cache-node keygen`.

Operator mistakes end in one line on stderr and a non-zero exit, never a traceback:
exit 2 for an invalid configuration (`config error: ...`), exit 1 when a valid configuration
cannot start here (`cannot listen on ...`, `cannot write to store directory ...`,
`signing key ... not found in GnuPG home ...`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from cache_node.admin_auth import startup_warning as admin_startup_warning
from cache_node.config import SETTINGS, ConfigError, ConfigSources, NodeConfig
from cache_node.keys import check_signing_key, format_fingerprint, generate_signing_key
from cache_node.lifecycle import Listeners, serve
from cache_node.startup import StartupError, check_store_dir
from cache_node.store import BlobStore
from cache_node.workers import run_workers
from distro.debian_repo import SigningKey

log = logging.getLogger("cache_node")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per entry of config.SETTINGS; values go to load_config as given, so a bad
    value is reported like any other config error (one line naming the key)."""
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration file")
    for s in SETTINGS:
        metavar = s.metavar or ("{" + ",".join(s.choices) + "}" if s.choices else None)
        if s.kind == "bool":
            p.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction,
                           default=None, help=s.help)
        elif s.kind == "list":
            p.add_argument(s.flag, dest=s.name, action="append", default=None,
                           metavar=metavar, help=s.help)
        else:
            p.add_argument(s.flag, dest=s.name, metavar=metavar, help=s.help)
    p.add_argument("--apt", action="append", default=[], metavar="NAME=DIR|URL",
                   help="origin: an apt repository (directory of .debs, mirror tree, or URL)")
    p.add_argument("--pypi", action="append", default=[], metavar="NAME=DIR|URL",
                   help="origin: a pip index (directory of wheels/sdists, or simple-index URL)")


def config_sources(args: argparse.Namespace, env: Mapping[str, str]) -> ConfigSources:
    """Where this command line takes its configuration from; `.load()` (re)reads it."""
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    return ConfigSources(args.config, dict(env), flags, tuple(getattr(args, "apt", ())),
                         tuple(getattr(args, "pypi", ())))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _preflight(config: NodeConfig) -> Listeners:
    """Everything that can be checked before the repositories are built; StartupError."""
    check_store_dir(config.store_dir)
    if config.role == "origin" and config.signing.enabled:
        assert config.signing.gnupg_home is not None
        check_signing_key(SigningKey(config.signing.gnupg_home, config.signing.key_id))
    return Listeners.bind(config, reuse_port=config.workers > 1)


def cmd_serve(args: argparse.Namespace) -> int:
    sources = config_sources(args, os.environ)
    try:
        config = sources.load()
    except ConfigError as exc:
        print(f"config error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    warnings = list(config.warnings)
    if (admin_warning := admin_startup_warning(config)) is not None:
        warnings.append(admin_warning)
    for warning in warnings:
        print(f"config warning: {warning}", file=sys.stderr)
    try:
        listeners = _preflight(config)
    except StartupError as exc:
        print(_one_line(str(exc)), file=sys.stderr)
        return 1
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # A reload asked for while the repositories are still being built must not end the node
    # (SIGHUP's default action); the server handles SIGHUP once it serves.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if config.workers > 1:
        return run_workers(config, sources, listeners)
    try:
        asyncio.run(serve(config, sources, listeners))
    except StartupError as exc:
        print(_one_line(str(exc)), file=sys.stderr)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"cannot start: {(exc.strerror or str(exc)).lower()}{where}", file=sys.stderr)
        return 1
    finally:
        listeners.close()
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    store_dir = Path(args.store) if args.store else None
    if store_dir is None and args.config is not None:
        try:
            store_dir = config_sources(args, os.environ).load().store_dir
        except ConfigError as exc:
            print(f"config error: {_one_line(str(exc))}", file=sys.stderr)
            return 2
    if store_dir is None:
        print("cache-node fsck: give --store DIR or --config FILE", file=sys.stderr)
        return 2
    store = BlobStore(store_dir / "store")
    store.open()
    try:
        report = store.fsck(repair=not args.no_repair)
    finally:
        store.close()
    action = "kept (--no-repair)" if args.no_repair else "removed"
    print(f"checked {report.checked} blobs: {len(report.bad)} bad, "
          f"{len(report.missing)} missing, {report.orphans_adopted} unlisted adopted")
    for digest in report.bad:
        print(f"BAD {digest} ({action})")
    for digest in report.missing:
        print(f"MISSING {digest} (forgotten)")
    return 0 if report.ok else 1


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        key = generate_signing_key(Path(args.gnupg_home), args.name, args.email, args.algorithm,
                                   Path(args.export_dir) if args.export_dir else None)
    except StartupError as exc:
        print(_one_line(str(exc)), file=sys.stderr)
        return 1
    print(f"created repository signing key in GnuPG home {key.gnupg_home}\n"
          f"  owner:       {key.uid}\n"
          f"  key id:      {key.key_id}\n"
          f"  fingerprint: {format_fingerprint(key.fingerprint)}\n"
          f"  public key:  {key.binary_path} (binary, for apt signed-by=)\n"
          f"               {key.armored_path} (ASCII-armored)\n"
          f"\norigin node.toml:\n{key.config_lines()}"
          f"\nor flags: --gnupg-home {key.gnupg_home} --signing-key {key.fingerprint}\n"
          f"\nsites fetch http://NODE:8080/keys/repository.gpg, check that\n"
          f"  gpg --show-keys --with-fingerprint repository.gpg\n"
          f"shows {format_fingerprint(key.fingerprint)}, install it as\n"
          f"/usr/share/keyrings/edgedepot.gpg and use\n"
          f"  deb [signed-by=/usr/share/keyrings/edgedepot.gpg] http://NODE:8080/apt/NAME SUITE main")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cache-node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run an origin or cache node")
    _add_config_flags(serve)
    fsck = sub.add_parser("fsck", help="re-verify every blob of a store")
    fsck.add_argument("--config", type=Path)
    fsck.add_argument("--store", help="the node's --store directory")
    fsck.add_argument("--no-repair", action="store_true", help="report only, remove nothing")
    keygen = sub.add_parser("keygen", help="create a repository signing key (gpg, no passphrase)")
    keygen.add_argument("--gnupg-home", required=True, metavar="DIR",
                        help="GnuPG home to create the key in (created 0700 if missing)")
    keygen.add_argument("--name", default="edgedepot repository signing key",
                        help="key owner's name")
    keygen.add_argument("--email", default="archive@edgedepot.invalid", help="key owner's email")
    keygen.add_argument("--algorithm", choices=("ed25519", "rsa4096"), default="ed25519")
    keygen.add_argument("--export-dir", metavar="DIR",
                        help="where to write repository.gpg and repository.asc "
                             "(default: the GnuPG home)")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "keygen":
        return cmd_keygen(args)
    return cmd_fsck(args)


if __name__ == "__main__":
    sys.exit(main())
