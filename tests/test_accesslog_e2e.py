"""The access log and audit mode end to end: real clients (curl, Python sockets) as UID 1000 in
the app namespace, `fastproxy run` with passthrough off and two Egress policies (http for
httpbin.test:80, https for tls.test:443). The sidecar writes one JSON line per finished
connection and per HTTP request on stdout (here: its log file, mixed with stderr lines); the
tests find their lines by the client's source port or by what they asked for.

Audit mode (`spec.traffic.fastproxyEgressAuditMode: true`) is switched on by rewriting the
MeshConfig while the sidecar runs, and switched back off by the same test."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

import netkit
from netkit import HTTPBIN, Sidecar, Topology
from servers import detdata
from test_policy_manifests import NS, SA, egress

pytestmark = pytest.mark.netns

HOSTS = {"deny.test": HTTPBIN}
HTTP_ANY = egress("httpbin-80", "  hosts:\n  - httpbin.test\n  ports:\n"
                                "  - number: 80\n    protocol: http\n")
HTTPS_SNI = egress("tls-443", "  hosts:\n  - tls.test\n  ports:\n"
                              "  - number: 443\n    protocol: https\n")


#: one connection at a time to the source server (an UpstreamTrafficSetting's maxConnections)
LIMITED = (egress("limited", f"  ipAddresses: [{HTTPBIN}/32]\n"
                             f"  ports: [{{number: {netkit.SOURCE_PORT}, protocol: tcp}}]\n"
                             "  matches:\n  - apiGroup: policy.flomesh.io/v1alpha1\n"
                             "    kind: UpstreamTrafficSetting\n    name: one\n")
           + "---\napiVersion: policy.flomesh.io/v1alpha1\nkind: UpstreamTrafficSetting\n"
           f"metadata:\n  name: one\n  namespace: {NS}\nspec:\n  host: one.test\n"
           "  connectionSettings:\n    tcp:\n      maxConnections: 1\n")


def meshconfig(audit: bool) -> str:
    return netkit.meshconfig({"traffic": {"enableEgress": False,
                                          "fastproxyEgressAuditMode": audit},
                              "featureFlags": {"enableEgressPolicy": True},
                              "sidecar": {"logLevel": "info"}})


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(prefix="fpa", hosts=HOSTS, ipv6=False) as t:
        t.start_servers(iperf=False)
        yield t


def write(root: Path, name: str, text: str) -> None:
    tmp = root / f".{name}.tmp"
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, root / name)


@pytest.fixture(scope="module")
def cfgdir(topo: Topology) -> Path:
    root = topo.tmp / "config"
    root.mkdir(mode=0o755)
    write(root, "meshconfig.yaml", meshconfig(False))
    write(root, "policies.yaml", HTTP_ANY + "---\n" + HTTPS_SNI + "---\n" + LIMITED)
    return root


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str, cfgdir: Path) -> Iterator[Sidecar]:
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfgdir), workers=2,
                 drain_seconds=2, extra=["--service-account", SA, "--namespace", NS,
                                         "--peek-timeout", "1"]).serving() as sc:
        yield sc


def log_lines(sc: Sidecar) -> List[Dict[str, object]]:
    out = []
    for line in sc.log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"time"'):
            out.append(json.loads(line))
    return out


def wait_line(sc: Sidecar, match: Callable[[Dict[str, object]], bool],
              timeout: float = 3.0) -> Dict[str, object]:
    """The first access-log line `match` accepts (the writer drains every 100 ms)."""
    deadline = time.monotonic() + timeout
    while True:
        hits = [ln for ln in log_lines(sc) if match(ln)]
        if hits:
            return hits[0]
        assert time.monotonic() < deadline, "no such access-log line:\n" + sc.log_tail()
        time.sleep(0.05)


def upload(topo: Topology, size: int, seed: int) -> str:
    """Sends `size` deterministic bytes to the sink through the sidecar (as root, from this
    process); returns the sink's answer ("<len> <sha256>"), or "" when the connection was reset."""
    s = topo.app.socket()
    s.settimeout(10)
    try:
        s.connect((HTTPBIN, netkit.SINK_PORT))
        for block in detdata.blocks(seed, size):
            s.sendall(block)
        s.shutdown(2 - 1)  # SHUT_WR
        answer = b""
        while True:
            b = s.recv(4096)
            if not b:
                return answer.decode()
            answer += b
    except ConnectionError:
        return ""
    finally:
        s.close()


