"""The admin listener (127.0.0.1:15000 by default): /ready, /stats, /config_dump and
POST /quitquitquit, as FSM's sidecar offers them, served by `HttpServer`, a small HTTP/1.1 server
that cannot be made to spin or to hold unbounded memory. It only reads snapshots; it never
touches the byte path.

`HttpServer` is generic (the Prometheus listener uses it too): an address and a route table
`{"GET /path": handler}` whose handlers take a `Request` and return (status, body, content type).
One thread runs a `selectors` loop:
- an accept error (EMFILE, ENFILE, ENOBUFS, ENOMEM, ...) takes the listener out of the loop for a
  delay that grows (50 ms doubling to 1 s) and resets on the next good accept: no accept storm; one
  reserve descriptor is given up to accept a connection while descriptors are exhausted, so
  `/ready` can still answer (503);
- at most `max_conns` connections at once: a new client while full evicts the oldest one (a
  client that holds a slot without finishing its request cannot lock others out for long);
- a request head of at most `max_head` bytes and a body of at most `max_body`, all of it within
  `request_timeout` seconds of the accept (a slow-loris client is dropped), the response
  written within `write_timeout`;
- one request per connection (`Connection: close`).

Mutating routes (every POST) pass the `Guard` first: on a loopback TCP connection the peer's
socket is looked up in /proc/net/tcp{,6} and its owner UID must be one of `allow_uids` (the
proxy's own UID); a bearer token read from a file only the proxy UID may read also passes; a
connection on the Unix socket listener (mode 0600, owned by the proxy UID) passes. Anything else
is 403 with the reason.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import os
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from fastproxy.errors import FastproxyError
from fastproxy.logs import log

Response = Tuple[int, bytes, str]
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"

#: Largest /config_dump body; beyond it the endpoint answers 413 instead of building more.
CONFIG_DUMP_CAP = 4 << 20

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 411: "Length Required",
            413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


class AdminError(FastproxyError):
    """The admin listener cannot be set up as asked (token file, socket path)."""


@dataclass
class Request:
    """One parsed request, as a handler sees it."""

    method: str
    path: str
    query: str
    headers: Dict[str, str]
    body: bytes
    peer: Any
    #: True when the connection came in on a listener whose file permissions already restrict
    #: who may connect (the Unix socket).
    trusted_listener: bool = False


Handler = Callable[[Request], Response]


# ---------------------------------------------------------------------------------------------
# Who is on the other end


def _proc_hex(ip: str) -> Tuple[str, str]:
    """(file, address in /proc/net/tcp* spelling) for an IP: the address's 32-bit words, each
    printed as the host-order integer, in hex."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    raw = addr.packed
    words = struct.unpack("=" + "I" * (len(raw) // 4), raw)
    return ("/proc/net/tcp" if addr.version == 4 else "/proc/net/tcp6",
            "".join(f"{w:08X}" for w in words))


def tcp_peer_uid(sock: socket.socket) -> Optional[int]:
    """Owner UID of the socket at the other end of a TCP connection on this host (same network
    namespace), found in /proc/net/tcp{,6} as the entry whose local address is our peer and
    whose remote address is us; None when it is not there (not local, or already gone)."""
    try:
        local = sock.getsockname()
        remote = sock.getpeername()
    except OSError:
        return None
    rhost, lhost = remote[0], local[0]
    candidates = [(rhost, lhost)]
    if rhost.startswith("::ffff:") and lhost.startswith("::ffff:"):
        # a dual-stack listener: the client's socket may be an IPv4 one
        candidates.insert(0, (rhost[7:], lhost[7:]))
    for rh, lh in candidates:
        try:
            path, rip = _proc_hex(rh)
            _, lip = _proc_hex(lh)
        except ValueError:
            continue
        want_local = f"{rip}:{remote[1]:04X}"
        want_remote = f"{lip}:{local[1]:04X}"
        try:
            with open(path, "r", encoding="ascii", errors="replace") as f:
                next(f, None)  # header
                for line in f:
                    cols = line.split()
                    if len(cols) > 7 and cols[1] == want_local and cols[2] == want_remote:
                        return int(cols[7])
        except OSError:
            continue
    return None


def unix_peer_uid(sock: socket.socket) -> Optional[int]:
    """SO_PEERCRED's UID of a Unix-socket peer."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[1]


def read_token_file(path: str) -> str:
    """The admin token in `path` (surrounding white space removed). The file must be a regular
    file that neither group nor others can read or write, and hold at least 16 characters."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise AdminError(f"cannot open the admin token file: {e.strerror or e}", file=path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AdminError("the admin token file is not a regular file", file=path)
        if st.st_mode & 0o077:
            raise AdminError(f"the admin token file has mode {stat.S_IMODE(st.st_mode):04o}; it "
                             "must be readable by its owner only (chmod 0600)", file=path)
        data = os.read(fd, 4097)
    finally:
        os.close(fd)
    token = data.decode("utf-8", "replace").strip()
    if len(data) > 4096 or len(token) < 16 or any(c.isspace() for c in token):
        raise AdminError("the admin token must be 16..4096 characters without white space",
                         file=path)
    return token


@dataclass
class Guard:
    """Who may call mutating routes: one of `allow_uids` (None: the process's effective UID at
    the time of the request, i.e. the proxy UID after the privilege drop), the bearer `token`,
    or anyone on a trusted (Unix socket) listener."""

    allow_uids: Optional[Sequence[int]] = None
    token: Optional[str] = None
    uid_of: Callable[[socket.socket], Optional[int]] = tcp_peer_uid

    def check(self, req: Request, sock: socket.socket) -> Optional[str]:
        """None when allowed, else why not."""
        if req.trusted_listener:
            return None
        auth = req.headers.get("authorization", "")
        if self.token is not None and auth.startswith("Bearer "):
            if hmac.compare_digest(auth[7:].strip().encode(), self.token.encode()):
                return None
            return "wrong admin token"
        allowed = set(self.allow_uids) if self.allow_uids is not None else {os.geteuid()}
        uid = self.uid_of(sock)
        if uid is None:
            return "the caller's UID cannot be determined (not a local connection); use the token"
        if uid in allowed:
            return None
        return f"UID {uid} may not call mutating admin endpoints (only UID " \
               f"{', '.join(str(u) for u in sorted(allowed))} or the admin token)"


# ---------------------------------------------------------------------------------------------
# The server


def _name_thread(name: str) -> None:
    """Give the calling OS thread a name (`top -H`, /proc/PID/task/*/comm); best effort."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, ctypes.c_char_p(name.encode()), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class _Conn:
    __slots__ = ("sock", "listener", "buf", "out", "deadline", "reserve", "born")

    def __init__(self, sock: socket.socket, listener: "_Listener", deadline: float,
                 reserve: bool) -> None:
        self.sock = sock
        self.listener = listener
        self.buf = bytearray()
        self.out: Optional[memoryview] = None
        self.deadline = deadline
        self.reserve = reserve  # took the reserve descriptor's place
        self.born = time.monotonic()


class _Listener:
    __slots__ = ("sock", "trusted", "registered", "resume_at", "backoff", "label")

    def __init__(self, sock: socket.socket, trusted: bool, label: str) -> None:
        self.sock = sock
        self.trusted = trusted
        self.registered = False
        self.resume_at = 0.0
        self.backoff = 0.0
        self.label = label


Address = Union[Tuple[str, int], str]


class HttpServer:
    """A bounded HTTP/1.1 server on one thread (see the module docstring). Binds at
    construction (before privileges are dropped); serves after start(); close() stops it.
    `address` is (host, port) or a filesystem path for a Unix socket; `extra_unix_socket`
    adds a Unix socket listener (mode 0600, owned by `unix_owner` if given) whose callers are
    trusted for mutating routes."""

    BACKOFF_MIN = 0.05
    BACKOFF_MAX = 1.0

    def __init__(self, address: Address, routes: Mapping[str, Handler], *,
                 name: str = "http", guard: Optional[Guard] = None, max_conns: int = 32,
                 max_head: int = 8192, max_body: int = 65536, request_timeout: float = 5.0,
                 write_timeout: float = 10.0, extra_unix_socket: Optional[str] = None,
                 unix_owner: Optional[Tuple[int, int]] = None) -> None:
        self.routes = dict(routes)
        self.name = name
        self.guard = guard
        self.max_conns = max_conns
        self.max_head = max_head
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.listeners: List[_Listener] = []
        self.accept_errors = 0
        self.requests = 0
        self.rejected = 0
        self.evicted = 0
        try:
            if isinstance(address, str):
                self.listeners.append(self._bind_unix(address, unix_owner, trusted=False))
            else:
                self.listeners.append(self._bind_tcp(address))
            if extra_unix_socket:
                self.listeners.append(self._bind_unix(extra_unix_socket, unix_owner, trusted=True))
        except BaseException:
            for li in self.listeners:
                li.sock.close()
            raise
        self.server_address = self.listeners[0].sock.getsockname()
        self._sel = selectors.DefaultSelector()
        self._conns: Dict[int, _Conn] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stopping = False
        self._closed = False
        self._reserve: Optional[int] = self._open_reserve()
        self._thread: Optional[threading.Thread] = None

    # -- setup ------------------------------------------------------------------------------
    @staticmethod
    def _bind_tcp(address: Tuple[str, int]) -> _Listener:
        host, port = address
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(128)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        shown = f"[{host}]" if ":" in host else host
        return _Listener(s, False, f"{shown}:{s.getsockname()[1]}")

    @staticmethod
    def _bind_unix(path: str, owner: Optional[Tuple[int, int]], trusted: bool) -> _Listener:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a stale socket of an earlier run
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(path)
            os.chmod(path, 0o600)
            if owner is not None and os.geteuid() == 0:
                os.chown(path, owner[0], owner[1])
            s.listen(128)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise AdminError(f"cannot listen on the Unix socket: {e.strerror or e}",
                             file=path) from None
        finally:
            os.umask(old)
        return _Listener(s, trusted, path)

    @staticmethod
    def _open_reserve() -> Optional[int]:
        try:
            return os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        for li in self.listeners:
            self._listen(li)
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release every descriptor (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        if self._thread is not None:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            self._thread.join(timeout=5)
        for c in list(self._conns.values()):
            self._drop(c)
        for li in self.listeners:
            if li.sock.family == socket.AF_UNIX:
                try:
                    os.unlink(li.sock.getsockname())
                except (OSError, TypeError):
                    pass
            li.sock.close()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w, self._reserve):
            if fd is not None:
                os.close(fd)
        self._reserve = None

    # -- the loop ---------------------------------------------------------------------------
    def _listen(self, li: _Listener) -> None:
        if not li.registered and li.resume_at <= time.monotonic():
            self._sel.register(li.sock, selectors.EVENT_READ, li)
            li.registered = True

    def _unlisten(self, li: _Listener) -> None:
        if li.registered:
            self._sel.unregister(li.sock)
            li.registered = False

    def _loop(self) -> None:
        _name_thread(f"fp-{self.name}"[:15])
        while not self._stopping:
            try:
                self._round()
            except Exception:  # a bug here must not end the admin thread (or spin)
                log.exception("%s listener: unexpected error; continuing", self.name)
                time.sleep(0.1)

    def _round(self) -> None:
        """One select and what it reports: accepts, reads, writes, timeouts."""
        now = time.monotonic()
        wait = 1.0
        for c in self._conns.values():
            wait = min(wait, c.deadline - now)
        for li in self.listeners:
            if not li.registered and li.resume_at > now:
                wait = min(wait, li.resume_at - now)
        events = self._sel.select(max(0.0, wait))
        for key, mask in events:
            if key.data is None:
                try:
                    os.read(self._wake_r, 64)
                except OSError:
                    pass
            elif isinstance(key.data, _Listener):
                self._accept(key.data)
            elif mask & selectors.EVENT_READ:
                self._readable(key.data)
            elif mask & selectors.EVENT_WRITE:
                self._writable(key.data)
        now = time.monotonic()
        for c in [c for c in self._conns.values() if c.deadline <= now]:
            self._drop(c)
        if self._reserve is None and not any(c.reserve for c in self._conns.values()):
            self._reserve = self._open_reserve()
        for li in self.listeners:
            self._listen(li)

    def _accept_one(self, li: _Listener) -> Tuple[Optional[socket.socket], bool]:
        """(socket, took the reserve's place), or (None, ...) when there is nothing to accept;
        backs the listener off on errors that would repeat at once."""
        while True:
            try:
                return li.sock.accept()[0], False
            except (BlockingIOError, InterruptedError):
                return None, False
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                self.accept_errors += 1
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._reserve is not None:
                    # out of descriptors: give up the reserve to take this one client
                    os.close(self._reserve)
                    self._reserve = None
                    try:
                        return li.sock.accept()[0], True
                    except OSError:
                        pass
                self._back_off(li)
                return None, False

    def _accept(self, li: _Listener) -> None:
        for _ in range(64):  # a batch, then the other events get their turn
            sock, reserve = self._accept_one(li)
            if sock is None:
                return
            if len(self._conns) >= self.max_conns:
                self.evicted += 1
                self._drop(min(self._conns.values(), key=lambda c: c.born))
            li.backoff = 0.0
            sock.setblocking(False)
            c = _Conn(sock, li, time.monotonic() + self.request_timeout, reserve)
            self._conns[sock.fileno()] = c
            self._sel.register(sock, selectors.EVENT_READ, c)
            if reserve:
                self._back_off(li)  # the listener waits; this client is served meanwhile
                return

    def _back_off(self, li: _Listener) -> None:
        li.backoff = min(self.BACKOFF_MAX, max(self.BACKOFF_MIN, li.backoff * 2))
        li.resume_at = time.monotonic() + li.backoff
        self._unlisten(li)

    def _drop(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        if self._conns.pop(fd, None) is None:
            return
        try:
            self._sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()

    def _readable(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(16384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        if not data:
            self._drop(c)
            return
        c.buf += data
        resp = self._parse(c)
        if resp is not None:
            self._respond(c, resp)

    def _parse(self, c: _Conn) -> Optional[Tuple[Response, bool]]:
        """A response once the request is complete or bad (and whether it is a HEAD), or None
        to wait for more bytes."""
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.buf) > self.max_head:
                return (431, b"request head too large\n", TEXT), False
            return None
        if end > self.max_head:
            return (431, b"request head too large\n", TEXT), False
        head = bytes(c.buf[:end]).decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return (400, b"bad request line\n", TEXT), False
        method, target, _ = parts
        headers: Dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                return (400, b"bad header line\n", TEXT), False
            headers[name.lower()] = value.strip()
        if "transfer-encoding" in headers:
            return (411, b"chunked request bodies are not accepted\n", TEXT), False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return (400, b"bad Content-Length\n", TEXT), False
        if length < 0 or length > self.max_body:
            return (413, b"request body too large\n", TEXT), False
        if len(c.buf) - end - 4 < length:
            return None
        body = bytes(c.buf[end + 4:end + 4 + length])
        path, _, query = target.partition("?")
        req = Request(method, path, query, headers, body, c.sock.getpeername() if
                      c.sock.family != socket.AF_UNIX else "unix", c.listener.trusted)
        return self._dispatch(req, c.sock), method == "HEAD"

    def _dispatch(self, req: Request, sock: socket.socket) -> Response:
        self.requests += 1
        method = "GET" if req.method == "HEAD" else req.method
        handler = self.routes.get(f"{method} {req.path}")
        if handler is None:
            if any(k.split(" ", 1)[1] == req.path for k in self.routes):
                return 405, b"method not allowed\n", TEXT
            return 404, b"not found\n", TEXT
        if method != "GET":
            why = self.guard.check(req, sock) if self.guard is not None else None
            if why is not None:
                self.rejected += 1
                return 403, (why + "\n").encode(), TEXT
        try:
            return handler(req)
        except Exception as e:  # a handler bug must not take the admin thread down
            return 500, f"{type(e).__name__}: {e}\n".encode(), TEXT

    def _respond(self, c: _Conn, resp: Tuple[Response, bool]) -> None:
        (status, body, ctype), head_only = resp
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\nCache-Control: no-store\r\n\r\n").encode("latin-1")
        c.out = memoryview(head if head_only else head + body)
        c.deadline = time.monotonic() + self.write_timeout
        self._sel.modify(c.sock, selectors.EVENT_WRITE, c)
        self._writable(c)

    def _writable(self, c: _Conn) -> None:
        assert c.out is not None
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(c)
            return
        c.out = c.out[n:]
        if not c.out:
            try:
                c.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._drop(c)


# ---------------------------------------------------------------------------------------------
# The admin routes


class AdminState:
    """What the admin endpoints show; the sidecar supplies the callables."""

    def __init__(self, stats: Callable[[], Dict[str, Any]], config_dump: Callable[[], Dict[str, Any]],
                 quit: Callable[[], None]) -> None:
        self.ready = False
        self.stats = stats
        self.config_dump = config_dump
        self.quit = quit


def bounded_json(obj: Any, cap: int) -> Optional[bytes]:
    """`obj` as indented JSON, or None as soon as it grows past `cap` bytes (encoded piece by
    piece, so an enormous object is never held as one string)."""
    out: List[str] = []
    size = 0
    for chunk in json.JSONEncoder(indent=1, default=str).iterencode(obj):
        size += len(chunk)
        if size > cap:
            return None
        out.append(chunk)
    return ("".join(out) + "\n").encode()


def admin_routes(state: AdminState, config_dump_cap: int = CONFIG_DUMP_CAP) -> Dict[str, Handler]:
    def ready(_: Request) -> Response:
        if not state.ready:
            return 503, b"NOT READY\n", TEXT
        if state.stats().get("fd_exhausted", 0):
            return 503, b"NOT READY: out of file descriptors\n", TEXT
        return 200, b"LIVE\n", TEXT

    def stats(_: Request) -> Response:
        body = bounded_json(state.stats(), config_dump_cap)
        return (200, body, JSON) if body is not None else (413, b"stats too large\n", TEXT)

    def config_dump(_: Request) -> Response:
        body = bounded_json(state.config_dump(), config_dump_cap)
        if body is None:
            return 413, (f"the configuration dump is larger than {config_dump_cap} bytes; "
                         "read the configuration files instead\n").encode(), TEXT
        return 200, body, JSON

    def quit(_: Request) -> Response:
        state.quit()
        return 200, b"OK\n", TEXT

    return {"GET /ready": ready, "GET /stats": stats, "GET /config_dump": config_dump,
            "POST /quitquitquit": quit}


class AdminServer(HttpServer):
    """The admin listener: `admin_routes(state)` on `address`, mutating routes guarded."""

    def __init__(self, address: Address, state: AdminState, *, guard: Optional[Guard] = None,
                 unix_socket: Optional[str] = None, unix_owner: Optional[Tuple[int, int]] = None,
                 **kw: Any) -> None:
        super().__init__(address, admin_routes(state), name="admin",
                         guard=guard if guard is not None else Guard(),
                         extra_unix_socket=unix_socket, unix_owner=unix_owner, **kw)


__all__ = ["AdminError", "AdminServer", "AdminState", "Guard", "HttpServer", "Request",
           "admin_routes", "bounded_json", "read_token_file", "tcp_peer_uid", "unix_peer_uid"]
