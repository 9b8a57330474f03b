#!/usr/bin/python3
"""Test clients for the tcpsrv.py servers; run inside the app namespace, usually as an ordinary
user. Each prints one JSON object on stdout. Stdlib only.

    client.py upload HOST PORT N SEED        send N bytes, shutdown(SHUT_WR), read the answer
    client.py download HOST PORT N SEED [RATE]   ask a `source` server for N bytes
    client.py halfclose HOST PORT M SEED     read the server's bytes until its FIN, then send M
    client.py banner HOST PORT               read the greeting without sending anything first
    client.py connect HOST PORT              connect and wait for data, EOF or an error
    client.py reset HOST PORT                read a line, send one byte, then wait for EOF/reset
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detdata  # noqa: E402

TIMEOUT = 60.0


def connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def read_to_eof(c: socket.socket) -> "tuple[int, str, bytes]":
    h = hashlib.sha256()
    n = 0
    head = b""
    while True:
        b = c.recv(1 << 20)
        if not b:
            return n, h.hexdigest(), head
        if len(head) < 256:
            head += b[:256 - len(head)]
        h.update(b)
        n += len(b)


def upload(host: str, port: int, n: int, seed: int) -> dict:
    t0 = time.monotonic()
    c = connect(host, port)
    h = hashlib.sha256()
    for block in detdata.blocks(seed, n):
        c.sendall(block)
        h.update(block)
    c.shutdown(socket.SHUT_WR)
    _, _, answer = read_to_eof(c)
    c.close()
    return {"sent": n, "sent_sha": h.hexdigest(), "answer": answer.decode(errors="replace"),
            "seconds": time.monotonic() - t0}


def download(host: str, port: int, n: int, seed: int, rate: int = 0) -> dict:
    t0 = time.monotonic()
    c = connect(host, port)
    c.sendall(f"{n} {seed} {rate}\n".encode())
    got, digest, _ = read_to_eof(c)
    c.close()
    return {"received": got, "sha": digest, "seconds": time.monotonic() - t0}


def halfclose(host: str, port: int, m: int, seed: int) -> dict:
    t0 = time.monotonic()
    c = connect(host, port)
    got, digest, _ = read_to_eof(c)  # the server half-closed after its bytes
    h = hashlib.sha256()
    for block in detdata.blocks(seed, m):
        c.sendall(block)
        h.update(block)
    c.shutdown(socket.SHUT_WR)
    tail, _, _ = read_to_eof(c)
    c.close()
    return {"received": got, "received_sha": digest, "sent": m, "sent_sha": h.hexdigest(),
            "tail": tail, "seconds": time.monotonic() - t0}


def banner(host: str, port: int) -> dict:
    t0 = time.monotonic()
    c = connect(host, port)
    c.settimeout(5)
    f = c.makefile("rb")
    greeting = f.readline().decode(errors="replace")
    t_greet = time.monotonic() - t0
    c.sendall(b"QUIT\r\n")
    bye = f.readline().decode(errors="replace")
    c.close()
    return {"banner": greeting, "bye": bye, "seconds": t_greet}


def probe(host: str, port: int) -> dict:
    """Outcome of a connection: refused/reset/timeout/eof/data, and how long it took."""
    t0 = time.monotonic()
    outcome, err = "", ""
    try:
        c = socket.create_connection((host, port), timeout=5)
        try:
            c.settimeout(5)
            b = c.recv(1)
            outcome = "data" if b else "eof"
        finally:
            c.close()
    except ConnectionRefusedError:
        outcome = "refused"
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    except OSError as e:
        outcome, err = "error", errno.errorcode.get(e.errno or 0, str(e))
    return {"outcome": outcome, "error": err, "seconds": time.monotonic() - t0}


def after_hello(host: str, port: int) -> dict:
    """Reads the server's first line, sends one byte, then reports how the connection ended."""
    c = connect(host, port)
    c.settimeout(5)
    f = c.makefile("rb")
    hello = f.readline().decode(errors="replace")
    t0 = time.monotonic()
    c.sendall(b"x")
    try:
        outcome = "data" if c.recv(1) else "eof"
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    c.close()
    return {"hello": hello, "outcome": outcome, "seconds": time.monotonic() - t0}


def main(argv: "list[str]") -> int:
    cmd, host, port, *rest = argv
    nums = [int(x) for x in rest]
    fn = {"upload": upload, "download": download, "halfclose": halfclose, "banner": banner,
          "connect": probe, "reset": after_hello}[cmd]
    print(json.dumps(fn(host, int(port), *nums)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
