#!/usr/bin/python3
"""A small httpbin-like HTTP/1.1 server (keep-alive), optionally over TLS. Stdlib only.

    httpd.py --listen 192.0.2.10:80 --listen [2001:db8:2::10]:80
    httpd.py --listen 192.0.2.10:443 --tls CERT KEY

Routes: GET /get (200, JSON echoing Host, path and headers); /status/N (status N, empty body);
GET /bytes/N[?seed=S] (N deterministic bytes, see detdata.py); POST /sha256 (JSON with the length
and sha256 of the request body; Content-Length or chunked).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detdata  # noqa: E402


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fastproxy-testd/1"
    timeout = 60

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, (json.dumps(obj, sort_keys=True) + "\n").encode())

    def _read_body(self) -> Tuple[int, str]:
        """Reads the request body (Content-Length or chunked); returns (length, sha256)."""
        h = hashlib.sha256()
        total = 0
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        raise ConnectionError("body truncated")
                    h.update(chunk)
                    left -= len(chunk)
                total += size
                self.rfile.readline(8)  # CRLF after the chunk
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    raise ConnectionError("body truncated")
                h.update(chunk)
                total += len(chunk)
                left -= len(chunk)
        return total, h.hexdigest()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == "/get":
            self._json(200, {"host": self.headers.get("Host", ""), "path": self.path,
                             "method": self.command, "headers": dict(self.headers.items()),
                             "tls": isinstance(self.request, ssl.SSLSocket)})
        elif len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            self._send(int(parts[1]), b"")
        elif len(parts) == 2 and parts[0] == "bytes" and parts[1].isdigit():
            n = int(parts[1])
            seed = int(parse_qs(url.query).get("seed", ["1"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.end_headers()
            if self.command != "HEAD":
                for b in detdata.blocks(seed, n):
                    self.wfile.write(b)
        else:
            self._json(404, {"error": "no such route", "path": self.path})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == "/sha256":
            n, digest = self._read_body()
            self._json(200, {"length": n, "sha256": digest})
        elif len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            self._read_body()
            self._send(int(parts[1]), b"")
        else:
            self._read_body()
            self._json(404, {"error": "no such route", "path": self.path})


def make_server(addr: str, tls: Optional[ssl.SSLContext]) -> ThreadingHTTPServer:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True
        request_queue_size = 256

        def get_request(self):  # TLS handshake happens in the handler thread, not here
            sock, peer = super().get_request()
            if tls is not None:
                sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            return sock, peer

    return Server((host, int(port)), Handler)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", action="append", required=True, help="IP:PORT or [IPv6]:PORT")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    a = ap.parse_args()
    ctx = None
    if a.tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.tls[0], a.tls[1])
    servers = [make_server(addr, ctx) for addr in a.listen]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[0].serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