def set_audit(sc: Sidecar, cfgdir: Path, on: bool) -> None:
    before = sc.stats()["reloads"]
    write(cfgdir, "meshconfig.yaml", meshconfig(on))
    deadline = time.monotonic() + 5
    while sc.stats()["reloads"] == before:
        assert time.monotonic() < deadline, sc.log_tail()
        time.sleep(0.05)


def test_denied_https_names_sni_and_reason(topo: Topology, sidecar: Sidecar) -> None:
    r = topo.curl("--cacert", topo.cacert, "https://deny.test/get")
    assert r.returncode in (7, 35, 56), (r.returncode, r.stderr)
    line = wait_line(sidecar, lambda ln: ln.get("sni") == "deny.test")
    assert line["decision"] == "deny" and line["reason"] == "sni-not-allowed", line
    assert line["destination"] == f"{HTTPBIN}:443" and line["type"] == "connection", line
    assert line["end"] == "denied" and line["bytes_sent"] == 0, line
    assert str(line["source"]).startswith(netkit.APP_V4 + ":"), line
    assert str(line["time"]).endswith("Z") and "T" in str(line["time"]), line


def test_denied_http_request_names_host_method_path_403(topo: Topology, sidecar: Sidecar) -> None:
    r = topo.curl("-X", "DELETE", "-w", "%{http_code}", "-o", "/dev/null",
                  "http://deny.test/some/path?q=1")
    assert r.stdout == "403", (r.stdout, r.stderr)
    line = wait_line(sidecar, lambda ln: ln.get("host") == "deny.test" and ln["type"] == "request")
    assert line["decision"] == "deny" and line["reason"] == "host-not-allowed", line
    assert line["method"] == "DELETE" and line["path"] == "/some/path?q=1", line
    assert line["status"] == 403, line


def test_allowed_lines_name_the_egress(topo: Topology, sidecar: Sidecar) -> None:
    r = topo.curl("-w", "%{http_code}", "-o", "/dev/null", "http://httpbin.test/bytes/1000")
    assert r.stdout == "200", (r.stdout, r.stderr)
    req = wait_line(sidecar, lambda ln: ln.get("path") == "/bytes/1000")
    assert req["decision"] == "allow" and req["by"] == f"Egress {NS}/httpbin-80", req
    assert req["status"] == 200 and req["method"] == "GET", req
    assert req["bytes_received"] > 1000, req  # type: ignore[operator]
    r = topo.curl("--cacert", topo.cacert, "-o", "/dev/null", "-w", "%{http_code}",
                  "https://tls.test/get")
    assert r.stdout == "200", (r.stdout, r.stderr)
    tls = wait_line(sidecar, lambda ln: ln.get("sni") == "tls.test")
    assert tls["decision"] == "allow" and tls["by"] == f"Egress {NS}/tls-443", tls
    assert tls["end"] == "fin" and tls["bytes_received"] > 0, tls  # type: ignore[operator]


