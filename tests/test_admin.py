"""The admin server: bounded requests, slow clients dropped, a connection cap, no spinning when
out of file descriptors (and /ready still answering), mutating routes only for the proxy's UID,
the admin token or the Unix socket; and, end to end, the app's UID cannot stop the sidecar while
its own UID can."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import netkit
from fastproxy import admin as A

OTHER_UID = 1000
OWN_UID = 1500


def request(port: int, raw: bytes, host: str = "127.0.0.1", timeout: float = 5.0) -> bytes:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.sendall(raw)
        out = b""
        while True:
            b = s.recv(65536)
            if not b:
                return out
            out += b


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp else 0


@pytest.fixture
def server() -> Iterator[A.HttpServer]:
    hits: List[str] = []

    def big(_: A.Request) -> A.Response:
        return 200, b"x" * (1 << 20), "application/octet-stream"

    routes = {"GET /ready": lambda r: (200, b"LIVE\n", A.TEXT), "GET /big": big,
              "POST /quitquitquit": lambda r: (hits.append("quit"), (200, b"OK\n", A.TEXT))[1]}
    s = A.HttpServer(("127.0.0.1", 0), routes, guard=A.Guard(allow_uids=[os.geteuid()]),
                     max_conns=8, request_timeout=0.5, write_timeout=1.0)
    s.hits = hits  # type: ignore[attr-defined]
    s.start()
    yield s
    s.close()


def test_routes_and_errors(server: A.HttpServer) -> None:
    port = server.server_address[1]
    r = request(port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(r) == 200 and r.endswith(b"\r\n\r\nLIVE\n") and b"Connection: close" in r
    assert request(port, b"HEAD /ready HTTP/1.1\r\n\r\n").endswith(b"\r\n\r\n")
    assert status(request(port, b"GET /nope HTTP/1.1\r\n\r\n")) == 404
    assert status(request(port, b"DELETE /ready HTTP/1.1\r\n\r\n")) == 405
    assert status(request(port, b"GARBAGE\r\n\r\n")) == 400
    assert status(request(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n")) == 431
    assert status(request(port, b"POST /quitquitquit HTTP/1.1\r\nContent-Length: 999999\r\n\r\n")) == 413
    assert status(request(port, b"POST /quitquitquit HTTP/1.1\r\n\r\n")) == 200  # root == own
    assert len(request(port, b"GET /big HTTP/1.1\r\n\r\n")) > 1 << 20


def thread_cpu(name: str) -> float:
    """CPU seconds of this process's thread named `name`."""
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def test_slow_clients_are_dropped_and_cannot_lock_others_out(server: A.HttpServer) -> None:
    port = server.server_address[1]
    slow = []
    for _ in range(40):  # 5x the connection cap, each sending half a request head
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /ready HTTP/1.1\r\nX-Slow: ")
        slow.append(s)
    t0 = time.monotonic()
    assert status(request(port, b"GET /ready HTTP/1.1\r\n\r\n")) == 200
    assert time.monotonic() - t0 < 0.3
    time.sleep(0.8)  # past the request timeout: every slow one was closed
    for s in slow:
        s.settimeout(1)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    assert server.evicted >= 32 and not server._conns


def test_never_reads_the_response(server: A.HttpServer) -> None:
    """A client that never reads a large response is dropped at the write timeout."""
    port = server.server_address[1]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /big HTTP/1.1\r\n\r\n")
    time.sleep(1.6)
    assert not server._conns
    s.close()


