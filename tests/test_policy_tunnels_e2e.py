"""Tunnels only when asked for, and every ClientHello checked (issue 7 items 1 and 2), end to
end: a sidecar with passthrough off and http / https Egress policies (UID 1500), real clients
(raw sockets, curl, openssl s_client) as UID 1000 in app, servers in ext:

- 192.0.2.10:80 the httpbin-like httpd (`/status/101` answers 101 to anything);
- 192.0.2.10:8080 relaysrv's upgrade server (101 + echo for a real Upgrade, reporting the bytes
  that reached it before its 101), 192.0.2.10:3128 relaysrv's CONNECT echo server;
- 192.0.2.10:8443 `openssl s_server` routing by SNI (secure.test / anything else: evil.test's
  certificate) that forces a HelloRetryRequest (X25519 only).

Policies: httpbin.test on 80 and 8080 (no routes: any method but CONNECT), on 3128 without
routes; proxy.test on 3128 with a route naming CONNECT; secure.test on 8443 (https)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import netkit
from netkit import HTTPBIN, USER, Sidecar, Topology, delta
from test_policy_manifests import MESHCONFIG, NS, SA, egress

pytestmark = pytest.mark.netns

PREFIX = "fpn"
UPGRADE_PORT, CONNECT_PORT, TLS_PORT, SPLIT_PORT = 8080, 3128, 8443, 8444
HOSTS = {"secure.test": HTTPBIN, "evil.test": HTTPBIN, "proxy.test": HTTPBIN}
FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"

POLICIES = "---\n".join([
    egress("httpbin", "  hosts:\n  - httpbin.test\n  ports:\n  - number: 80\n    protocol: http\n"
                      f"  - number: {UPGRADE_PORT}\n    protocol: http\n"
                      f"  - number: {CONNECT_PORT}\n    protocol: http\n"),
    egress("proxy", f"  hosts:\n  - proxy.test\n  ports:\n  - number: {CONNECT_PORT}\n"
                    "    protocol: http\n  matches:\n  - apiGroup: specs.smi-spec.io/v1alpha4\n"
                    "    kind: HTTPRouteGroup\n    name: tunnel-route\n"),
    f"apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n"
    f"  name: tunnel-route\n  namespace: {NS}\nspec:\n  matches:\n  - name: tunnel\n"
    f"    methods:\n    - CONNECT\n",
    egress("secure", f"  hosts:\n  - secure.test\n  ports:\n  - number: {TLS_PORT}\n"
                     f"    protocol: https\n  - number: {SPLIT_PORT}\n    protocol: https\n"),
    egress("tls", "  hosts:\n  - tls.test\n  ports:\n  - number: 443\n    protocol: https\n"),
])


def make_cert(topo: Topology, name: str) -> Tuple[str, str]:
    d = topo.tmp / name
    d.mkdir(mode=0o755)
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out",
                    str(cert)], check=True, capture_output=True, timeout=30)
    for p in (cert, key):
        os.chmod(p, 0o644)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(prefix=PREFIX, hosts=HOSTS, ipv6=False) as t:
        t.start_servers(iperf=False)
        srv = t.ext.popen([netkit.PY, netkit.server_path("relaysrv.py"),
                           f"upgrade={HTTPBIN}:{UPGRADE_PORT}", f"connect={HTTPBIN}:{CONNECT_PORT}",
                           f"hrr={HTTPBIN}:{SPLIT_PORT}"])
        evil, secure = make_cert(t, "evil.test"), make_cert(t, "secure.test")
        tls = t.ext.popen(["openssl", "s_server", "-accept", f"{HTTPBIN}:{TLS_PORT}", "-www",
                           "-tls1_3", "-groups", "X25519", "-cert", evil[0], "-key", evil[1],
                           "-servername", "secure.test", "-cert2", secure[0], "-key2", secure[1]])
        for proc, port in ((srv, UPGRADE_PORT), (srv, CONNECT_PORT), (srv, SPLIT_PORT),
                           (tls, TLS_PORT)):
            t.wait_port(HTTPBIN, port, proc=proc)
        yield t


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str) -> Iterator[Sidecar]:
    cfg = topo.tmp / "config"
    cfg.mkdir(mode=0o755)
    netkit.write_config(cfg, "meshconfig.yaml", MESHCONFIG)
    netkit.write_config(cfg, "policies.yaml", POLICIES)
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg), workers=2, drain_seconds=2,
                 extra=["--service-account", SA, "--namespace", NS]).serving() as sc:
        yield sc


#: One connection, a script of steps (stdin JSON {"ip", "port", "steps"}):
#:   {"send": text}                 send the text (latin-1)
#:   {"response": true}             read one response head (+ Content-Length body)
#:   {"echo": [n, seed]}            send n detdata bytes, read n back; compare (an echo tunnel)
#:   {"raw": n}                     read exactly n bytes
#:   {"eof": true}                  half-close, then read to EOF (how many bytes came)
#: stdout: JSON list of results; an exception ends the script with {"error": ...}.
SCRIPT = r"""
import hashlib, json, socket, sys, threading
sys.path.insert(0, sys.argv[1])
import detdata
job = json.load(sys.stdin)
s = socket.create_connection((job["ip"], job["port"]), timeout=10)
f = s.makefile("rb")
out = []
try:
    for st in job["steps"]:
        if "send" in st:
            s.sendall(st["send"].encode("latin-1"))
        elif "response" in st:
            line = f.readline()
            if not line:
                raise ConnectionError("closed before a response")
            h = {}
            while True:
                l = f.readline()
                if l in (b"\r\n", b"\n", b""):
                    break
                k, _, v = l.decode().partition(":")
                h[k.strip().lower()] = v.strip()
            body = f.read(int(h.get("content-length", "0")))
            out.append({"status": int(line.split()[1]), "headers": h, "body": body.decode("latin-1")})
        elif "echo" in st:
            n, seed = st["echo"]
            t = threading.Thread(target=lambda: [s.sendall(b) for b in detdata.blocks(seed, n)])
            t.start()
            got = hashlib.sha256(); left = n
            while left:
                b = f.read1(min(left, 1 << 16))
                if not b:
                    raise ConnectionError("echo cut short")
                got.update(b); left -= len(b)
            t.join()
            out.append({"echo_ok": got.hexdigest() == detdata.sha256(seed, n)})
        elif "raw" in st:
            out.append({"raw": f.read(st["raw"]).decode("latin-1")})
        elif "eof" in st:
            s.shutdown(socket.SHUT_WR)
            out.append({"eof_after": len(f.read())})
