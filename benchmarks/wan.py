"""A TCP relay that paces every connection to a fixed rate: the WAN in front of the origin.

Why not only nginx's ``limit_rate``: nginx computes the allowance as
``rate * (now - request_start + 1) - sent`` with one-second clock resolution, so every request
may send one second's worth (30 MB at ``30m``) at full speed before any limit applies. Almost
every .deb is smaller than that, so ``limit_rate 30m`` alone leaves a loopback origin unlimited.
This relay sets ``SO_MAX_PACING_RATE`` on each client-facing socket, so the kernel paces the
bytes at the rate from the first byte on (TCP internal pacing; no qdisc change needed), and
copies bytes to and from the origin nginx, which still logs every request.

Run as ``python -m benchmarks.wan --listen-port P --target-port Q --rate BYTES_PER_S``; it prints
``relay listening on PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket

SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
CHUNK = 256 * 1024


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


class Relay:
    def __init__(self, target_host: str, target_port: int, rate: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.rate = rate

    async def handle(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        sock = down_w.get_extra_info("socket")
        if sock is not None and self.rate > 0:
            sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, self.rate)
        try:
            up_r, up_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            await _close(down_w)
            return
        try:
            await asyncio.gather(_pump(down_r, up_w), _pump(up_r, down_w))
        finally:
            await _close(up_w)
            await _close(down_w)


async def serve(host: str, port: int, relay: Relay) -> None:
    server = await asyncio.start_server(relay.handle, host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"relay listening on {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--target-host", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--rate", type=int, required=True, help="bytes per second per connection")
    args = parser.parse_args(argv)
    relay = Relay(args.target_host, args.target_port, args.rate)
    asyncio.run(serve(args.listen_host, args.listen_port, relay))


if __name__ == "__main__":
    main()