FD_CHILD = textwrap.dedent("""
    import os, resource, sys, time
    from fastproxy import admin as A
    state = {"exhausted": 0}
    def ready(_):
        return (503, b"NOT READY\\n", A.TEXT) if state["exhausted"] else (200, b"LIVE\\n", A.TEXT)
    s = A.HttpServer(("127.0.0.1", 0), {"GET /ready": ready}, request_timeout=1.0)
    s.start()
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    state["exhausted"] = 1
    print(s.server_address[1], flush=True)
    sys.stdin.readline()  # until the parent says: free them
    for fd in held:
        os.close(fd)
    state["exhausted"] = 0
    print("freed", flush=True)
    sys.stdin.readline()
    print(s.accept_errors, flush=True)
""")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_backs_off_and_ready_still_answers() -> None:
    """With every descriptor taken, the admin thread does not spin (under 5% of a core over
    2 s while clients keep connecting), /ready still answers (503) through the reserve
    descriptor, and once descriptors are free everything is served again."""
    p = subprocess.Popen([sys.executable, "-c", FD_CHILD], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        assert p.stdout is not None and p.stdin is not None
        port = int(p.stdout.readline())
        # every /ready is served through the reserve descriptor, one after the other
        answers = [status(request(port, b"GET /ready HTTP/1.1\r\n\r\n", timeout=3))
                   for _ in range(5)]
        assert answers == [503] * 5, answers
        # idle clients pile up (one holds the reserve, the rest wait in the backlog) while
        # others keep trying: no spinning
        c0, t0 = proc_cpu(p.pid), time.monotonic()
        waiting = []
        while time.monotonic() - t0 < 2.0:
            waiting.append(socket.create_connection(("127.0.0.1", port)))
            try:
                request(port, b"GET /ready HTTP/1.1\r\n\r\n", timeout=0.1)
            except OSError:
                pass
            time.sleep(0.05)
        cpu = (proc_cpu(p.pid) - c0) / (time.monotonic() - t0)
        assert cpu < 0.05, f"admin process used {cpu:.0%} of a core while out of descriptors"
        for s in waiting:
            s.close()
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "freed"
        deadline = time.monotonic() + 3
        while True:
            try:
                if status(request(port, b"GET /ready HTTP/1.1\r\n\r\n", timeout=1)) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not serving again after descriptors were freed"
            time.sleep(0.05)
        p.stdin.write("\n")
        p.stdin.flush()
        assert int(p.stdout.readline()) > 0  # it did meet EMFILE
    finally:
        p.kill()
        p.wait()


def test_config_dump_is_capped() -> None:
    state = A.AdminState(lambda: {"fd_exhausted": 0}, lambda: {"x": ["y" * 100] * 10000},
                         lambda: None)
    routes = A.admin_routes(state, config_dump_cap=1 << 16)
    req = A.Request("GET", "/config_dump", "", {}, b"", None)
    code, body, _ = routes["GET /config_dump"](req)
    assert code == 413 and len(body) < 200
    assert A.bounded_json({"a": 1}, 100) == b'{\n "a": 1\n}\n'


def test_ready_follows_fd_exhausted() -> None:
    stats = {"fd_exhausted": 0}
    state = A.AdminState(lambda: stats, lambda: {}, lambda: None)
    ready = A.admin_routes(state)["GET /ready"]
    req = A.Request("GET", "/ready", "", {}, b"", None)
    assert ready(req)[0] == 503  # not started yet
    state.ready = True
    assert ready(req)[0] == 200
    stats["fd_exhausted"] = 1
    assert ready(req)[0] == 503
    stats["fd_exhausted"] = 0
    assert ready(req)[0] == 200


# -- who may call mutating routes ------------------------------------------------------------------

def curl_as(uid: int, url: str, *extra: str) -> int:
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "curl",
                        "-sS", "-g", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", *extra,
                        url], capture_output=True, text=True, timeout=20, cwd="/")
    return int(r.stdout or 0)


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Tuple[A.HttpServer, A.HttpServer, List[str], Path]]:
    if os.geteuid() != 0:
        pytest.skip("needs root (clients as other UIDs)")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-admin-token-0123456789\n")
    token_file.chmod(0o600)
    hits: List[str] = []
    state = A.AdminState(lambda: {}, lambda: {}, lambda: hits.append("quit"))
    sock_dir = Path(tempfile.mkdtemp(prefix="fp-admin-"))  # pytest's tmp_path is root's only
    sock_dir.chmod(0o755)
    sock_path = sock_dir / "admin.sock"
    guard = A.Guard(allow_uids=[OWN_UID], token=A.read_token_file(str(token_file)))
    v4 = A.AdminServer(("127.0.0.1", 0), state, guard=guard, unix_socket=str(sock_path),
                       unix_owner=(OWN_UID, OWN_UID))
    v6 = A.AdminServer(("::1", 0), state, guard=guard)
    v4.start()
    v6.start()
    yield v4, v6, hits, sock_path
    v4.close()
    v6.close()
    shutil.rmtree(sock_dir, ignore_errors=True)


