#!/usr/bin/python3
"""Servers for the relay's fault and tunnel tests, several listeners in one process. Stdlib only.

    relaysrv.py MODE=IP:PORT [MODE=IP:PORT ...]

Modes:
  chatty   reads one line "N SEED\\n", then sends N bytes of detdata stream SEED in 512-byte
           writes with TCP_NODELAY (a chatty server: one small segment per write), then closes.
  hold     sends "ok\\n" and keeps the connection open until the client closes it.
  upgrade  an httpbin-like HTTP/1.1 server (keep-alive) that can switch protocols:
             GET /ws with Upgrade + Connection: upgrade: waits 300 ms, answers 101 with
               "x-early-bytes: N" (bytes that had arrived behind the request head before the
               101: a proxy must hold them), then echoes every byte back until EOF;
             GET /ws without them, or GET /noupgrade: 200 "no" (the request stays HTTP);
             GET /status/N: status N, Content-Length 0; GET /get: 200, body "host=<Host>".
  hrr      a fake TLS 1.3 server that splits its answers: reads a ClientHello record, answers
           with a HelloRetryRequest cut into 1-byte records sent one per write (2 ms apart),
           reads the next records, answers with a ServerHello (in 3-byte records), then echoes.
  connect  a CONNECT server: "CONNECT h:p" gets "200 Connection established", then every byte
           is echoed back until EOF; any other request gets 405 and a close.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import Callable, Dict, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detdata  # noqa: E402


def read_line(c: socket.socket, buf: bytearray) -> Optional[bytes]:
    while b"\n" not in buf:
        b = c.recv(65536)
        if not b:
            return None
        buf += b
    i = buf.index(b"\n") + 1
    line = bytes(buf[:i])
    del buf[:i]
    return line


def read_head(c: socket.socket, buf: bytearray) -> Optional[Tuple[str, str, Dict[str, str]]]:
    """Reads one request head (kept bytes after it stay in buf): (method, target, headers)."""
    while b"\r\n\r\n" not in buf:
        b = c.recv(65536)
        if not b:
            return None
        buf += b
    i = buf.index(b"\r\n\r\n") + 4
    lines = bytes(buf[:i]).decode("latin-1").split("\r\n")
    del buf[:i]
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for ln in lines[1:]:
        if ln:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
    return method, target, headers


def echo(c: socket.socket, buf: bytearray) -> None:
    if buf:
        c.sendall(bytes(buf))
    while True:
        b = c.recv(65536)
        if not b:
            break
        c.sendall(b)
    c.shutdown(socket.SHUT_WR)


def chatty(c: socket.socket) -> None:
    buf = bytearray()
    line = read_line(c, buf)
    if not line:
        return
    n, seed = (int(x) for x in line.split())
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for block in detdata.blocks(seed, n):
        for i in range(0, len(block), 512):
            c.sendall(block[i:i + 512])


def hold(c: socket.socket) -> None:
    c.sendall(b"ok\n")
    while c.recv(65536):
        pass


def upgrade(c: socket.socket) -> None:
    buf = bytearray()
    while True:
        head = read_head(c, buf)
        if head is None:
            return
        method, target, h = head
        conn = [t.strip().lower() for t in h.get("connection", "").split(",")]
        if target == "/ws" and "upgrade" in conn and "upgrade" in h:
            time.sleep(0.3)
            c.setblocking(False)
            try:
                while True:
                    b = c.recv(65536)
                    if not b:
                        break
                    buf += b
            except BlockingIOError:
                pass
            c.setblocking(True)
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + h["upgrade"].encode()
                      + b"\r\nConnection: Upgrade\r\nx-early-bytes: %d\r\n\r\n" % len(buf))
            echo(c, buf)
            return
        if target.startswith("/status/"):
            status, body = int(target.split("/")[2]), b""
        elif target == "/get":
            status, body = 200, b"host=" + h.get("host", "").encode()
        else:
            status, body = 200, b"no"
        c.sendall(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body))


def connect(c: socket.socket) -> None:
    buf = bytearray()
    head = read_head(c, buf)
    if head is None:
        return
    if head[0] != "CONNECT":
        c.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return
    c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    echo(c, buf)


HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


def server_hello(random: bytes, size: int) -> bytes:
    """A TLS 1.3 ServerHello (HRR when random is HRR_RANDOM) in records of `size` bytes."""
    exts = b"\x00\x2b\x00\x02\x03\x04" + b"\x00\x33\x00\x02\x00\x1d"
    body = b"\x03\x03" + random + b"\x20" + b"\x11" * 32 + b"\x13\x01\x00"
    body += len(exts).to_bytes(2, "big") + exts
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return b"".join(b"\x16\x03\x03" + len(hs[i:i + size]).to_bytes(2, "big") + hs[i:i + size]
                    for i in range(0, len(hs), size))


def read_record(c: socket.socket, buf: bytearray) -> Optional[bytes]:
    while len(buf) < 5 or len(buf) < 5 + int.from_bytes(buf[3:5], "big"):
        b = c.recv(65536)
        if not b:
            return None
        buf += b
    n = 5 + int.from_bytes(buf[3:5], "big")
    rec = bytes(buf[:n])
    del buf[:n]
    return rec


def hrr(c: socket.socket) -> None:
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    if read_record(c, buf) is None:
        return
    for i, b in enumerate(server_hello(HRR_RANDOM, 1)):
        c.sendall(bytes([b]))
        time.sleep(0.002)
    while True:  # change_cipher_spec records, then the second ClientHello
        rec = read_record(c, buf)
        if rec is None:
            return
        if rec[0] == 22:
            break
    c.sendall(server_hello(bytes(range(32)), 3))
    echo(c, buf)


MODES: Dict[str, Callable[[socket.socket], None]] = {
    "chatty": chatty, "hold": hold, "upgrade": upgrade, "connect": connect, "hrr": hrr}


def serve(mode: str, addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(512)

    def handle(c: socket.socket) -> None:
        try:
            MODES[mode](c)
        except OSError:
            pass
        finally:
            c.close()

    def loop() -> None:
        while True:
            c, _ = s.accept()
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return s


def main() -> int:
    socks = []
    for arg in sys.argv[1:]:
        mode, _, addr = arg.partition("=")
        if mode not in MODES:
            print(f"unknown mode {mode!r}", file=sys.stderr)
            return 2
        socks.append(serve(mode, addr))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
