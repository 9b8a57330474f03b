"""A pure-Python transparent relay: what a Python project would write without a C core.

It accepts the connections that the interception rules redirect to it, reads the original
destination with getsockopt(SOL_IP, SO_ORIGINAL_DST), connects there and copies bytes both ways
with asyncio streams, passing a half-close on. It is the benchmark's reference for "no C data
plane" and is deliberately written the ordinary way: no uvloop, no tuning beyond what such a
project would plausibly do (64 KiB reads, TCP_NODELAY).

Run: python3 bench/pyrelay.py --port 15001 (as the proxy UID, so its own upstream connections are
not redirected again). Needs only the standard library.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import struct

SO_ORIGINAL_DST = 80
READ_SIZE = 65536


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The (ip, port) the client connected to before REDIRECT rewrote it (IPv4)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed_ip = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed_ip), port


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies reader to writer until EOF, then half-closes the writer."""
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.transport.abort()


async def handle(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
    sock = c_writer.get_extra_info("socket")
    try:
        host, port = original_dst(sock)
        u_reader, u_writer = await asyncio.open_connection(host, port)
    except OSError:
        c_writer.transport.abort()
        return
    for w in (c_writer, u_writer):
        s = w.get_extra_info("socket")
        if s is not None:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await asyncio.gather(pump(c_reader, u_writer), pump(u_reader, c_writer))
    c_writer.close()
    u_writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=15001)
    args = ap.parse_args()
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