except OSError as e:
    out.append({"error": f"{type(e).__name__}: {e}"})
print(json.dumps(out))
"""


def script(topo: Topology, port: int, steps: List[dict]) -> List[dict]:
    r = topo.app.run([netkit.PY, "-c", SCRIPT, str(netkit.SERVERS_DIR)], user=USER, timeout=30,
                     input=json.dumps({"ip": HTTPBIN, "port": port, "steps": steps}))
    return json.loads(r.stdout)


def get(host: str, path: str = "/get", extra: str = "") -> str:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n"


UPGRADE = "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"


# -- a 101 nobody asked for is not a tunnel ----------------------------------------------------

def test_status_101_then_other_host_gets_403(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = script(topo, 80, [{"send": get("httpbin.test", "/status/101")}, {"response": True},
                          {"send": get("evil.test")}, {"response": True},
                          {"send": get("httpbin.test")}, {"response": True}])
    assert [x.get("status") for x in r] == [101, 403, 200], r
    assert r[1]["body"] == "Access denied"  # the sidecar's answer: never reached the server
    assert json.loads(r[2]["body"])["host"] == "httpbin.test"
    after = sidecar.wait_closed(before)
    assert delta(after, before, "http_denied") == 1
    assert delta(after, before, "http_allowed") == 2


# -- a genuine upgrade --------------------------------------------------------------------------

def test_upgrade_tunnel_holds_pipelined_bytes_until_101(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = script(topo, UPGRADE_PORT, [{"send": get("httpbin.test", "/ws", UPGRADE) + "EARLY"},
                                    {"response": True}, {"raw": 5},
                                    {"echo": [3 << 20, 5]}, {"eof": True}])
    assert r[0]["status"] == 101, r
    assert r[0]["headers"]["x-early-bytes"] == "0", r  # nothing behind the request before 101
    assert r[1] == {"raw": "EARLY"} and r[2] == {"echo_ok": True} and r[3] == {"eof_after": 0}, r
    after = sidecar.wait_closed(before)
    assert delta(after, before, "bytes_c2u") >= 3 << 20
    assert delta(after, before, "http_allowed") == 1


def test_upgrade_answered_without_101_keeps_checking(topo: Topology, sidecar: Sidecar) -> None:
    """The server declines the upgrade: what was pipelined behind it is the next request, and
    is checked like one."""
    r = script(topo, UPGRADE_PORT, [{"send": get("httpbin.test", "/noupgrade", UPGRADE)
                                     + get("evil.test")},
                                    {"response": True}, {"response": True},
                                    {"send": get("httpbin.test")}, {"response": True}])
    assert [x.get("status") for x in r] == [200, 403, 200], r
    assert r[2]["body"] == "host=httpbin.test"


def test_101_without_upgrade_request_on_upgrade_server(topo: Topology, sidecar: Sidecar) -> None:
    """Upgrade without Connection: upgrade is no request for a switch: the server's 101 is a
    plain response and the next request (another host) is refused."""
    r = script(topo, UPGRADE_PORT, [{"send": get("httpbin.test", "/status/101",
                                                 "Upgrade: websocket\r\n")},
                                    {"response": True},
                                    {"send": get("evil.test")}, {"response": True}])
    assert [x.get("status") for x in r] == [101, 403], r


# -- CONNECT --------------------------------------------------------------------------------------

def test_connect_refused_unless_a_route_names_it(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    connect = "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n"
    r = script(topo, 80, [{"send": connect.format("httpbin.test:80")}, {"response": True},
                          {"send": get("httpbin.test")}, {"response": True}])
    assert [x.get("status") for x in r] == [403, 200], r
    r = script(topo, CONNECT_PORT, [{"send": connect.format(f"httpbin.test:{CONNECT_PORT}")},
                                    {"response": True}])
    assert r[0]["status"] == 403 and r[0]["body"] == "Access denied", r
    # a route that names CONNECT: the tunnel works, bytes checksummed both ways
    r = script(topo, CONNECT_PORT, [{"send": connect.format(f"proxy.test:{CONNECT_PORT}")},
                                    {"response": True}, {"echo": [1 << 20, 9]}, {"eof": True}])
    assert r[0]["status"] == 200 and r[1] == {"echo_ok": True} and r[2] == {"eof_after": 0}, r
    after = sidecar.wait_closed(before, n=3)
    assert delta(after, before, "http_tunnel_denied") == 2


def test_curl_proxytunnel_refused(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.curl("-v", "-p", "-x", "http://httpbin.test:80", "http://httpbin.test/get")
    assert r.returncode != 0 and "403" in r.stderr, (r.returncode, r.stderr[-600:])
    assert delta(sidecar.wait_closed(before), before, "http_tunnel_denied") == 1


# -- TLS: every ClientHello checked ----------------------------------------------------------------

def test_hello_retry_request_legitimate_client(topo: Topology, sidecar: Sidecar) -> None:
    """openssl s_client offering a P-256 key share first, to a server that takes only X25519:
    a HelloRetryRequest, a second ClientHello with the same name, a working connection."""
    before = sidecar.stats()
    r = topo.app.run(["openssl", "s_client", "-connect", f"{HTTPBIN}:{TLS_PORT}", "-servername",
                      "secure.test", "-groups", "P-256:X25519", "-tls1_3", "-ign_eof"],
                     user=USER, input="GET / HTTP/1.0\r\n\r\n", check=False, timeout=20)
    assert "CN = secure.test" in r.stdout and "HTTP/1.0 200 ok" in r.stdout, r.stdout[-1500:]
    after = sidecar.wait_closed(before)
    assert delta(after, before, "tls_hrr") == 1
    assert delta(after, before, "tls_sni_changed") == 0


#: A hand-made TLS 1.3 client: ClientHello 1 names secure.test with no key share, so the server
#: asks again (HelloRetryRequest); ClientHello 2 (after a change_cipher_spec, in records of
#: `size` bytes sent one by one) names argv[3]. Prints {"hrr", "answer"}: answer "server-hello",
#: "reset", "eof" or "other".
HRR_CLIENT = r"""
import json, os, socket, sys, time
sys.path.insert(0, sys.argv[1])
import peek_inputs as pi
ip, port, name, size = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode(), int(sys.argv[5])
s = socket.create_connection((ip, port), timeout=5)
def handshake_start():
    # the next whole handshake message the server sends, from however many records
    data, hs = b"", b""
    while len(hs) < 4 or len(hs) < 4 + int.from_bytes(hs[1:4], "big"):
        b = s.recv(4096)
        if not b:
            return None
        data += b
        while len(data) >= 5 and len(data) >= 5 + int.from_bytes(data[3:5], "big"):
            k = 5 + int.from_bytes(data[3:5], "big")
            if data[0] == 22:
                hs += data[5:k]
            data = data[k:]
    return hs
