"""The admin listener (127.0.0.1:15000 by default): /ready, /stats, /config_dump and
POST /quitquitquit, as FSM's sidecar offers them. It runs on its own thread and only reads
snapshots; it never touches the byte path."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Optional, Tuple


class AdminState:
    """What the admin endpoints show; the sidecar supplies the callables."""

    def __init__(self, stats: Callable[[], Dict[str, Any]], config_dump: Callable[[], Dict[str, Any]],
                 quit: Callable[[], None]) -> None:
        self.ready = False
        self.stats = stats
        self.config_dump = config_dump
        self.quit = quit


class _Handler(BaseHTTPRequestHandler):
    server_version = "fastproxy-admin"
    protocol_version = "HTTP/1.1"
    state: AdminState  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # admin requests are not access-logged

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any) -> None:
        self._send(200, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/ready":
            if self.state.ready:
                self._send(200, b"LIVE\n")
            else:
                self._send(503, b"NOT READY\n")
        elif path == "/stats":
            self._json(self.state.stats())
        elif path == "/config_dump":
            self._json(self.state.config_dump())
        else:
            self._send(404, b"Not found\n")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] == "/quitquitquit":
            self._send(200, b"OK\n")
            self.state.quit()
        else:
            self._send(404, b"Not found\n")


class AdminServer:
    """Binds at construction (before privileges are dropped); serves after start()."""

    def __init__(self, address: Tuple[str, int], state: AdminState) -> None:
        handler = type("AdminHandler", (_Handler,), {"state": state})
        self.httpd = ThreadingHTTPServer(address, handler)
        self.httpd.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="admin", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread:
            self.httpd.shutdown()
            self._thread.join(timeout=5)
        self.httpd.server_close()
