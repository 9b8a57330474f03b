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
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

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

    Attributes once entered: `app`, `ext` (Netns), `tmp` (a world-readable temporary folder,
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
            os.chmod(self.tmp, 0o755)
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
                 ("halfclose", HALFCLOSE_PORT)]
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
        r = self.app.run([PY, server_path("client.py"), *map(str, args)], user=user,
                         timeout=timeout)
        return json.loads(r.stdout)

    def halfclose_reports(self) -> List[Tuple[int, str]]:
        """(length, sha256) lines the halfclose server wrote so far, one per finished connection."""
        out = []
        for line in Path(self.halfclose_report).read_text().splitlines():
            n, digest = line.split()
            out.append((int(n), digest))
        return out