def test_only_the_proxy_uid_may_quit(guarded: Tuple[A.HttpServer, A.HttpServer, List[str], Path]) -> None:
    v4, v6, hits, sock_path = guarded
    for srv, host in ((v4, "127.0.0.1"), (v6, "[::1]")):
        url = f"http://{host}:{srv.server_address[1]}/quitquitquit"
        assert curl_as(OTHER_UID, url) == 403
        assert curl_as(0, url) == 403  # root in the app container is not the proxy
        assert hits == []
        assert curl_as(OWN_UID, url) == 200
        assert hits == ["quit"]
        hits.clear()
        assert curl_as(OTHER_UID, url, "-H", "Authorization: Bearer s3cret-admin-token-0123456789") == 200
        assert curl_as(OTHER_UID, url, "-H", "Authorization: Bearer wrong") == 403
        assert hits == ["quit"]
        hits.clear()
        # reads stay open to every local UID
        r = subprocess.run(["setpriv", f"--reuid={OTHER_UID}", "--regid=1000", "--clear-groups",
                            "curl", "-sS", "-g", f"http://{host}:{srv.server_address[1]}/ready"],
                           capture_output=True, text=True, timeout=20)
        assert r.stdout == "NOT READY\n"
    # the Unix socket: mode 0600, owned by the proxy UID; its callers are trusted
    st = os.stat(sock_path)
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, OWN_UID)
    assert curl_as(OWN_UID, "http://x/quitquitquit", "--unix-socket", str(sock_path)) == 200
    assert curl_as(OTHER_UID, "http://x/quitquitquit", "--unix-socket", str(sock_path)) == 0
    assert hits == ["quit"]


def test_token_file_must_be_private(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("s3cret-admin-token-0123456789")
    f.chmod(0o644)
    with pytest.raises(A.AdminError, match="chmod 0600"):
        A.read_token_file(str(f))
    f.chmod(0o600)
    f.write_text("short")
    with pytest.raises(A.AdminError, match="16..4096"):
        A.read_token_file(str(f))


# -- end to end ---------------------------------------------------------------------------------

@pytest.mark.netns
def test_app_cannot_stop_the_sidecar(topo: netkit.Topology, fastproxy_exe: str) -> None:
    sc = netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=1)
    sc.apply_rules()
    sc.start()
    try:
        url = f"http://127.0.0.1:{sc.admin_port}/quitquitquit"
        for uid in (netkit.USER, 0):
            r = topo.app.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                              url], user=uid)
            assert r.stdout == "403"
        assert sc.proc is not None and sc.proc.poll() is None
        assert topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"] == "data"
        r = topo.app.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          url], user=netkit.PROXY_UID)
        assert r.stdout == "200"
        assert sc.wait(10) == 0
    finally:
        sc.kill()
    log = sc.log_tail()
    assert "fastproxy stopped after" in log


@pytest.mark.netns
def test_start_and_exit_lines_and_fd_limit(topo: netkit.Topology, fastproxy_exe: str) -> None:
    """At the default log level (error) the start line says where it listens, who it is, the
    egress mode and policy count, and the open-file limit raised from 1024 to the hard 20000;
    the exit line says how the drain went."""
    sc = netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=1,
                        extra=["--service-account", "app", "--namespace", "app"])
    sc.args = ["--nofile=1024:20000", fastproxy_exe, *sc.args]
    sc.exe = "prlimit"
    sc.start()
    try:
        with open(f"/proc/{sc.proc.pid}/limits") as f:  # type: ignore[union-attr]
            limits = [ln for ln in f if ln.startswith("Max open files")][0].split()
        assert limits[3:5] == ["20000", "20000"], limits
    finally:
        assert sc.terminate() == 0
    lines = [ln for ln in sc.log_tail().splitlines() if " NOTICE " in ln]
    assert len(lines) == 2, sc.log_tail()
    start, stop = lines
    for w in ("fastproxy 0.", "outbound :15001", "admin 127.0.0.1:15000", "metrics",
              "identity app/app", "egress passthrough", "0 of 0 Egress policies",
              "open-file limit 20000 (was 1024, hard 20000)", "uid 1500"):
        assert w in start, (w, start)
    assert "drain" in stop and "reset at the deadline" in stop


