"""Egress policies end to end, as in FSM's egress policy demo: passthrough off
(`enableEgress: false`), `Egress` objects for the service account curl/curl, and real clients
(curl, openssl s_client, Python sockets) run as UID 1000 in the app namespace, whose TCP the rules
of `fastproxy iptables --apply` redirect into `fastproxy run` (UID 1500).

One topology and one sidecar serve the whole module. The configuration is a folder the tests
change while the sidecar runs (it reloads on a file change): every change is one atomic rename,
and each test that changes something puts the standard policies back before it ends.

Names (in /etc/netns/*/hosts): httpbin.test, deny.test and routes.test are the same HTTP server
(192.0.2.10:80); tls.test and httpbin.test name the same TLS server (192.0.2.10:443);
*.example.test names a second TLS server (203.0.113.10:443); 192.0.2.20 holds a banner and a sink
server on the ports that the tcp policies allow on 192.0.2.10 only; 203.0.113.10:8080 is an
in-mesh Service."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest

import netkit
from netkit import HTTPBIN, OTHER_HOST, USER, Sidecar, Topology, delta
from servers import detdata
from test_policy_manifests import (BAD_EGRESSES, MESHCONFIG, NS, SA, egress, route_group,
                                   service)

pytestmark = pytest.mark.netns

PREFIX = "fpp"
PEEK_TIMEOUT = 1.0
#: The other host: same ports as HTTPBIN's tcp servers, not named by the tcp policies.
OTHER_TCP_HOST = netkit.CLOSED_HOST  # 192.0.2.20
MESH_IP, MESH_PORT = OTHER_HOST, 8080
WILD_TLS_IP = OTHER_HOST

EXTRA_HOSTS = {
    "deny.test": HTTPBIN,
    "routes.test": HTTPBIN,
    "example.test": WILD_TLS_IP,
    "a.example.test": WILD_TLS_IP,
    "a.b.example.test": WILD_TLS_IP,
    "mesh.test": MESH_IP,
}

HTTP_ANY = egress("httpbin-80", "  hosts:\n  - httpbin.test\n  ports:\n"
                                "  - number: 80\n    protocol: http\n")
HTTP_ROUTES = egress("routes-80", "  hosts:\n  - routes.test\n  ports:\n"
                                  "  - number: 80\n    protocol: http\n  matches:\n"
                                  "  - apiGroup: specs.smi-spec.io/v1alpha4\n"
                                  "    kind: HTTPRouteGroup\n    name: egress-http-route\n")
HTTPS_SNI = egress("tls-443", "  hosts:\n  - tls.test\n  - '*.example.test'\n  ports:\n"
                              "  - number: 443\n    protocol: https\n")
TCP_SINK = egress("sink-9000", f"  ipAddresses:\n  - {HTTPBIN}/32\n  ports:\n"
                               f"  - number: {netkit.SINK_PORT}\n    protocol: tcp\n")
TCP_BANNER = egress("smtp-25", f"  ipAddresses:\n  - {HTTPBIN}/32\n  ports:\n"
                               f"  - number: {netkit.BANNER_PORT}\n"
                               f"    protocol: tcp-server-first\n")
#: Policies for other identities: another service account in our namespace, ours in another.
OTHER_SOURCES = ("  sources:\n  - kind: ServiceAccount\n    name: httpbin\n    namespace: curl\n"
                 "  - kind: ServiceAccount\n    name: curl\n    namespace: other\n")
OTHER_SA = (egress("others-80", "  hosts:\n  - deny.test\n  ports:\n"
                                "  - number: 80\n    protocol: http\n", sources=OTHER_SOURCES)
            + "---\n"
            + egress("others-9001", f"  ports:\n  - number: {netkit.SOURCE_PORT}\n"
                                    f"    protocol: tcp\n", sources=OTHER_SOURCES))


def policies(routes: Tuple[Tuple[str, str], ...] = (("get", "/get"),)) -> str:
    """The standard policy file; `routes` are the HTTPRouteGroup's (name, pathRegex) matches."""
    docs = [route_group("egress-http-route", list(routes)), HTTP_ANY, HTTP_ROUTES, HTTPS_SNI,
            TCP_SINK, TCP_BANNER, OTHER_SA]
    return "---\n".join(docs)


