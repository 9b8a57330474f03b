"""The bare splice relay (`bench/tools/barerelay.c`, case `bare-relay`) in the bench's own lab:
reached through an iptables REDIRECT, as UID 1500, as in the suite. Needs root (network
namespaces); about 15 s. The bench's ratios to this relay are only worth something if it relays
every byte, passes half-closes and resets on, and waits (not spins) on a slow reader."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from bench import deps, lab as L, measure as M

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")

SINK_HASH = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('%s', int(sys.argv[1]))); s.listen(8)
for _ in range(int(sys.argv[2])):
    c, _ = s.accept(); h = hashlib.sha256(); n = 0
    while True:
        b = c.recv(1 << 20)
        if not b: break
        h.update(b); n += len(b)
    c.sendall(('%%s %%d' %% (h.hexdigest(), n)).encode()); c.close()
""" % L.SERVER_IP

SEND_HASH = r"""
import hashlib, socket, sys
data = open(sys.argv[2], 'rb').read()
s = socket.create_connection(('%s', int(sys.argv[1])), timeout=20)
s.sendall(data); s.shutdown(socket.SHUT_WR)
got = b''
while True:
    b = s.recv(4096)
    if not b: break
    got += b
print(got.decode(), hashlib.sha256(data).hexdigest(), len(data))
""" % L.SERVER_IP

OUTCOME = r"""
import socket, struct, sys, time
try:
    s = socket.create_connection(('%s', int(sys.argv[1])), timeout=3)
    s.sendall(b'hello'); time.sleep(0.3)
    print('data', repr(s.recv(10)))
except OSError as e:
    print(type(e).__name__)
""" % L.SERVER_IP

RESETTER = r"""
import socket, struct
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('%s', 9998)); s.listen(1)
c, _ = s.accept(); c.recv(10)
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()
""" % L.SERVER_IP

SLOW_SINK = r"""
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('%s', 9997)); s.listen(1)
c, _ = s.accept(); time.sleep(2); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    n += len(b)
c.sendall(str(n).encode()); c.close()
""" % L.SERVER_IP


def listening(lab, port: int, proc) -> None:
    """Waits until a server in ext listens on `port` (read from /proc, so that no probe
    connection reaches servers that count their connections)."""
    want = f":{port:04X}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        r = lab.ext.run(["cat", "/proc/net/tcp"])
        out = r.stdout if isinstance(r.stdout, str) else r.stdout.decode()
        if any(l.split()[1].endswith(want) and l.split()[3] == "0A"
               for l in out.splitlines()[1:]):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} in ext")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    fpload = deps.ensure_fpload(tmp_path_factory.mktemp("bin"))
    logs = tmp_path_factory.mktemp("logs")
    # `false` as the fastproxy command: the lab writes the same FSM rules itself
    with L.Lab(fpload, ["false"], logs) as lab:
        lab.set_rules("intercept")
        lab.bare = deps.ensure_barerelay(lab.tmp / "bin")   # the lab's folder: UID 1500 reads it
        if not deps.readable_by_others(Path(lab.bare)):
            pytest.skip(f"{lab.bare} is not reachable by UID {L.PROXY_UID}")
        yield lab


@pytest.fixture(params=[1, 2], ids=["1t", "2t"])
def relay(request, lab):
    p = lab.popen_app([lab.bare, "-t", str(request.param)], user=L.PROXY_UID,
                      start_new_session=True)
    lab.wait_listen(L.OUTBOUND_PORT, p)
    yield p
    assert p.poll() is None, "the relay died"
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(5)


def test_bytes_arrive_intact_both_ways_with_half_close(lab, relay):
    blob = lab.tmp / "blob"
    blob.write_bytes(os.urandom(24 << 20))
    os.chmod(blob, 0o644)
    srv = lab.ext.popen(["/usr/bin/python3", "-c", SINK_HASH, "9999", "1"])
    listening(lab, 9999, srv)
    r = lab.run_app(["/usr/bin/python3", "-c", SEND_HASH, "9999", str(blob)], timeout=60)
    got_hash, got_n, want_hash, want_n = r.stdout.split()
    # the server saw our FIN after every byte (half-close passed on), then its answer came back
    assert (got_hash, got_n) == (want_hash, want_n)
    srv.wait(10)


def test_load_tools_see_no_errors(lab, relay):
    eight = M.iperf(lab, 8, 1)
    assert eight["bytes"] > 10 << 20
    url = f"http://{L.SERVER_IP}:{L.HTTP_PORT}/"
    for headers in (["Connection: close"], []):
        w = M.wrk(lab, url, 1, 32, headers)
        assert w["errors"] == 0 and w["non2xx"] == 0 and w["requests"] > 100


def test_resets_are_passed_on(lab, relay):
    # nothing listens on port 9 of the server: the client must see a reset, not a clean close
    r = lab.run_app(["/usr/bin/python3", "-c", OUTCOME, "9"])
    assert r.stdout.strip() == "ConnectionResetError"
    srv = lab.ext.popen(["/usr/bin/python3", "-c", RESETTER])
    listening(lab, 9998, srv)
    r = lab.run_app(["/usr/bin/python3", "-c", OUTCOME, "9998"])
    assert r.stdout.strip() == "ConnectionResetError"
    srv.wait(10)


def test_slow_reader_is_waited_for_without_spinning(lab, relay):
    srv = lab.ext.popen(["/usr/bin/python3", "-c", SLOW_SINK])
    listening(lab, 9997, srv)
    c0 = M.cpu_seconds(relay.pid)
    r = lab.run_app(["/usr/bin/python3", "-c",
                     "import socket; s = socket.create_connection(('%s', 9997)); "
                     "s.sendall(b'x' * (48 << 20)); s.shutdown(socket.SHUT_WR); "
                     "print(s.recv(100).decode())" % L.SERVER_IP], timeout=60)
    assert r.stdout.strip() == str(48 << 20)
    assert M.cpu_seconds(relay.pid) - c0 < 0.5   # 2 s of a full pipe: waited, not spun
    srv.wait(10)