s.sendall(pi.tls13_hello(b"secure.test", groups=(pi.X25519,)))
hs = handshake_start()
hrr = hs is not None and hs[0] == 2 and hs[6:38] == pi.HRR_RANDOM
share = [(pi.X25519, os.urandom(32))]
hs_len = len(pi.tls13_hello(name, share, groups=(pi.X25519,))) - 5
ch2 = pi.CCS + pi.tls13_hello(name, share, groups=(pi.X25519,),
                              sizes=[size] * (hs_len // size) if size else ())
for i in range(0, len(ch2), 7 if size else len(ch2)):
    s.sendall(ch2[i:i + (7 if size else len(ch2))])
    if size:
        time.sleep(0.002)
try:
    hs = handshake_start()
    answer = "eof" if hs is None else ("server-hello" if hs[0] == 2 and hs[6:38] != pi.HRR_RANDOM
                                       else "other")
except ConnectionResetError:
    answer = "reset"
print(json.dumps({"hrr": hrr, "answer": answer}))
"""


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_watched_handshakes_without_retry_work(topo: Topology, sidecar: Sidecar,
                                               version: str) -> None:
    """The watch holds the client's bytes only until the ServerHello: TLS 1.2 and 1.3
    handshakes without a retry, and what follows them, go through unchanged."""
    before = sidecar.stats()
    r = topo.curl("--cacert", topo.cacert, f"--tlsv{version}", "--tls-max", version,
                  "-o", "/dev/null", "-w", "%{http_code}", "https://tls.test/bytes/300000?seed=3")
    assert r.returncode == 0 and r.stdout == "200", (r.returncode, r.stderr)
    after = sidecar.wait_closed(before)
    assert delta(after, before, "bytes_u2c") > 300000
    assert delta(after, before, "tls_hrr") == 0 and delta(after, before, "cx_allowed") == 1


@pytest.mark.parametrize("size,port", [(0, TLS_PORT), (9, TLS_PORT), (0, SPLIT_PORT)],
                         ids=["one-record", "tiny-records", "server-splits-hrr"])
def test_second_client_hello_must_name_the_same_server(topo: Topology, sidecar: Sidecar,
                                                       size: int, port: int) -> None:
    """openssl s_server, or (server-splits-hrr) a server sending its HelloRetryRequest in
    1-byte records, one write each: the sidecar classifies it from the pieces."""
    def run(name: str) -> dict:
        r = topo.app.run([netkit.PY, "-c", HRR_CLIENT, str(FUZZ_DIR), HTTPBIN, str(port),
                          name, str(size)], user=USER, timeout=20)
        return json.loads(r.stdout)

    before = sidecar.stats()
    assert run("secure.test") == {"hrr": True, "answer": "server-hello"}
    assert run("SECURE.test.") == {"hrr": True, "answer": "server-hello"}  # same name
    assert run("evil.test") == {"hrr": True, "answer": "reset"}
    assert run("secure.test.evil.test") == {"hrr": True, "answer": "reset"}
    after = sidecar.wait_closed(before, n=4)
    assert delta(after, before, "tls_hrr") == 4
    assert delta(after, before, "tls_sni_changed") == 2
