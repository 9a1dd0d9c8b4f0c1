"""`cache-node serve` and `cache-node fsck`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from cache_node.config import ConfigError, NodeConfig, load_config
from cache_node.http_app import build_app
from cache_node.node import Node
from cache_node.store import BlobStore

log = logging.getLogger("cache_node")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--role", choices=("origin", "cache"))
    p.add_argument("--listen", help="HOST:PORT to bind (port 0 picks a free port)")
    p.add_argument("--store", help="directory for the store and built repositories")
    p.add_argument("--upstream", help="cache role: base URL of the origin or a parent cache")
    p.add_argument("--quota", help="store size limit, e.g. 50G (LRU eviction beyond it)")
    p.add_argument("--index-ttl", dest="index_ttl", type=float,
                   help="seconds before Release files / project pages are revalidated")
    p.add_argument("--apt", action="append", default=[], metavar="NAME=DIR|URL",
                   help="origin: an apt repository (directory of .debs, mirror tree, or URL)")
    p.add_argument("--pypi", action="append", default=[], metavar="NAME=DIR|URL",
                   help="origin: a pip index (directory of wheels/sdists, or simple-index URL)")
    p.add_argument("--gnupg-home", dest="signing_gnupg_home",
                   help="origin: GNUPGHOME with the key that signs built repositories")
    p.add_argument("--signing-key", dest="signing_key_id", help="origin: key id to sign with")
    p.add_argument("--upstream-retries", dest="upstream_retries", type=int)
    p.add_argument("--upstream-read-timeout", dest="upstream_read_timeout", type=float)
    p.add_argument("--upstream-connect-timeout", dest="upstream_connect_timeout", type=float)
    p.add_argument("--upstream-backoff", dest="upstream_backoff", type=float)
    p.add_argument("--images", help="origin: directory of Glance image records and data")
    p.add_argument("--glance-upstream", dest="glance_upstream",
                   help="origin: URL of a real Glance API to cache images from")
    p.add_argument("--glance-auth-ttl", dest="glance_auth_ttl", type=float,
                   help="seconds a token's image-visibility answer is cached")
    p.add_argument("--glance-offline-policy", dest="glance_offline_policy",
                   choices=("public", "none", "cached"))
    p.add_argument("--log-level", dest="log_level")


def _config_from_args(args: argparse.Namespace) -> NodeConfig:
    flags = {key: getattr(args, key, None) for key in (
        "role", "listen", "store", "upstream", "quota", "index_ttl", "signing_gnupg_home",
        "signing_key_id", "upstream_retries", "upstream_read_timeout",
        "upstream_connect_timeout", "upstream_backoff", "log_level", "images",
        "glance_upstream", "glance_auth_ttl", "glance_offline_policy")}
    return load_config(args.config, dict(os.environ), flags, args.apt, args.pypi)


async def _serve(config: NodeConfig) -> None:
    node = Node(config)
    await node.start()
    app = build_app(node)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in config.listen_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.listen_host, config.listen_port))
    sock.listen(1024)
    site = web.SockSite(runner, sock)
    await site.start()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on http://{shown}:{port}", flush=True)
    log.info("%s node serving, store %s", config.role, config.store_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    await node.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _config_from_args(args)
    except ConfigError as exc:
        print(f"cache-node: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config))
    except OSError as exc:
        print(f"cache-node: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    store_dir = Path(args.store) if args.store else None
    if store_dir is None and args.config is not None:
        try:
            store_dir = _config_from_args(args).store_dir
        except ConfigError as exc:
            print(f"cache-node: configuration error: {exc}", file=sys.stderr)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cache-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run an origin or cache node")
    _add_config_flags(serve)
    fsck = sub.add_parser("fsck", help="re-verify every blob of a store")
    fsck.add_argument("--config", type=Path)
    fsck.add_argument("--store", help="the node's --store directory")
    fsck.add_argument("--no-repair", action="store_true", help="report only, remove nothing")
    for key in ("role", "listen", "upstream", "quota", "index_ttl", "signing_gnupg_home",
                "signing_key_id", "upstream_retries", "upstream_read_timeout",
                "upstream_connect_timeout", "upstream_backoff", "log_level", "images",
                "glance_upstream", "glance_auth_ttl", "glance_offline_policy"):
        fsck.set_defaults(**{key: None})
    fsck.set_defaults(apt=[], pypi=[])
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    return cmd_fsck(args)


if __name__ == "__main__":
    sys.exit(main())