def test_audit_mode_relays_and_logs_would_deny(topo: Topology, sidecar: Sidecar,
                                                cfgdir: Path) -> None:
    size, seed = 300_000, 7
    # enforcing: no policy for the sink port, so the upload is reset
    assert upload(topo, size, seed) == ""
    set_audit(sidecar, cfgdir, True)
    try:
        want = hashlib.sha256(b"".join(detdata.blocks(seed, size))).hexdigest()
        assert upload(topo, size, seed).split() == [str(size), want]
        line = wait_line(sidecar, lambda ln: ln.get("decision") == "would_deny"
                         and ln["destination"] == f"{HTTPBIN}:{netkit.SINK_PORT}")
        assert line["reason"] == "no-policy" and line["bytes_sent"] == size, line
        # an HTTP request for a host no policy names passes too, logged as such
        r = topo.curl("-w", "%{http_code}", "-o", "/dev/null", "http://deny.test/get?audit=1")
        assert r.stdout == "200", (r.stdout, r.stderr)
        req = wait_line(sidecar, lambda ln: ln.get("path") == "/get?audit=1")
        assert req["decision"] == "would_deny" and req["reason"] == "host-not-allowed", req
        assert req["status"] == 200, req
        # and a TLS connection with an SNI no policy names (the server's certificate does not
        # name deny.test: -k, what is checked here is that the bytes reach it)
        r = topo.curl("-k", "-o", "/dev/null", "-w", "%{http_code}", "https://deny.test/get")
        assert r.stdout == "200", (r.stdout, r.stderr)
        st = sidecar.admin("GET", "/stats")
        assert st[0] == 200
        status, body = topo.app.http("GET", "127.0.0.1", 15010, "/stats/prometheus")
        text = body.decode()
        assert 'fastproxy_decisions_total{outcome="would_deny",policy="",reason="no-policy"}' in text
        assert 'outcome="would_deny",policy="",reason="sni-not-allowed"' in text
    finally:
        set_audit(sidecar, cfgdir, False)
    assert upload(topo, 1000, seed) == ""


def metrics(topo: Topology) -> str:
    status, body = topo.app.http("GET", "127.0.0.1", 15010, "/stats/prometheus")
    assert status == 200
    return body.decode()


def sample(text: str, name: str, labels: str) -> float:
    key = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(key):
            return float(line.split()[-1])
    return 0.0


ALLOW_HTTP = 'outcome="allow",policy="curl/httpbin-80",reason=""'


def test_metrics_name_policies_and_fsm_clusters(topo: Topology, sidecar: Sidecar,
                                                cfgdir: Path) -> None:
    before = sample(metrics(topo), "fastproxy_decisions_total", ALLOW_HTTP)
    for _ in range(3):
        r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.test/get")
        assert r.stdout == "200", r.stderr
    r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "http://deny.test/get")
    assert r.stdout == "403", r.stderr
    r = topo.curl("--cacert", topo.cacert, "-o", "/dev/null", "-w", "%{http_code}",
                  "https://tls.test/get")
    assert r.stdout == "200", r.stderr
    time.sleep(0.2)
    text = metrics(topo)
    n = sample(text, "fastproxy_decisions_total", ALLOW_HTTP)
    assert n - before == 3, (before, n)
    assert sample(text, "fastproxy_decisions_total",
                  'outcome="allow",policy="curl/tls-443",reason=""') >= 1
    assert sample(text, "fastproxy_decisions_total",
                  'outcome="deny",policy="",reason="host-not-allowed"') >= 1
    assert sample(text, "fastproxy_http_responses_total", 'code="403"') >= 1
    # FSM's cluster names: host:port for an http policy, the port for an https one
    assert sample(text, "sidecar_cluster_external_upstream_rq",
                  'sidecar_cluster_name="httpbin.test:80",sidecar_response_code="200"') >= 3
    assert sample(text, "sidecar_cluster_external_upstream_rq_xx",
                  'sidecar_cluster_name="httpbin.test:80",sidecar_response_code_class="2"') >= 3
    assert sample(text, "sidecar_cluster_upstream_cx_rx_bytes_total",
                  'sidecar_cluster_name="443"') > 0
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr  # FSM's untyped rq family included
    # a reload installs a new table: the per-policy count carries over and goes on growing
    set_audit(sidecar, cfgdir, False)
    assert sample(metrics(topo), "fastproxy_decisions_total", ALLOW_HTTP) >= n
    r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.test/get")
    assert r.stdout == "200", r.stderr
    time.sleep(0.2)
    assert sample(metrics(topo), "fastproxy_decisions_total", ALLOW_HTTP) == n + 1