# -- topology, configuration, sidecar ------------------------------------------------------------

def make_cert(topo: Topology, sub: str, names: List[str]) -> Tuple[str, str]:
    """A self-signed CA certificate for `names` in topo.tmp/sub; (cert, key), world-readable."""
    d = topo.tmp / sub
    d.mkdir(mode=0o755)
    cert, key = d / "cert.pem", d / "key.pem"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    f"/CN={names[0]}", "-addext", f"subjectAltName={san}", "-addext",
                    "basicConstraints=critical,CA:TRUE", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    for p in (cert, key):
        os.chmod(p, 0o644)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    """The standard servers, plus: banner and sink on OTHER_TCP_HOST, an HTTP server at the
    in-mesh ClusterIP and a TLS server for *.example.test (sets topo.wildcert)."""
    with Topology(prefix=PREFIX, hosts=EXTRA_HOSTS, ipv6=False) as t:
        t.start_servers(iperf=False)
        tcp = t.ext.popen([netkit.PY, netkit.server_path("tcpsrv.py"),
                           f"banner={OTHER_TCP_HOST}:{netkit.BANNER_PORT}",
                           f"sink={OTHER_TCP_HOST}:{netkit.SINK_PORT}"])
        mesh = t.ext.popen([netkit.PY, netkit.server_path("httpd.py"), "--listen",
                            f"{MESH_IP}:{MESH_PORT}"])
        cert, key = make_cert(t, "wild", ["example.test", "a.example.test", "a.b.example.test"])
        t.wildcert = cert  # type: ignore[attr-defined]
        wild = t.ext.popen([netkit.PY, netkit.server_path("httpd.py"), "--tls", cert, key,
                            "--listen", f"{WILD_TLS_IP}:443"])
        for proc, ip, port in ((tcp, OTHER_TCP_HOST, netkit.BANNER_PORT),
                               (tcp, OTHER_TCP_HOST, netkit.SINK_PORT),
                               (mesh, MESH_IP, MESH_PORT), (wild, WILD_TLS_IP, 443)):
            t.wait_port(ip, port, proc=proc)
        yield t


