"""Mixed client load for the soak test (tests/test_soak.py), run in the app namespace as an
ordinary user until a deadline; prints one JSON object: per kind of traffic, how many exchanges
completed, how many bytes were checked, and every error (a failed connection, a wrong byte).

    soakload.py SECONDS CAFILE

Kinds, each in its own thread, one exchange after another:
  upload    N checksummed bytes to bulk.test:9000 (sink answers "<len> <sha256>")
  download  N deterministic bytes from bulk.test:9001 (source), compared with detdata's sha256
  http      short keep-alive HTTP requests to httpbin.test:80 (GET /get, GET /bytes/N?seed=S)
  tls       a TLS connection to tls.test:443 (SNI), GET /get over it
  banner    banner.test:25 speaks first; QUIT gets "221 bye"
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import client  # noqa: E402
import detdata  # noqa: E402

BULK = 4 << 20
TIMEOUT = 20.0


def upload(i: int) -> int:
    r = client.upload("bulk.test", 9000, BULK, 100 + i % 50)
    want = f"{r['sent']} {r['sent_sha']}"
    if r["answer"].strip() != want:
        raise ValueError(f"sink answered {r['answer']!r}, sent {want}")
    return BULK


def download(i: int) -> int:
    seed = 200 + i % 50
    r = client.download("bulk.test", 9001, BULK, seed)
    if r["received"] != BULK or r["sha"] != detdata.sha256(seed, BULK):
        raise ValueError(f"received {r['received']} bytes, sha {r['sha']}")
    return BULK


def http_requests(i: int) -> int:
    c = http.client.HTTPConnection("httpbin.test", 80, timeout=TIMEOUT)
    n = 0
    try:
        c.request("GET", "/get")
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or json.loads(body)["host"] != "httpbin.test":
            raise ValueError(f"/get: {r.status} {body[:100]!r}")
        n += len(body)
        size, seed = 1 + (i * 7919) % 20000, 300 + i % 50
        c.request("GET", f"/bytes/{size}?seed={seed}")
        r = c.getresponse()
        body = r.read()
        if r.status != 200 or body != detdata.data(seed, size):
            raise ValueError(f"/bytes/{size}: {r.status}, {len(body)} bytes differ")
        n += len(body)
    finally:
        c.close()
    return n


def tls(i: int, ctx: ssl.SSLContext) -> int:
    raw = socket.create_connection(("tls.test", 443), timeout=TIMEOUT)
    with ctx.wrap_socket(raw, server_hostname="tls.test") as s:
        s.sendall(b"GET /get HTTP/1.1\r\nHost: tls.test\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or json.loads(body)["tls"] is not True:
        raise ValueError(f"tls: {data[:200]!r}")
    return len(data)


def banner(i: int) -> int:
    r = client.banner("banner.test", 25)
    if not r["banner"].startswith("220 ") or not r["bye"].startswith("221"):
        raise ValueError(f"banner {r['banner']!r} bye {r['bye']!r}")
    return len(r["banner"]) + len(r["bye"])


def main(argv: List[str]) -> int:
    seconds, cafile = float(argv[1]), argv[2]
    ctx = ssl.create_default_context(cafile=cafile)
    client.TIMEOUT = TIMEOUT
    kinds: Dict[str, Callable[[int], int]] = {
        "upload": upload, "download": download, "http": http_requests,
        "tls": lambda i: tls(i, ctx), "banner": banner,
    }
    deadline = time.monotonic() + seconds
    out: Dict[str, Dict[str, object]] = {}

    def run(name: str, fn: Callable[[int], int]) -> None:
        res: Dict[str, object] = {"ok": 0, "bytes": 0, "errors": []}
        out[name] = res
        i = 0
        while time.monotonic() < deadline:
            try:
                res["bytes"] = int(res["bytes"]) + fn(i)  # type: ignore[call-overload]
                res["ok"] = int(res["ok"]) + 1  # type: ignore[call-overload]
            except (OSError, ValueError, KeyError, http.client.HTTPException) as e:
                errs = res["errors"]
                assert isinstance(errs, list)
                if len(errs) < 20:
                    errs.append(f"#{i} {type(e).__name__}: {e}")
                else:
                    errs.append("...")
                    break
            i += 1

    threads = [threading.Thread(target=run, args=kv, name=kv[0]) for kv in kinds.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