def test_hostile_request_bytes_keep_the_log_valid_json(topo: Topology, sidecar: Sidecar) -> None:
    """Quotes, backslashes, control and non-ASCII bytes in a path and a Host: every line the
    sidecar writes still parses (log_lines parses all of them)."""
    s = topo.app.socket()
    s.settimeout(5)
    s.connect((HTTPBIN, 80))
    s.sendall(b'GET /q"u\\o\x01te\xff HTTP/1.1\r\nHost: deny.test\r\n\r\n'
              b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\nHost: " + b"h" * 300 + b"\r\n\r\n")
    got = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
    except OSError:
        pass
    s.close()
    assert got.startswith(b"HTTP/1.1 4"), got[:100]
    time.sleep(0.3)
    lines = log_lines(sidecar)  # raises if any line is not JSON
    assert all(len(str(ln.get("path", ""))) < 128 and len(str(ln.get("host", ""))) < 128
               for ln in lines)


def test_peek_timeout_is_the_logged_reason(topo: Topology, sidecar: Sidecar) -> None:
    """A client that sends no ClientHello on the https policy's port: denied once the peek
    timeout (1 s here) passes, logged with that reason."""
    s = topo.app.socket()
    s.settimeout(5)
    s.connect((HTTPBIN, 443))
    port = s.getsockname()[1]
    try:
        assert s.recv(1) == b""
    except ConnectionResetError:
        pass
    s.close()
    line = wait_line(sidecar, lambda ln: ln["source"] == f"{netkit.APP_V4}:{port}")
    assert line["decision"] == "deny" and line["reason"] == "peek-timeout", line
    assert 900 <= float(line["duration_ms"]) < 3000, line  # type: ignore[arg-type]


def test_over_the_connection_limit_is_the_logged_reason(topo: Topology, sidecar: Sidecar) -> None:
    held = topo.app.socket()
    held.settimeout(5)
    held.connect((HTTPBIN, netkit.SOURCE_PORT))
    try:
        deadline = time.monotonic() + 3
        while sidecar.stats()["cx_allowed"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        extra = topo.app.socket()
        extra.settimeout(5)
        try:
            extra.connect((HTTPBIN, netkit.SOURCE_PORT))
            port = extra.getsockname()[1]
            assert extra.recv(1) == b""
        except ConnectionResetError:
            port = extra.getsockname()[1]
        extra.close()
        line = wait_line(sidecar, lambda ln: ln["source"] == f"{netkit.APP_V4}:{port}")
        assert line["decision"] == "deny", line
        assert line["reason"] == "over-limit", line
    finally:
        held.close()
    line = wait_line(sidecar, lambda ln: ln["destination"] == f"{HTTPBIN}:{netkit.SOURCE_PORT}"
                     and ln["decision"] == "allow")
    assert line["by"] == f"Egress {NS}/limited", line


def test_connect_without_a_route_is_logged_as_tunnel_not_allowed(topo: Topology,
                                                                  sidecar: Sidecar) -> None:
    s = topo.app.socket()
    s.settimeout(5)
    s.connect((HTTPBIN, 80))
    port = s.getsockname()[1]
    s.sendall(b"CONNECT httpbin.test:80 HTTP/1.1\r\nHost: httpbin.test:80\r\n\r\n")
    head = s.recv(4096)
    s.close()
    assert head.startswith(b"HTTP/1.1 403"), head[:80]
    line = wait_line(sidecar, lambda ln: ln["source"] == f"{netkit.APP_V4}:{port}"
                     and ln["type"] == "request")
    assert line["method"] == "CONNECT" and line["status"] == 403, line
    assert line["decision"] == "deny" and line["reason"] == "tunnel-not-allowed", line