class ConfigDir:
    """The sidecar's configuration folder: meshconfig.yaml, services.yaml, policies.yaml.
    Every change is an atomic rename, so the sidecar never reads half a file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o755)
        self.write("meshconfig.yaml", MESHCONFIG)
        self.write("services.yaml", service("mesh-http", MESH_IP, MESH_PORT))
        self.write("policies.yaml", policies())

    def write(self, name: str, text: str) -> None:
        tmp = self.root / f".{name}.tmp"  # names starting with '.' are not read
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.root / name)

    def remove(self, name: str) -> None:
        (self.root / name).unlink()


def reload_count(st: dict) -> int:
    return st["reloads"] + st["reload_failures"]


def change(sc: Sidecar, fn: Callable[[], None], timeout: float = 5.0) -> Tuple[dict, float]:
    """Runs fn (one atomic change of the configuration folder) and waits until the sidecar has
    tried to load it (by its file watcher, no signal). Returns (stats, seconds it took)."""
    before = reload_count(sc.stats())
    t0 = time.monotonic()
    fn()
    deadline = t0 + timeout
    while True:
        st = sc.stats()
        if reload_count(st) > before:
            return st, time.monotonic() - t0
        assert time.monotonic() < deadline, f"no reload within {timeout}s:\n{sc.log_tail()}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cfg(topo: Topology) -> ConfigDir:
    return ConfigDir(topo.tmp / "config")


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str, cfg: ConfigDir) -> Iterator[Sidecar]:
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg.root), workers=2,
                 drain_seconds=2, extra=["--service-account", SA, "--namespace", NS,
                                         "--peek-timeout", str(PEEK_TIMEOUT)]).serving() as sc:
        yield sc


# -- clients ------------------------------------------------------------------------------------

def curl_status(topo: Topology, *args: str) -> Tuple[int, str, subprocess.CompletedProcess]:
    """(HTTP status, body, result) of `curl ARGS` (as USER); status 0 when curl failed."""
    r = topo.curl("-w", "\n%{http_code}", *args)
    body, _, code = r.stdout.rpartition("\n")
    return (int(code) if r.returncode == 0 else 0), body, r


def assert_reset_at_once(r: subprocess.CompletedProcess, codes: Tuple[int, ...]) -> None:
    """curl failed with a connection error (not a timeout, not an HTTP answer), quickly."""
    assert r.returncode in codes, (r.returncode, r.stdout, r.stderr)
    assert r.seconds < 1.5, r.seconds  # type: ignore[attr-defined]


#: Several HTTP/1.1 requests on ONE connection, run as USER in app. stdin: JSON
#: {"ip", "port", "requests": [{"method", "host", "path", "size", "seed", "chunked"}]};
#: stdout: JSON list of {"status", "length", "sha256", "head", "close"}, or {"error"} for the
#: request where the connection broke (then nothing further is sent).
RAW_HTTP = r"""
import hashlib, json, socket, sys
sys.path.insert(0, sys.argv[1])
import detdata
job = json.load(sys.stdin)
s = socket.create_connection((job["ip"], job["port"]), timeout=10)
f = s.makefile("rb")
out = []
for q in job["requests"]:
    try:
        size = q.get("size", 0)
        head = f"{q['method']} {q['path']} HTTP/1.1\r\nHost: {q['host']}\r\n"
        if q.get("chunked"):
            head += "Transfer-Encoding: chunked\r\n"
        elif size or q["method"] == "POST":
            head += f"Content-Length: {size}\r\n"
        s.sendall((head + "\r\n").encode())
        for block in detdata.blocks(q.get("seed", 1), size) if size else ():
            for i in range(0, len(block), 65536):
                part = block[i:i + 65536]
                s.sendall(b"%x\r\n%s\r\n" % (len(part), part) if q.get("chunked") else part)
        if q.get("chunked"):
            s.sendall(b"0\r\n\r\n")
        status_line = f.readline()
        if not status_line:
            raise ConnectionError("connection closed before a response")
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = f.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
        out.append({"status": status, "length": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                    "head": body[:200].decode(errors="replace"),
                    "close": headers.get("connection", "").lower() == "close"})
    except OSError as e:
        out.append({"error": f"{type(e).__name__}: {e}"})
        break