def test_dual_stack_listener_finds_an_ipv4_client() -> None:
    """On a listener bound to ::, an IPv4 client shows up as ::ffff:127.0.0.1; its socket is
    found in /proc/net/tcp all the same."""
    if os.geteuid() != 0:
        pytest.skip("needs root (clients as other UIDs)")
    hits: List[str] = []
    state = A.AdminState(lambda: {}, lambda: {}, lambda: hits.append("quit"))
    srv = A.AdminServer(("::", 0), state, guard=A.Guard(allow_uids=[OWN_UID]))
    srv.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/quitquitquit"
        assert curl_as(OTHER_UID, url) == 403
        assert curl_as(OWN_UID, url) == 200
        assert hits == ["quit"]
    finally:
        srv.close()


@pytest.mark.netns
def test_token_file_and_socket_end_to_end(topo: netkit.Topology, fastproxy_exe: str) -> None:
    """A token file others can read stops the start with one clear line; with a private one the
    app's UID may quit with the token; the Unix socket is the proxy UID's."""
    token = topo.tmp / "admin.token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o644)
    sc = netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=1,
                        extra=["--admin-token-file", str(token)])
    with pytest.raises(netkit.NetkitError):
        sc.start(timeout=10)
    assert "cannot start:" in sc.log_tail() and "chmod 0600" in sc.log_tail()
    assert "Traceback" not in sc.log_tail()
    token.chmod(0o600)
    sock = topo.tmp / "admin.sock"
    sc = netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=1,
                        extra=["--admin-token-file", str(token), "--admin-socket", str(sock)])
    sc.start()
    try:
        st = os.stat(sock)
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, netkit.PROXY_UID)
        r = topo.app.run(["curl", "-sS", "--unix-socket", str(sock), "http://x/ready"],
                         user=netkit.PROXY_UID)
        assert r.stdout == "LIVE\n"
        url = f"http://127.0.0.1:{sc.admin_port}/quitquitquit"
        r = topo.app.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "-H", "Authorization: Bearer 0123456789abcdef0123456789abcdef", url],
                         user=netkit.USER)
        assert r.stdout == "200"
        assert sc.wait(10) == 0
    finally:
        sc.kill()
    assert not sock.exists()  # removed on exit


def test_config_dump_of_an_alias_bomb_stops_at_the_cap() -> None:
    """Shared structure (what a YAML alias bomb decodes to) is 10^9 leaves when encoded; the
    dump stops at the cap, quickly and without building the whole text."""
    level: object = ["lol"] * 10
    for _ in range(8):
        level = [level] * 10
    state = A.AdminState(lambda: {}, lambda: {"observability": level}, lambda: None)
    t0 = time.monotonic()
    code, _, _ = A.admin_routes(state)["GET /config_dump"](
        A.Request("GET", "/config_dump", "", {}, b"", None))
    assert code == 413
    assert time.monotonic() - t0 < 5


SLOWLORIS = """
import socket, sys, time
held = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"GET /config_dump HTTP/1.1\\r\\nX-a: ")
    held.append(s)
print("holding", flush=True)
t0 = time.monotonic()
while time.monotonic() - t0 < float(sys.argv[3]):
    for s in held:
        try:
            s.send(b"a")  # one byte now and then, as a slow-loris client does
        except OSError:
            pass
    time.sleep(0.5)
"""


@pytest.mark.netns
def test_app_slowloris_does_not_starve_ready(topo: netkit.Topology, fastproxy_exe: str) -> None:
    """The app holds 200 half-sent requests on the admin port: /ready keeps answering at once
    and the admin thread stays cheap."""
    sc = netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=1)
    with sc.serving():
        p = topo.app.popen([netkit.PY, "-c", SLOWLORIS, str(sc.admin_port), "200", "4"],
                           user=netkit.USER, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "holding"
        assert sc.proc is not None
        pid = sc.proc.pid
        tids = [t for t in os.listdir(f"/proc/{pid}/task")
                if open(f"/proc/{pid}/task/{t}/comm").read().strip() == "fp-admin"]
        assert len(tids) == 1

        def admin_cpu() -> float:
            with open(f"/proc/{pid}/task/{tids[0]}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = admin_cpu(), time.monotonic()
        slowest = 0.0
        while time.monotonic() - t0 < 3.0:
            t = time.monotonic()
            assert sc.admin("GET", "/ready", timeout=2.0)[0] == 200
            slowest = max(slowest, time.monotonic() - t)
            time.sleep(0.05)
        cpu = (admin_cpu() - c0) / (time.monotonic() - t0)
        assert slowest < 0.5, slowest
        assert cpu < 0.2, f"admin thread at {cpu:.0%}"
        p.wait(timeout=10)
