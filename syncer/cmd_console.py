"""`distro-sync console INVENTORY --listen HOST:PORT` and `distro-sync site-config INVENTORY SITE`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from syncer.console.access import ConsoleAccess, ExposureError, check_exposure
from syncer.console.server import Console, build_console_app
from syncer.inventory import InventoryError, load_inventory
from syncer.onboarding import OnboardingError, pinned_fingerprint, render_bootstrap, site_config


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


class ConsoleSetupError(Exception):
    """An operator's mistake in the console's own options: one line, exit 2."""


def viewer_token(args: argparse.Namespace) -> str | None:
    """The viewer token: `--token-file`, else `EDGEDEPOT_CONSOLE_TOKEN`, else none."""
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise ConsoleSetupError(f"--token-file {args.token_file}: "
                                    f"{exc.strerror or exc}") from None
        if not token:
            raise ConsoleSetupError(f"--token-file {args.token_file} is empty")
        return token
    return os.environ.get("EDGEDEPOT_CONSOLE_TOKEN", "").strip() or None


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConsoleSetupError("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConsoleSetupError(f"cannot load --tls-cert {args.tls_cert} / --tls-key "
                                f"{args.tls_key}: {getattr(exc, 'strerror', None) or exc}"
                                ) from None
    return context


async def serve_console(args: argparse.Namespace) -> int:
    host, port = args.listen
    try:
        token = viewer_token(args)
        context = tls_context(args)
        check_exposure(host, token is not None, context is not None, args.open_to_network)
    except (ConsoleSetupError, ExposureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console = Console(Path(args.inventory), args.interval,
                      Path(args.state_dir) if args.state_dir else None)
    for warning in console.inventory.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    access = ConsoleAccess(token, secure=context is not None)
    runner = web.AppRunner(build_console_app(console, access), access_log=None,
                           handle_signals=False)
    await runner.setup()
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        sock.listen(128)
        await web.SockSite(runner, sock, ssl_context=context).start()
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
        scheme = "https" if context is not None else "http"
        print(f"listening on {scheme}://{shown}:{bound[1]}/", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        await runner.cleanup()


def cmd_console(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve_console(args))
    except InventoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def cmd_site_config(args: argparse.Namespace) -> int:
    try:
        inventory = load_inventory(Path(args.inventory))
        cfg = site_config(inventory, args.site, pinned_fingerprint(inventory), args.console_url)
    except (InventoryError, OnboardingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    script = render_bootstrap(cfg)
    if args.output:
        Path(args.output).write_text(script)
        Path(args.output).chmod(0o755)
    else:
        sys.stdout.write(script)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "console", help="live web console of the whole fleet (health, savings, plans, sites)",
        description="Serve a live web view of every region, node and site of the inventory: "
        "health (up, degraded upstream, stale snapshot, unreachable), store use, WAN bytes "
        "against bytes served to sites, plan progress with failures, how much of its profile "
        "each site has downloaded, and charts over time. It also serves each site's bootstrap "
        "script at /sites/SITE/bootstrap.sh and takes the sites' onboarding reports. The "
        "inventory is read again when the file changes.")
    p.add_argument("inventory", help="fleet inventory (TOML)")
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 8090), metavar="HOST:PORT",
                   help="address to serve on (default 127.0.0.1:8090; port 0 picks one)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between polls of every node (default 5)")
    p.add_argument("--state-dir", help="keep site reports here across restarts")
    p.add_argument("--token-file", metavar="FILE",
                   help="viewer token: the page and its API need it (Authorization: Bearer, or "
                   "the sign-in form's session cookie); default EDGEDEPOT_CONSOLE_TOKEN")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--open-to-network", action="store_true",
                   help="allow a non-loopback --listen without a token over TLS (an isolated "
                   "management network only: anyone who reaches it sees the whole fleet)")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser(
        "site-config", help="print the bootstrap script that points a site at its region",
        description="Print the shell script that configures a fresh site: apt sources and "
        "the pinned repository key, pip.conf, clouds.yaml for the image service, all "
        "pointing at the site's region; it reports to the console when it ran. Run it as "
        "root on the site; run it again after a region moved.")
    p.add_argument("inventory", help="fleet inventory (TOML)")
    p.add_argument("site", help="site name, as in the inventory")
    p.add_argument("--console-url", help="where the site reports (default: the inventory's "
                   "console_url; none: it does not report)")
    p.add_argument("-o", "--output", help="write the script to this file instead")
    p.set_defaults(func=cmd_site_config)