s.close()
print(json.dumps(out))
"""


def raw_http(topo: Topology, requests: List[dict], ip: str = HTTPBIN, port: int = 80) -> List[dict]:
    r = topo.app.run([netkit.PY, "-c", RAW_HTTP, str(netkit.SERVERS_DIR)], user=USER,
                     input=json.dumps({"ip": ip, "port": port, "requests": requests}), timeout=30)
    return json.loads(r.stdout)


def openssl_client(topo: Topology, ip: str, *args: str, send: str = ""
                   ) -> subprocess.CompletedProcess:
    """`openssl s_client -connect ip:443 ARGS` as USER with `send` on stdin; never raises for
    its exit status; the result has `seconds`."""
    t0 = time.monotonic()
    r = topo.app.run(["openssl", "s_client", "-connect", f"{ip}:443", *args], user=USER,
                     input=send, check=False, timeout=20)
    r.seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    return r


# -- passthrough off, no policy -------------------------------------------------------------------

@contextlib.contextmanager
def without_policies(sc: Sidecar, cfg: ConfigDir) -> Iterator[dict]:
    """policies.yaml removed (MeshConfig and Service stay) for the duration."""
    st, _ = change(sc, lambda: cfg.remove("policies.yaml"))
    assert st["reload_failures"] == 0 and st["last_reload_error"] is None, st
    try:
        yield st
    finally:
        st, _ = change(sc, lambda: cfg.write("policies.yaml", policies()))
        assert st["last_reload_error"] is None, st


def test_no_policy_http_and_https_fail_at_once(topo: Topology, sidecar: Sidecar,
                                               cfg: ConfigDir) -> None:
    with without_policies(sidecar, cfg):
        before = sidecar.stats()
        assert_reset_at_once(topo.curl("http://httpbin.test/get"), (7, 52, 56))
        assert_reset_at_once(topo.curl("--cacert", topo.cacert, "https://tls.test/get"),
                             (7, 35, 56))
        p = topo.client("connect", HTTPBIN, netkit.SINK_PORT)
        assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
        after = sidecar.stats()
        assert delta(after, before, "cx_denied") == 3
        assert delta(after, before, "cx_allowed") == 0
        assert delta(after, before, "bytes_c2u") == 0
        # in-mesh destinations do not depend on egress policies
        status, body, _ = curl_status(topo, f"http://mesh.test:{MESH_PORT}/get")
        assert status == 200 and json.loads(body)["host"] == f"mesh.test:{MESH_PORT}"
    # and with the policies back, the same request goes through
    status, _, r = curl_status(topo, "http://httpbin.test/get")
    assert status == 200, r.stderr


# -- HTTP: Host, keep-alive, routes, bodies --------------------------------------------------------

def test_http_host_allowed_other_host_gets_403(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    status, body, r = curl_status(topo, "http://httpbin.test/get")
    assert status == 200, r.stderr
    assert json.loads(body)["host"] == "httpbin.test"
    # Host with the port is the same host
    status, body, r = curl_status(topo, "-H", "Host: httpbin.test:80", f"http://{HTTPBIN}/get")
    assert status == 200 and json.loads(body)["host"] == "httpbin.test:80", r.stderr
    r = topo.curl("-i", "http://deny.test/get")
    assert r.returncode == 0, r.stderr
    head, _, body = r.stdout.partition("\n\n")  # text mode: CRLF read as LF
    assert head.startswith("HTTP/1.1 403"), head
    assert "content-length: 13" in head.lower()
    assert body == "Access denied"
    after = sidecar.wait_closed(before, 3)
    assert delta(after, before, "cx_http") == 3
    assert delta(after, before, "http_allowed") == 2
    assert delta(after, before, "http_denied") == 1


def test_keep_alive_each_request_is_decided(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    hosts = ["httpbin.test", "deny.test", "httpbin.test", "deny.test", "deny.test",
             "httpbin.test"]
    paths = ["/get", "/get", "/bytes/5000?seed=3", "/status/200", "/bytes/10", "/get"]
    out = raw_http(topo, [{"method": "GET", "host": h, "path": p} for h, p in zip(hosts, paths)])
    assert [o.get("status") for o in out] == [200, 403, 200, 403, 403, 200], out
    assert json.loads(out[0]["head"])["host"] == "httpbin.test"
    assert out[2]["sha256"] == detdata.sha256(3, 5000)
    for o in (out[1], out[3], out[4]):
        assert (o["head"], o["close"]) == ("Access denied", False), o
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_accepted") == 1  # all on one connection
    assert delta(after, before, "http_allowed") == 3
    assert delta(after, before, "http_denied") == 3


def test_route_group_then_added_match_after_reload(topo: Topology, sidecar: Sidecar,
                                                   cfg: ConfigDir) -> None:
    status, body, _ = curl_status(topo, "http://routes.test/get")
    assert status == 200 and json.loads(body)["path"] == "/get"
    r = topo.curl("-i", "http://routes.test/status/200")
    assert r.stdout.startswith("HTTP/1.1 403") and r.stdout.endswith("\n\nAccess denied"), \
        r.stdout
    # the demo's second step: add a /status.* match by rewriting the file
    wider = policies(routes=(("get", "/get"), ("status", "/status.*")))
    try:
        st, took = change(sidecar, lambda: cfg.write("policies.yaml", wider))
        assert st["last_reload_error"] is None, st
        assert took < 3.0
        assert curl_status(topo, "http://routes.test/status/200")[0] == 200
        assert curl_status(topo, "http://routes.test/status/418")[0] == 418  # the server's
        assert curl_status(topo, "http://routes.test/bytes/10")[0] == 403
    finally:
        change(sidecar, lambda: cfg.write("policies.yaml", policies()))
    assert curl_status(topo, "http://routes.test/status/200")[0] == 403


def test_oversized_request_head_is_not_forwarded(topo: Topology, sidecar: Sidecar) -> None:
    """A request head over the 8 KiB cap does not match any policy, even with an allowed Host
    (the contract's "not matching"): with passthrough off it is denied with the 403, and the
    connection is closed (where the head ends is unknown). One just under the cap is allowed."""
    before = sidecar.stats()
    status, _, r = curl_status(topo, "-H", "X-Pad: " + "a" * 7000, "http://httpbin.test/get")
    assert status == 200, r.stderr
    status, body, r = curl_status(topo, "-H", "X-Pad: " + "a" * 9000, "http://httpbin.test/get")
    assert (status, body) == (403, "Access denied"), (status, body, r.stderr)
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "http_allowed") == 1
    assert delta(after, before, "bytes_c2u") < 8192  # only the small request reached the server


@pytest.fixture(scope="module")
def body_5mb(topo: Topology) -> Tuple[str, str]:
    """A 5 MB file clients can read, and its sha256."""
    path = topo.tmp / "body-5mb"
    with open(path, "wb") as f:
        for block in detdata.blocks(51, 5 << 20):
            f.write(block)
    os.chmod(path, 0o644)
    return str(path), detdata.sha256(51, 5 << 20)


def post_5mb(topo: Topology, sidecar: Sidecar, body: Tuple[str, str], *headers: str,
             max_time: float = 20.0) -> None:
    path, sha = body
    before = sidecar.stats()
    args = [a for h in headers for a in ("-H", h)]
    r = topo.curl("-w", "\n%{http_code}", "-H", "Content-Type: application/octet-stream", *args,
                  "--data-binary", f"@{path}", "http://httpbin.test/sha256", max_time=max_time)
    assert r.returncode == 0, (r.returncode, r.stderr)
    answer, _, code = r.stdout.rpartition("\n")
    assert code == "200" and json.loads(answer) == {"length": 5 << 20, "sha256": sha}
    after = sidecar.wait_closed(before)
    assert delta(after, before, "http_allowed") == 1
    assert delta(after, before, "bytes_c2u") > 5 << 20


def test_post_body_content_length_passes_intact(topo: Topology, sidecar: Sidecar,
                                                body_5mb: Tuple[str, str]) -> None:
    post_5mb(topo, sidecar, body_5mb)


@pytest.mark.parametrize("expect", ["", "100-continue"], ids=["plain", "expect-100"])
def test_post_body_chunked_passes_intact(topo: Topology, sidecar: Sidecar,
                                         body_5mb: Tuple[str, str], expect: str) -> None:
    try:
        post_5mb(topo, sidecar, body_5mb, "Transfer-Encoding: chunked", f"Expect: {expect}",
                 max_time=3.0)
    finally:
        # a stuck connection would stay until the idle timeout (sidecarTimeout: 4 s)
        sidecar.wait_idle(timeout=8.0)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_denied_post_leaves_connection_usable(topo: Topology, sidecar: Sidecar,
                                              chunked: bool) -> None:
    before = sidecar.stats()
    size = 1 << 20
    out = raw_http(topo, [
        {"method": "POST", "host": "deny.test", "path": "/sha256", "size": size, "seed": 61,
         "chunked": chunked},
        {"method": "POST", "host": "httpbin.test", "path": "/sha256", "size": size,
         "seed": 62, "chunked": chunked},
        {"method": "POST", "host": "deny.test", "path": "/sha256", "size": 100, "seed": 63,
         "chunked": chunked},
        {"method": "GET", "host": "httpbin.test", "path": "/get"},
    ])
    assert [o.get("status") for o in out] == [403, 200, 403, 200], out
    assert out[0]["head"] == "Access denied"
    assert json.loads(out[1]["head"]) == {"length": size, "sha256": detdata.sha256(62, size)}
    assert json.loads(out[3]["head"])["host"] == "httpbin.test"
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_accepted") == 1
    assert delta(after, before, "http_denied") == 2
    assert delta(after, before, "http_bad") == 0


# -- HTTPS: SNI ------------------------------------------------------------------------------------

def test_https_allowed_sni(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    status, body, r = curl_status(topo, "--cacert", topo.cacert, "https://tls.test/get")
    assert status == 200, (r.returncode, r.stderr)
    got = json.loads(body)
    assert got["tls"] is True and got["host"] == "tls.test"
    # the same with openssl, certificate verified, a request typed by hand
    r = openssl_client(topo, HTTPBIN, "-servername", "tls.test", "-CAfile", topo.cacert,
                       "-verify_return_error", "-quiet",
                       send="GET /status/204 HTTP/1.1\r\nHost: tls.test\r\n"
                            "Connection: close\r\n\r\n")
    # (its exit status is 1: the test server closes without a TLS close_notify)
    assert r.stdout.startswith("HTTP/1.1 204"), (r.stdout, r.stderr)
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_allowed") == 2
    assert delta(after, before, "cx_denied") == 0


def test_https_other_sni_is_reset(topo: Topology, sidecar: Sidecar) -> None:
    """httpbin.test is in the server's certificate and resolves to the same address: only the
    policy tells it from tls.test."""
    before = sidecar.stats()
    assert_reset_at_once(topo.curl("--cacert", topo.cacert, "https://httpbin.test/get"),
                         (35, 56))
    r = openssl_client(topo, HTTPBIN, "-servername", "httpbin.test", "-brief")
    assert r.returncode != 0 and "CONNECTION ESTABLISHED" not in r.stderr + r.stdout, r
    assert r.seconds < 1.5  # type: ignore[attr-defined]
    # case and a trailing dot do not matter for the allowed name
    for sni in ("TLS.Test", "tls.test."):
        r = openssl_client(topo, HTTPBIN, "-servername", sni, "-brief")
        assert "CONNECTION ESTABLISHED" in r.stderr, (sni, r.stderr)
    after = sidecar.wait_closed(before, 4)
    assert delta(after, before, "cx_denied") == 2
    assert delta(after, before, "cx_allowed") == 2


def test_https_without_sni_is_reset(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    # curl sends no SNI to an IP address
    assert_reset_at_once(topo.curl("--cacert", topo.cacert, f"https://{HTTPBIN}/get"),
                         (35, 56))
    r = openssl_client(topo, HTTPBIN, "-noservername", "-brief")
    assert r.returncode != 0 and "CONNECTION ESTABLISHED" not in r.stderr + r.stdout, r
    assert r.seconds < 1.5  # type: ignore[attr-defined]
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_denied") == 2
    assert delta(after, before, "bytes_c2u") == 0


def test_https_wildcard_matches_one_label(topo: Topology, sidecar: Sidecar) -> None:
    cacert = topo.wildcert  # type: ignore[attr-defined]
    status, body, r = curl_status(topo, "--cacert", cacert, "https://a.example.test/get")
    assert status == 200, r.stderr
    assert json.loads(body)["host"] == "a.example.test"
    before = sidecar.stats()
    for name in ("a.b.example.test", "example.test"):
        assert_reset_at_once(topo.curl("--cacert", cacert, f"https://{name}/get"), (35, 56))
    assert delta(sidecar.stats(), before, "cx_denied") == 2


@pytest.mark.parametrize("port", [netkit.TLS_PORT, netkit.HTTP_PORT], ids=["https", "http"])
def test_silent_client_is_reset_after_peek_timeout(topo: Topology, sidecar: Sidecar,
                                                   port: int) -> None:
    before = sidecar.stats()
    p = topo.client("connect", HTTPBIN, port)  # sends nothing, waits up to 5 s
    assert p["outcome"] == "reset", p
    assert PEEK_TIMEOUT * 0.8 <= p["seconds"] < PEEK_TIMEOUT + 1.5, p
    after = sidecar.stats()
    assert delta(after, before, "cx_peek_timeout") == 1
    assert delta(after, before, "cx_allowed") == 0
    assert delta(after, before, "bytes_c2u") == 0


#: A TLS client driven by hand (ssl.MemoryBIO) that sends its ClientHello in two writes, SPLIT
#: bytes then the rest 0.3 s later, then GET /get. argv: ip name cafile split; prints JSON
#: {"status"} or {"error"}.
TLS_SPLIT = r"""
import json, socket, ssl, sys, time
ip, name, cafile, split = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ssl.create_default_context(cafile=cafile).wrap_bio(inc, out, server_hostname=name)
s = socket.create_connection((ip, 443), timeout=5)
res, first = {}, True
try:
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            data = out.read()
            if first:
                s.sendall(data[:split])
                time.sleep(0.3)
                s.sendall(data[split:])
                first = False
            elif data:
                s.sendall(data)
            b = s.recv(65536)
            if not b:
                raise ConnectionError("closed during the handshake")
            inc.write(b)
    tls.write(f"GET /get HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
    s.sendall(out.read())
    resp = b""
    while not resp.endswith(b"}\n"):
        b = s.recv(65536)
        if not b:
            break
        inc.write(b)
        try:
            while True:
                resp += tls.read(65536)
        except ssl.SSLWantReadError:
            pass
    res["status"] = int(resp.split(b" ", 2)[1])
except (OSError, ssl.SSLError, IndexError, ValueError) as e:
    res["error"] = f"{type(e).__name__}: {e}"
s.close()
print(json.dumps(res))
"""


@pytest.mark.parametrize("split", [3, 11, 100], ids=["in-record-header", "in-handshake-header",
                                                     "in-body"])
def test_client_hello_in_two_segments(topo: Topology, sidecar: Sidecar, split: int) -> None:
    """The SNI peek waits for the whole ClientHello (TLS record header 5 bytes, handshake
    header 4) rather than deciding on the first segment."""
    before = sidecar.stats()
    r = topo.app.run([netkit.PY, "-c", TLS_SPLIT, HTTPBIN, "tls.test", topo.cacert, str(split)],
                     user=USER, timeout=30)
    assert json.loads(r.stdout) == {"status": 200}, r.stdout
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_allowed") == 1
    assert delta(after, before, "cx_peek_timeout") == 0


# -- TCP -------------------------------------------------------------------------------------------

def test_tcp_cidr_allows_only_that_address(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.client("upload", HTTPBIN, netkit.SINK_PORT, 1 << 20, 71)
    assert r["answer"].split() == [str(1 << 20), detdata.sha256(71, 1 << 20)]
    # the same port on another address (where a sink listens too) is reset at once
    p = topo.client("connect", OTHER_TCP_HOST, netkit.SINK_PORT)
    assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_allowed") == 1
    assert delta(after, before, "cx_denied") == 1
    assert delta(after, before, "bytes_c2u") == 1 << 20


def test_tcp_server_first_banner_without_client_bytes(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.client("banner", HTTPBIN, netkit.BANNER_PORT)
    assert r["banner"].startswith("220 banner.test "), r
    assert r["seconds"] < 1.0  # nothing waited for client bytes (peek timeout is 1 s)
    assert r["bye"].startswith("221")
    p = topo.client("connect", OTHER_TCP_HOST, netkit.BANNER_PORT)
    assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_allowed") == 1
    assert delta(after, before, "cx_denied") == 1
    assert delta(after, before, "cx_peek_timeout") == 0


# -- identity, mesh --------------------------------------------------------------------------------

def explain(exe: str, cfg: ConfigDir, sa: str, ns: str, dest: str, *args: str) -> dict:
    r = subprocess.run([exe, "explain", "--config", str(cfg.root), "--service-account", sa,
                        "--namespace", ns, dest, *args, "--json"], capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["decision"]


def test_policy_for_other_service_accounts_changes_nothing(topo: Topology, sidecar: Sidecar,
                                                           cfg: ConfigDir,
                                                           fastproxy_exe: str) -> None:
    # the policies are valid and do allow their own sources...
    for sa, ns in (("httpbin", "curl"), ("curl", "other")):
        d = explain(fastproxy_exe, cfg, sa, ns, f"{HTTPBIN}:80", "--host", "deny.test")
        assert (d["action"], d["object"]) == ("allow", "Egress curl/others-80"), d
        d = explain(fastproxy_exe, cfg, sa, ns, f"{HTTPBIN}:{netkit.SOURCE_PORT}")
        assert (d["action"], d["object"]) == ("allow", "Egress curl/others-9001"), d
    # ...but not curl/curl
    before = sidecar.stats()
    status, body, _ = curl_status(topo, "http://deny.test/get")
    assert (status, body) == (403, "Access denied")
    p = topo.client("connect", HTTPBIN, netkit.SOURCE_PORT)
    assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "http_denied") == 1
    assert delta(after, before, "cx_denied") == 1
    assert delta(after, before, "cx_allowed") == 0


def test_in_mesh_service_reachable_with_passthrough_off(topo: Topology,
                                                        sidecar: Sidecar) -> None:
    before = sidecar.stats()
    status, body, r = curl_status(topo, f"http://{MESH_IP}:{MESH_PORT}/get")
    assert status == 200, r.stderr
    assert json.loads(body)["host"] == f"{MESH_IP}:{MESH_PORT}"
    # another port of the same address is not in the mesh
    assert_reset_at_once(topo.curl(f"http://{MESH_IP}:{MESH_PORT + 1}/get"), (7, 52, 56))
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_mesh") == 1
    assert delta(after, before, "cx_denied") == 1


# -- bad changes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(BAD_EGRESSES))
def test_bad_change_keeps_last_good_configuration(topo: Topology, sidecar: Sidecar,
                                                  cfg: ConfigDir, kind: str) -> None:
    """A new file with a good Egress (allowing deny.test) and a bad one: rejected as a whole."""
    doc, field = BAD_EGRESSES[kind]
    good = egress("deny-80", "  hosts:\n  - deny.test\n  ports:\n"
                             "  - number: 80\n    protocol: http\n")
    st0 = sidecar.stats()
    _, dump0 = sidecar.admin("GET", "/config_dump")
    try:
        st, _ = change(sidecar, lambda: cfg.write("zz-new.yaml", good + "---\n" + doc))
        assert delta(st, st0, "reload_failures") == 1
        assert st["config_generation"] == st0["config_generation"]
        err = st["last_reload_error"] or ""
        assert "zz-new.yaml" in err and f"{field}: " in err, err
        _, dump = sidecar.admin("GET", "/config_dump")
        assert json.loads(dump) == json.loads(dump0)
        # nothing half-applied: deny.test still denied, what was allowed still is
        assert curl_status(topo, "http://deny.test/get")[0] == 403
        assert curl_status(topo, "http://httpbin.test/get")[0] == 200
        assert curl_status(topo, "--cacert", topo.cacert, "https://tls.test/get")[0] == 200
        assert "reload rejected" in sidecar.log_tail(20000)
    finally:
        st, _ = change(sidecar, lambda: cfg.remove("zz-new.yaml"))
    assert st["last_reload_error"] is None
    assert st["config_generation"] == st0["config_generation"] + 1
