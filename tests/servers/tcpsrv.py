#!/usr/bin/python3
"""Raw TCP test servers, several listeners in one process. Stdlib only.

    tcpsrv.py MODE=IP:PORT [MODE=IP:PORT ...] [--report FILE] [--halfclose-size N]

Modes:
  banner     speaks first: sends "220 banner.test ESMTP fastproxy-test\\r\\n" before reading
             anything, then answers "250 ok" to each line and "221 bye" (and closes) to QUIT.
  sink       reads until EOF, then sends "<length> <sha256>\\n" and closes: a client that
             half-closes (shutdown(SHUT_WR)) must still receive this answer.
  source     reads one line "N SEED [RATE]\\n", sends N bytes of detdata stream SEED (at most
             RATE bytes/s when given), half-closes, reads until EOF and closes.
  halfclose  sends --halfclose-size bytes of stream 7 at once, shutdown(SHUT_WR), then reads the
             client's bytes until EOF and appends "<length> <sha256>\\n" to --report: proves the
             server still received everything the client sent after the server's FIN.
  reset      sends "hello\\n", waits for one byte from the client, then closes with a reset
             (SO_LINGER 0).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import socket
import struct
import sys
import threading
import time
from typing import Callable, Dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detdata  # noqa: E402

ARGS = argparse.Namespace()
REPORT_LOCK = threading.Lock()
HALFCLOSE_SEED = 7


def read_to_eof(c: socket.socket) -> "tuple[int, str]":
    h = hashlib.sha256()
    n = 0
    while True:
        b = c.recv(1 << 20)
        if not b:
            return n, h.hexdigest()
        h.update(b)
        n += len(b)


def banner(c: socket.socket) -> None:
    c.sendall(b"220 banner.test ESMTP fastproxy-test\r\n")
    f = c.makefile("rb")
    for line in f:
        if line.strip().upper() == b"QUIT":
            c.sendall(b"221 bye\r\n")
            break
        c.sendall(b"250 ok\r\n")


def sink(c: socket.socket) -> None:
    n, digest = read_to_eof(c)
    c.sendall(f"{n} {digest}\n".encode())


def source(c: socket.socket) -> None:
    line = b""
    while not line.endswith(b"\n"):
        b = c.recv(1)
        if not b:
            return
        line += b
    fields = [int(x) for x in line.split()]
    n, seed, rate = fields[0], fields[1], (fields[2] if len(fields) > 2 else 0)
    start, sent = time.monotonic(), 0
    for block in detdata.blocks(seed, n):
        c.sendall(block)
        sent += len(block)
        if rate:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    c.shutdown(socket.SHUT_WR)
    read_to_eof(c)


def halfclose(c: socket.socket) -> None:
    for block in detdata.blocks(HALFCLOSE_SEED, ARGS.halfclose_size):
        c.sendall(block)
    c.shutdown(socket.SHUT_WR)
    n, digest = read_to_eof(c)
    with REPORT_LOCK, open(ARGS.report, "a") as f:
        f.write(f"{n} {digest}\n")


def reset(c: socket.socket) -> None:
    c.sendall(b"hello\n")
    c.recv(1)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


MODES: Dict[str, Callable[[socket.socket], None]] = {
    "banner": banner, "sink": sink, "source": source, "halfclose": halfclose,
    "reset": reset,
}


def serve_conn(fn: Callable[[socket.socket], None], c: socket.socket) -> None:
    try:
        c.settimeout(120)
        fn(c)
    except OSError:
        pass
    finally:
        c.close()


def bind(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(256)
    return s


def serve(s: socket.socket, fn: Callable[[socket.socket], None]) -> None:
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve_conn, args=(fn, c), daemon=True).start()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("listeners", nargs="+", metavar="MODE=IP:PORT")
    ap.add_argument("--report", default="/dev/null")
    ap.add_argument("--halfclose-size", type=int, default=1 << 20)
    ap.parse_args(namespace=ARGS)
    bound = []
    for spec in ARGS.listeners:  # bind everything first: a bad address fails the whole process
        mode, _, addr = spec.partition("=")
        if mode not in MODES:
            ap.error(f"unknown mode {mode!r}")
        bound.append((bind(addr), MODES[mode]))
    threads = [threading.Thread(target=serve, args=b, daemon=True) for b in bound]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
