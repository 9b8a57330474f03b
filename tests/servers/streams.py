#!/usr/bin/python3
"""Long-lived checksummed streams in both directions, for the reload test (stdlib only).

    streams.py serve ADDR:PORT REPORT
        Every connection: the first 8 bytes are the stream id; then the server sends a paced
        pseudo-random stream (RATE bytes/s, from the 8-byte rate the client sends after the id)
        while hashing what it receives; once the client's FIN arrives it stops sending, sends
        its FIN, and appends "ID SENT_LEN SENT_SHA RECV_LEN RECV_SHA" to REPORT.
    streams.py run HOST PORT N RATE STOPFILE
        Opens N such streams (ids 0..N-1), each sending RATE bytes/s while hashing what it
        receives, until STOPFILE exists; then sends its FIN, reads to the server's FIN and
        prints one JSON object: {"streams": [{"id", "sent", "sent_sha", "recv", "recv_sha",
        "error"}...]}.
Data is random.Random(id)'s bytes, so a stream's content is the same on every run."""
import hashlib
import json
import os
import random
import socket
import sys
import threading
import time

CHUNK = 4096


def pace(sock, seed, rate, stop):
    """Send paced random chunks until stop(); returns (length, sha256)."""
    rnd, h, n, t0 = random.Random(seed), hashlib.sha256(), 0, time.monotonic()
    while not stop():
        b = rnd.randbytes(CHUNK)
        sock.sendall(b)
        h.update(b)
        n += len(b)
        ahead = n / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(min(ahead, 0.05))
    return n, h.hexdigest()


def drain(sock):
    h, n = hashlib.sha256(), 0
    while True:
        b = sock.recv(65536)
        if not b:
            return n, h.hexdigest()
        h.update(b)
        n += len(b)


def recv_exact(sock, n):
    out = b""
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            raise ConnectionError("EOF in the stream header")
        out += b
    return out


def serve(addr, report):
    host, _, port = addr.rpartition(":")
    fam = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    s = socket.socket(fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host.strip("[]"), int(port)))
    s.listen(256)
    lock = threading.Lock()

    def one(c):
        try:
            head = recv_exact(c, 16)
            sid, rate = int(head[:8]), int(head[8:])
            done = threading.Event()
            result = {}

            def reader():
                result["recv"] = drain(c)
                done.set()
            t = threading.Thread(target=reader, daemon=True)
            t.start()
            sent = pace(c, 1_000_000 + sid, rate, done.is_set)
            c.shutdown(socket.SHUT_WR)
            t.join()
            with lock, open(report, "a") as f:
                f.write(f"{sid} {sent[0]} {sent[1]} {result['recv'][0]} {result['recv'][1]}\n")
        except OSError as e:
            with lock, open(report, "a") as f:
                f.write(f"error {e!r}\n")
        finally:
            c.close()

    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def run(host, port, n, rate, stopfile):
    results = [None] * n

    def one(sid):
        r = {"id": sid, "error": None}
        try:
            c = socket.create_connection((host, port), timeout=120)
            c.sendall(b"%08d%08d" % (sid, rate))
            box = {}

            def reader():
                try:
                    box["recv"] = drain(c)
                except OSError as e:
                    box["error"] = repr(e)
            t = threading.Thread(target=reader, daemon=True)
            t.start()
            r["sent"], r["sent_sha"] = pace(c, sid, rate, lambda: os.path.exists(stopfile))
            c.shutdown(socket.SHUT_WR)
            t.join(120)
            if "error" in box:
                r["error"] = box["error"]
            else:
                r["recv"], r["recv_sha"] = box["recv"]
            c.close()
        except OSError as e:
            r["error"] = repr(e)
        results[sid] = r

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    print("started", flush=True)
    for t in threads:
        t.join()
    print(json.dumps({"streams": results}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
