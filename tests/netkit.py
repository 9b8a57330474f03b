"""netkit: throw-away network topologies for tests and benchmarks (stdlib only, needs root).

A `Topology` is two network namespaces joined by a veth pair:

    app  (the pod)          198.51.100.1/24  2001:db8:1::1/64   --veth--
    ext  ("the internet")   198.51.100.2/24  2001:db8:1::2/64
                            + external hosts on ext's lo: 192.0.2.10, 192.0.2.20, 203.0.113.10,
                              2001:db8:2::10, 2001:db8:2::20

app reaches the external hosts through routes for 192.0.2.0/24, 203.0.113.0/24 and
2001:db8:2::/64 via ext (never a default route). Both namespaces get `/etc/netns/<ns>/hosts`, so
`httpbin.test`, `tls.test`, `banner.test`, ... resolve inside them (`ip netns exec` bind-mounts it
over /etc/hosts). Only documentation address ranges are used; the machine's own namespace is never
touched (the veth ends are created directly inside the namespaces).

Teardown always runs - on success, on failure, on KeyboardInterrupt and at interpreter exit - and
kills every process living in the namespaces, deletes them and their /etc/netns directories.
Namespaces are named `<prefix>-<pid>-<rand>-app|ext`; `cleanup_stale(prefix)` removes those whose
creating process is gone (left by a crashed run).

    with Topology(prefix="fpt") as topo:
        topo.ext.popen([PY, server_path("httpd.py"), "--listen", "192.0.2.10:80"])
        topo.ext.wait_port("192.0.2.10", 80)
        r = topo.app.run(["curl", "-sS", "http://httpbin.test/get"], user=USER)
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

NETNS_RUN_DIR = Path("/var/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")

#: The interpreter for server and client programs: readable by every user, stdlib only.
PY = "/usr/bin/python3"
#: The ordinary (non-root) user clients run as.
USER = 1000
#: Folder of the server/client programs run inside the namespaces.
SERVERS_DIR = Path(__file__).resolve().parent / "servers"

APP_V4 = "198.51.100.1"
EXT_V4 = "198.51.100.2"
APP_V6 = "2001:db8:1::1"
EXT_V6 = "2001:db8:1::2"
#: "External hosts", all living on ext's loopback.
HTTPBIN = "192.0.2.10"      # HTTP :80, TLS :443, banner, half-close and bulk servers
CLOSED_HOST = "192.0.2.20"  # exists (kernel answers), nothing listens: port 9 gives a reset
OTHER_HOST = "203.0.113.10"
HTTPBIN6 = "2001:db8:2::10"
CLOSED_HOST6 = "2001:db8:2::20"
EXTERNAL_V4 = (HTTPBIN, CLOSED_HOST, OTHER_HOST)
EXTERNAL_V6 = (HTTPBIN6, CLOSED_HOST6)
ROUTED_V4 = ("192.0.2.0/24", "203.0.113.0/24")
#: Ports of the standard servers (start_servers), all on HTTPBIN (and HTTPBIN6).
HTTP_PORT = 80
TLS_PORT = 443
BANNER_PORT = 25         # speaks first
SINK_PORT = 9000         # read to EOF, answer "<len> <sha256>"
SOURCE_PORT = 9001       # "N SEED [RATE]\n" -> N deterministic bytes
HALFCLOSE_PORT = 9002    # send HALFCLOSE_SIZE bytes, FIN, read client to EOF, report
RESET_PORT = 9003        # send a line, wait for one byte, then reset (SO_LINGER 0)
IPERF_PORT = 5201
CLOSED_PORT = 9          # nothing listens (on CLOSED_HOST): the kernel answers with a reset
HALFCLOSE_SIZE = 1 << 20
ROUTED_V6 = ("2001:db8:2::/64",)

#: Names every topology resolves (extra ones can be passed to Topology).
DEFAULT_HOSTS: Dict[str, str] = {
    "httpbin.test": HTTPBIN,
    "tls.test": HTTPBIN,
    "banner.test": HTTPBIN,
    "bulk.test": HTTPBIN,
    "closed.test": CLOSED_HOST,
    "other.test": OTHER_HOST,
    "httpbin6.test": HTTPBIN6,
}

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_LIBC: Optional[ctypes.CDLL] = None


def _libc() -> ctypes.CDLL:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


Cmd = Sequence[Union[str, os.PathLike]]
User = Union[None, int, str]


class NetkitError(RuntimeError):
    """A topology could not be built or a helper command failed; the message has the output."""


def server_path(name: str) -> str:
    """Absolute path of a program in tests/servers/."""
    return str(SERVERS_DIR / name)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise NetkitError(f"ip {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def _user_prefix(user: User) -> List[str]:
    """The setpriv prefix that runs a command as `user` (uid or name; None: stay root)."""
    if user is None:
        return []
    if isinstance(user, str):
        import pwd
        pw = pwd.getpwnam(user)
        uid, gid = pw.pw_uid, pw.pw_gid
    else:
        uid = gid = int(user)
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def _pids_in(ns: str) -> List[int]:
    r = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in r.stdout.split() if p.strip().isdigit()]


def _kill_all_in(ns: str, grace: float = 1.0) -> None:
    """SIGTERM every process in namespace `ns`, then SIGKILL what is left after `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _pids_in(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _pids_in(ns):
            time.sleep(0.05)


def _delete_ns(ns: str) -> None:
    _kill_all_in(ns)
    if (NETNS_RUN_DIR / ns).exists():
        _ip("netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC_DIR / ns, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str) -> List[str]:
    """Deletes namespaces `<prefix>-<pid>-<rand>-<role>` left by a crashed run: their creating
    process is gone, or it is this process and no open Topology owns them. Namespaces of other
    live processes (a parallel run) are left alone. Returns the names removed."""
    removed: List[str] = []
    names = set()
    for d in (NETNS_RUN_DIR, NETNS_ETC_DIR):
        if d.is_dir():
            names.update(p.name for p in d.iterdir())
    live = _live_names()
    for name in sorted(names):
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != prefix or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if name in live or (pid != os.getpid() and _pid_alive(pid)):
            continue
        _delete_ns(name)
        removed.append(name)
    return removed


class Netns:
    """One named network namespace; runs commands in it and remembers what it started."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.procs: List[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    def argv(self, cmd: Cmd, user: User = None) -> List[str]:
        """The full argv that runs `cmd` in this namespace (as `user` if given)."""
        return ["ip", "netns", "exec", self.name, *_user_prefix(user), *map(str, cmd)]

    @staticmethod
    def _env(env: Optional[Mapping[str, str]]) -> Dict[str, str]:
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/tmp", "LANG": "C.UTF-8"}
        base.update(env or {})
        return base

    def run(self, cmd: Cmd, user: User = None, timeout: float = 30.0, check: bool = True,
            input: Union[None, str, bytes] = None, env: Optional[Mapping[str, str]] = None,
            text: bool = True) -> subprocess.CompletedProcess:
        """Runs `cmd` to completion in the namespace, capturing stdout and stderr. With `check`,
        a non-zero exit raises NetkitError carrying the output. A timeout kills it and raises
        subprocess.TimeoutExpired."""
        if isinstance(input, str) and not text:
            input = input.encode()
        r = subprocess.run(self.argv(cmd, user), capture_output=True, timeout=timeout,
                           input=input, env=self._env(env), text=text)
        if check and r.returncode != 0:
            raise NetkitError(f"[{self.name}] {' '.join(map(str, cmd))}: exit {r.returncode}\n"
                              f"stdout: {r.stdout!r}\nstderr: {r.stderr!r}")
        return r

    def popen(self, cmd: Cmd, user: User = None, env: Optional[Mapping[str, str]] = None,
              **kwargs) -> subprocess.Popen:
        """Starts `cmd` in the namespace; it is killed at teardown at the latest. Output goes to
        DEVNULL unless stdout/stderr are given."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self.argv(cmd, user), env=self._env(env), **kwargs)
        self.procs.append(p)
        return p

    def call(self, fn: "Callable[[], T]") -> "T":
        """Runs `fn` in a short-lived thread that has entered this namespace (setns), and returns
        its result. Sockets created by `fn` stay in the namespace and can be used from any thread;
        the calling thread's own namespace is never changed."""
        box: Dict[str, object] = {}

        def target() -> None:
            try:
                fd = os.open(NETNS_RUN_DIR / self.name, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _libc().setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
                finally:
                    os.close(fd)
                box["value"] = fn()
            except BaseException as e:  # handed to the caller
                box["error"] = e

        t = threading.Thread(target=target, name=f"netns-{self.name}")
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket living in this namespace (created as root by this process)."""
        return self.call(lambda: socket.socket(family, type))

    def http(self, method: str, host: str, port: int, path: str, timeout: float = 5.0,
             body: Optional[bytes] = None) -> Tuple[int, bytes]:
        """One HTTP/1.1 request from inside the namespace (as root, from this process: fast).
        Returns (status, body); connection errors raise OSError."""
        import http.client
        ns = self

        class Conn(http.client.HTTPConnection):
            def connect(self) -> None:
                fam = socket.AF_INET6 if ":" in host else socket.AF_INET
                self.sock = ns.socket(fam)
                self.sock.settimeout(timeout)
                self.sock.connect((host, port))

        c = Conn(host, port, timeout=timeout)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def can_connect(self, ip: str, port: int, timeout: float = 1.0) -> bool:
        """True when a TCP connect from inside the namespace to ip:port succeeds."""
        code = ("import socket,sys\n"
                "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=float(sys.argv[3]))\n"
                "s.close()\n")
        r = self.run([PY, "-c", code, ip, str(port), str(timeout)], check=False,
                     timeout=timeout + 10)
        return r.returncode == 0

    def wait_port(self, ip: str, port: int, timeout: float = 10.0,
                  proc: Optional[subprocess.Popen] = None) -> None:
        """Waits until ip:port accepts TCP connections from inside this namespace (the probe
        loop runs in one process). Raises NetkitError on timeout or if `proc` exits first."""
        code = ("import socket,sys,time\n"
                "ip,port,end=sys.argv[1],int(sys.argv[2]),time.monotonic()+float(sys.argv[3])\n"
                "while True:\n"
                "    try:\n"
                "        socket.create_connection((ip,port),timeout=0.5).close(); break\n"
                "    except OSError:\n"
                "        if time.monotonic()>end: sys.exit(1)\n"
                "        time.sleep(0.02)\n")
        p = subprocess.Popen(self.argv([PY, "-c", code, ip, str(port), str(timeout)]),
                             env=self._env(None))
        deadline = time.monotonic() + timeout + 10
        while p.poll() is None:
            if proc is not None and proc.poll() is not None:
                p.kill()
                p.wait()
                raise NetkitError(f"[{self.name}] process {proc.args} exited with "
                                  f"{proc.returncode} before {ip}:{port} was listening")
            if time.monotonic() > deadline:
                p.kill()
                break
            time.sleep(0.02)
        if p.wait() != 0:
            raise NetkitError(f"[{self.name}] nothing listening on {ip}:{port} after {timeout}s")

    def kill_all(self) -> None:
        """Kills every process in the namespace (started by us or not) and reaps ours."""
        _kill_all_in(self.name)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


_LIVE: "Dict[str, Topology]" = {}


def _live_names() -> List[str]:
    return [ns.name for t in _LIVE.values() for ns in (t.app, t.ext)]


@atexit.register
def _teardown_all() -> None:
    for t in list(_LIVE.values()):
        t.close()


class Topology:
    """app and ext namespaces joined by a veth pair; see the module docstring.

    Attributes once entered: `app`, `ext` (Netns), `tmp` (a temporary folder anyone may write to (sticky),
    removed at teardown), `hosts` (name -> address)."""

    def __init__(self, prefix: str = "fpt", hosts: Optional[Mapping[str, str]] = None,
                 ipv6: bool = True) -> None:
        if not prefix.isalnum() or len(prefix) > 8:
            raise ValueError("prefix must be alphanumeric, at most 8 characters")
        self.prefix = prefix
        self.ipv6 = ipv6
        self.hosts: Dict[str, str] = dict(DEFAULT_HOSTS)
        self.hosts.update(hosts or {})
        suffix = secrets.token_hex(3)
        base = f"{prefix}-{os.getpid()}-{suffix}"
        self.app = Netns(f"{base}-app")
        self.ext = Netns(f"{base}-ext")
        # veth ends are created inside the namespaces, so their names only need to be short.
        self.veth_app = f"{prefix}{suffix}a"
        self.veth_ext = f"{prefix}{suffix}e"
        self.tmp = Path()
        self.cacert = ""          # set by start_servers(): the CA file clients pass to curl
        self.halfclose_report = ""  # set by start_servers(): the halfclose server's report
        self._open = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Topology":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> "Topology":
        """Builds the topology; on any failure tears down what was built and re-raises."""
        if os.geteuid() != 0:
            raise NetkitError("netkit needs root")
        cleanup_stale(self.prefix)
        _LIVE[self.app.name] = self
        self._open = True
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.app.name}-"))
            os.chmod(self.tmp, 0o1777)  # clients (any user) may write their outputs here
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        a, e = self.app.name, self.ext.name
        _ip("netns", "add", a)
        _ip("netns", "add", e)
        _ip("link", "add", self.veth_app, "netns", a, "type", "veth",
            "peer", "name", self.veth_ext, "netns", e)
        for ns in (a, e):
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", a, "addr", "add", f"{APP_V4}/24", "dev", self.veth_app)
        _ip("-n", e, "addr", "add", f"{EXT_V4}/24", "dev", self.veth_ext)
        for addr in EXTERNAL_V4:
            _ip("-n", e, "addr", "add", f"{addr}/32", "dev", "lo")
        if self.ipv6:
            for ns in (a, e):
                self.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "0")
            _ip("-n", a, "addr", "add", f"{APP_V6}/64", "dev", self.veth_app, "nodad")
            _ip("-n", e, "addr", "add", f"{EXT_V6}/64", "dev", self.veth_ext, "nodad")
            for addr in EXTERNAL_V6:
                _ip("-n", e, "addr", "add", f"{addr}/128", "dev", "lo")
        _ip("-n", a, "link", "set", self.veth_app, "up")
        _ip("-n", e, "link", "set", self.veth_ext, "up")
        for net in ROUTED_V4:
            _ip("-n", a, "route", "add", net, "via", EXT_V4, "dev", self.veth_app)
        if self.ipv6:
            for net in ROUTED_V6:
                _ip("-n", a, "-6", "route", "add", net, "via", EXT_V6, "dev", self.veth_app)
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{addr} {name}" for name, addr in self.hosts.items()]
        for ns in (a, e):
            d = NETNS_ETC_DIR / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text("\n".join(lines) + "\n")
            os.chmod(d / "hosts", 0o644)

    @staticmethod
    def sysctl(ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"],
                       capture_output=True, timeout=10)

    def close(self) -> None:
        """Kills every process in both namespaces, deletes them, their /etc/netns folders and
        the temporary folder. Idempotent; never raises for what is already gone."""
        if not self._open:
            return
        self._open = False
        try:
            for ns in (self.app, self.ext):
                ns.kill_all()
            for ns in (self.app, self.ext):
                _delete_ns(ns.name)
            if str(self.tmp) not in ("", "."):
                shutil.rmtree(self.tmp, ignore_errors=True)
        finally:
            _LIVE.pop(self.app.name, None)

    # -- conveniences ----------------------------------------------------------------------
    def wait_port(self, ip: str, port: int, timeout: float = 10.0,
                  proc: Optional[subprocess.Popen] = None) -> None:
        """Waits until ip:port (an ext address) accepts connections from ext itself."""
        self.ext.wait_port(ip, port, timeout, proc)

    def make_cert(self, names: Sequence[str] = ("httpbin.test", "tls.test", "bulk.test")) -> Tuple[str, str]:
        """A self-signed certificate (it is its own CA) for `names` and HTTPBIN, made with
        openssl in self.tmp. Returns (cert_path, key_path), both world-readable."""
        cert, key = self.tmp / "cert.pem", self.tmp / "key.pem"
        san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{HTTPBIN}"])
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", f"/CN={names[0]}", "-addext",
             f"subjectAltName={san}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise NetkitError(f"openssl req: {r.stderr.strip()}")
        os.chmod(cert, 0o644)
        os.chmod(key, 0o644)
        return str(cert), str(key)

    def start_servers(self, iperf: bool = True) -> None:
        """Starts the standard servers in ext (as root) and waits until they listen: HTTP on
        HTTPBIN:HTTP_PORT, the same over TLS on TLS_PORT (sets self.cacert), banner, sink,
        source and halfclose servers (sets self.halfclose_report), and iperf3 on IPERF_PORT.
        With ipv6, HTTP, TLS and the tcpsrv modes listen on HTTPBIN6 too."""
        hosts = [HTTPBIN] + ([f"[{HTTPBIN6}]"] if self.ipv6 else [])
        cert, key = self.make_cert()
        self.cacert = cert
        self.halfclose_report = str(self.tmp / "halfclose.report")
        Path(self.halfclose_report).touch()
        http = self.ext.popen([PY, server_path("httpd.py")]
                              + [a for h in hosts for a in ("--listen", f"{h}:{HTTP_PORT}")])
        tls = self.ext.popen([PY, server_path("httpd.py"), "--tls", cert, key]
                             + [a for h in hosts for a in ("--listen", f"{h}:{TLS_PORT}")])
        modes = [("banner", BANNER_PORT), ("sink", SINK_PORT), ("source", SOURCE_PORT),
                 ("halfclose", HALFCLOSE_PORT), ("reset", RESET_PORT)]
        tcp = self.ext.popen([PY, server_path("tcpsrv.py"), "--report", self.halfclose_report,
                              "--halfclose-size", str(HALFCLOSE_SIZE)]
                             + [f"{m}={h}:{p}" for h in hosts for m, p in modes])
        waits = [(http, HTTP_PORT), (tls, TLS_PORT)] + [(tcp, p) for _, p in modes]
        if iperf:
            ip3 = self.ext.popen(["iperf3", "-s", "-B", HTTPBIN, "-p", str(IPERF_PORT)])
            waits.append((ip3, IPERF_PORT))
        for proc, port in waits:
            self.ext.wait_port(HTTPBIN, port, timeout=10, proc=proc)

    def client(self, *args: Union[str, int], user: User = USER, timeout: float = 60.0) -> dict:
        """Runs servers/client.py in app (as `user`) and returns its JSON answer, e.g.
        `topo.client("upload", "bulk.test", SINK_PORT, 50 << 20, 3)`."""
        import json
        try:
            r = self.app.run([PY, server_path("client.py"), *map(str, args)], user=user,
                             timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NetkitError(f"client {' '.join(map(str, args))} timed out after {timeout}s\n"
                              + self.diagnostics()) from None
        return json.loads(r.stdout)

    def diagnostics(self) -> str:
        """Sockets in both namespaces and the stats of every running sidecar, for failures."""
        out = []
        for sc in list(RUNNING_SIDECARS):
            try:
                out.append(f"sidecar {sc.args}: {sc.stats()}")
            except (OSError, NetkitError) as e:
                out.append(f"sidecar {sc.args}: stats unavailable: {e}")
        for ns in (self.app, self.ext):
            r = ns.run(["ss", "-tnpi"], check=False)
            out.append(f"--- ss -tnpi in {ns.name}\n{r.stdout[-6000:]}")
        return "\n".join(out)

    def curl(self, *args: str, user: User = USER, max_time: float = 20.0
             ) -> subprocess.CompletedProcess:
        """curl -sS ARGS in app as `user`; never raises for curl's exit status. The result has
        an extra attribute `seconds` (wall time including `ip netns exec`)."""
        t0 = time.monotonic()
        r = self.app.run(["curl", "-sS", "--max-time", str(max_time), *args], user=user,
                         timeout=max_time + 10, check=False)
        r.seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        return r

    def halfclose_reports(self) -> List[Tuple[int, str]]:
        """(length, sha256) lines the halfclose server wrote so far, one per finished connection."""
        out = []
        for line in Path(self.halfclose_report).read_text().splitlines():
            n, digest = line.split()
            out.append((int(n), digest))
        return out


# -- the sidecar under test ----------------------------------------------------------------

PROXY_UID = 1500
OUTBOUND_PORT = 15001
ADMIN_PORT = 15000
DEFAULT_DRAIN_SECONDS = 25.0  # `fastproxy run`'s default --drain-seconds
#: Gauges that must be back to 0 once every connection is over (debug builds only for debug_*).
IDLE_GAUGES = ("cx_active", "pipes_in_use", "debug_live_conns", "debug_live_fds")

#: Sidecar instances currently running, so tests can check all of them after each test.
RUNNING_SIDECARS: "List[Sidecar]" = []


def meshconfig(spec: Mapping[str, object]) -> str:
    """A MeshConfig manifest (fsm-system/fsm-mesh-config) whose `spec` is the given mapping, as
    YAML with two-space indents."""
    import yaml
    doc = {"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
           "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"}, "spec": dict(spec)}
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_config(folder: Path, name: str, text: str) -> Path:
    """Writes a configuration file the sidecar (another UID) can read; returns its path."""
    path = Path(folder) / name
    path.write_text(text)
    path.chmod(0o644)
    return path


def config_folder(topo: "Topology", name: str, files: Mapping[str, str]) -> Path:
    """A new folder `name` under the topology's scratch space holding `files` (file name ->
    text), readable by the sidecar's UID."""
    folder = topo.tmp / name
    folder.mkdir(mode=0o755)
    for fname, text in files.items():
        write_config(folder, fname, text)
    return folder


def delta(after: Mapping[str, int], before: Mapping[str, int], key: str) -> int:
    """How much the counter `key` moved between two /stats snapshots."""
    return after[key] - before[key]


def fastproxy_exe() -> Tuple[str, str]:
    """(fastproxy executable, why it cannot be used): `$FASTPROXY_EXE`, else `fastproxy` next to
    sys.executable. Usable means UID PROXY_UID can run its interpreter and import
    fastproxy._core (the venv must live under a world-readable directory)."""
    import sys
    exe = os.environ.get("FASTPROXY_EXE") or str(Path(sys.executable).parent / "fastproxy")
    if not os.access(exe, os.X_OK):
        return exe, f"{exe} not found (pip install -e . in a venv made with /usr/bin/python3)"
    with open(exe, "rb") as f:
        first = f.readline().decode(errors="replace").strip()
    interp = first[2:].split()[0] if first.startswith("#!") else sys.executable
    # cwd "/": a source checkout in the current folder must not stand in for the installed package
    r = subprocess.run([*_user_prefix(PROXY_UID), interp, "-c", "import fastproxy._core"],
                       capture_output=True, text=True, timeout=30, cwd="/")
    if r.returncode != 0:
        return exe, (f"UID {PROXY_UID} cannot import fastproxy._core with {interp} (is the venv "
                     f"world-readable and the extension built?): {r.stderr.strip()[-300:]}")
    return exe, ""


class Sidecar:
    """`fastproxy run` in a namespace (normally the app namespace), dropping to PROXY_UID.

        sc = Sidecar(topo.app, exe, log_dir=topo.tmp, copy=True)
        sc.apply_rules(); sc.start(); sc.stats()["cx_accepted"]; sc.terminate()
    """

    def __init__(self, ns: Netns, exe: str, log_dir: Path, config: Optional[str] = None,
                 workers: int = 1, copy: bool = False, drain_seconds: Optional[float] = None,
                 log_level: Optional[str] = None, outbound_port: int = OUTBOUND_PORT,
                 admin_port: int = ADMIN_PORT, uid: int = PROXY_UID,
                 extra: Sequence[str] = ()) -> None:
        self.ns, self.exe, self.config = ns, exe, config
        self.outbound_port, self.admin_port, self.uid = outbound_port, admin_port, uid
        self.drain_seconds = drain_seconds
        self.args = ["run", "--workers", str(workers), "--outbound-port", str(outbound_port),
                     "--admin-port", str(admin_port), "--user", str(uid)]
        if config:
            self.args += ["--config", config]
        if copy:
            self.args.append("--copy")
        if drain_seconds is not None:
            self.args += ["--drain-seconds", str(drain_seconds)]
        if log_level:
            self.args += ["--log-level", log_level]
        self.args += list(extra)
        self.log_path = Path(log_dir) / f"fastproxy-{secrets.token_hex(3)}.log"
        self.proc: Optional[subprocess.Popen] = None
        self.debug = False
        self.tolerated: Dict[str, int] = {}  # leaks already reported by wait_idle

    # -- interception rules ------------------------------------------------------------------
    def iptables(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Runs `fastproxy iptables ARGS` in the namespace (as root)."""
        return self.ns.run([self.exe, "iptables", *args], check=check, timeout=60)

    def apply_rules(self, config: Optional[str] = None) -> None:
        """Loads the interception rules for this sidecar (its UID and outbound port) with
        `fastproxy iptables --apply [--config]`, which takes the exclusions from the MeshConfig."""
        cfg = config or self.config
        self.iptables("--apply", "--proxy-uid", str(self.uid), "--outbound-port",
                      str(self.outbound_port), *(["--config", cfg] if cfg else []))

    # -- process -------------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "Sidecar":
        """Starts the sidecar and waits until GET /ready answers 200."""
        log = open(self.log_path, "ab")
        try:
            self.proc = self.ns.popen([self.exe, *self.args], stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise NetkitError(f"fastproxy exited with {self.proc.returncode} before ready:\n"
                                  f"{self.log_tail()}")
            try:
                if self.admin("GET", "/ready", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise NetkitError(f"fastproxy not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        self.debug = bool(self.stats().get("debug"))
        RUNNING_SIDECARS.append(self)
        return self

    @contextlib.contextmanager
    def serving(self, rules: bool = True) -> Iterator["Sidecar"]:
        """Loads the interception rules (unless `rules` is False), starts the sidecar, and on
        leaving stops it with SIGTERM, which must end in exit status 0."""
        if rules:
            self.apply_rules()
        self.start()
        try:
            yield self
        finally:
            status = self.terminate()
            assert status == 0, self.log_tail()

    def admin(self, method: str, path: str, timeout: float = 5.0) -> Tuple[int, bytes]:
        return self.ns.http(method, "127.0.0.1", self.admin_port, path, timeout=timeout)

    def stats(self) -> dict:
        import json
        status, body = self.admin("GET", "/stats")
        if status != 200:
            raise NetkitError(f"GET /stats: {status} {body[:200]!r}")
        return json.loads(body)

    def wait_idle(self, timeout: float = 3.0) -> dict:
        """Polls /stats until no connection is open and nothing is leaked (gauges at 0; in a
        debug build also live connections, fds, and pipes beyond the idle pool). Returns the
        last stats; raises AssertionError naming what stayed up. What stayed up is then
        tolerated by later calls (they fail only on more), so one stuck connection is reported
        once, by the test that left it, not by every test after it."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            now = {k: st.get(k, 0) for k in IDLE_GAUGES
                   if self.debug or not k.startswith("debug_")}
            if self.debug:
                now["debug_live_pipes - pipes_pooled"] = (st.get("debug_live_pipes", 0)
                                                          - st.get("pipes_pooled", 0))
            bad = {k: v for k, v in now.items() if v > self.tolerated.get(k, 0)}
            if not bad:
                return st
            if time.monotonic() > deadline:
                self.tolerated.update(bad)
                raise AssertionError(f"sidecar not idle after {timeout}s: {bad}")
            time.sleep(0.05)

    def wait_closed(self, before: dict, n: int = 1, timeout: float = 3.0) -> dict:
        """Polls /stats until cx_closed grew by at least n since `before` (so the per-connection
        byte counters are final); returns the stats."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if st["cx_closed"] - before["cx_closed"] >= n:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"cx_closed did not grow by {n} within {timeout}s: "
                                     f"{before['cx_closed']} -> {st['cx_closed']}")
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout=timeout)
        self._forget()
        return rc

    def terminate(self, timeout: Optional[float] = None) -> int:
        """SIGTERM and wait (by default the drain deadline + 5 s); returns the exit status
        (kills it and raises if it does not exit in time)."""
        if timeout is None:
            timeout = (DEFAULT_DRAIN_SECONDS if self.drain_seconds is None
                       else self.drain_seconds) + 5.0
        if self.proc is None or self.proc.poll() is not None:
            self._forget()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise NetkitError(f"fastproxy did not exit {timeout}s after SIGTERM:\n"
                              f"{self.log_tail()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._forget()

    def _forget(self) -> None:
        if self in RUNNING_SIDECARS:
            RUNNING_SIDECARS.remove(self)

    def log_tail(self, n: int = 4000) -> str:
        """The last n characters of the sidecar's own log lines (stderr). The access log's JSON
        lines share the file (stdout) and are left out: a busy test would push everything else
        out of the tail; read log_path for them."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "".join(line for line in text.splitlines(keepends=True)
                       if not line.startswith('{"time"'))[-n:]
