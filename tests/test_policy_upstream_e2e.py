"""Where policy traffic goes, and how much of it: the `fastproxy.flomesh.io/upstream: host`
annotation (an http/https allow dials the policy's host name, resolved by the sidecar, so a forged
Host or SNI reaches nothing new), and an UpstreamTrafficSetting's connection limit and connect
timeout on a policy's traffic. Real clients in the app namespace, the sidecar as UID 1500."""
from __future__ import annotations

import socket
import time
from typing import Iterator, List

import pytest

import netkit
from netkit import CLOSED_HOST, HTTPBIN, Sidecar, Topology, delta
from test_policy_manifests import NS, SA, egress

pytestmark = pytest.mark.netns

BLACKHOLE_PORT = 81  # on HTTPBIN: ext drops the SYNs
LIMIT = 2

MESHCONFIG = netkit.meshconfig({"traffic": {"enableEgress": False},
                                "sidecar": {"sidecarTimeout": 30}})

UPSTREAM_HOST = "  annotations:\n    fastproxy.flomesh.io/upstream: host\n"


def annotated(text: str) -> str:
    """The Egress `text` with the upstream annotation in its metadata."""
    return text.replace("spec:\n", UPSTREAM_HOST + "spec:\n", 1)


def uts(name: str, tcp: str) -> str:
    return (f"apiVersion: policy.flomesh.io/v1alpha1\nkind: UpstreamTrafficSetting\nmetadata:\n"
            f"  name: {name}\n  namespace: {NS}\nspec:\n  host: {name}.test\n"
            f"  connectionSettings:\n    tcp:\n{tcp}")


def uses(name: str) -> str:
    return (f"  matches:\n  - apiGroup: policy.flomesh.io/v1alpha1\n"
            f"    kind: UpstreamTrafficSetting\n    name: {name}\n")


POLICIES = "---\n".join([
    annotated(egress("to-httpbin", "  hosts: [httpbin.test]\n"
                                   "  ports: [{number: 80, protocol: http}]\n")),
    annotated(egress("to-tls", "  hosts: [tls.test]\n  ports: [{number: 443, protocol: https}]\n")),
    # the same kind of policy without the annotation: the original destination is dialled
    egress("to-bulk", "  hosts: [bulk.test]\n  ports: [{number: 8443, protocol: https}]\n"),
    egress("limited", f"  ipAddresses: [{HTTPBIN}/32]\n"
                      f"  ports: [{{number: {netkit.SINK_PORT}, protocol: tcp}}]\n" + uses("two")),
    egress("slow", f"  ipAddresses: [{HTTPBIN}/32]\n"
                   f"  ports: [{{number: {BLACKHOLE_PORT}, protocol: tcp}}]\n" + uses("quick")),
    uts("two", f"      maxConnections: {LIMIT}\n"),
    uts("quick", "      connectTimeout: 1s\n"),
])


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str) -> Iterator[Sidecar]:
    topo.ext.run(["iptables", "-A", "INPUT", "-p", "tcp", "-d", HTTPBIN, "--dport",
                  str(BLACKHOLE_PORT), "-j", "DROP"])
    folder = netkit.config_folder(topo, "upstream-config", {"meshconfig.yaml": MESHCONFIG,
                                                    "policies.yaml": POLICIES})
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), drain_seconds=2,
                 extra=["--service-account", SA, "--namespace", NS]).serving() as sc:
        yield sc


def test_forged_host_reaches_the_policy_host_not_the_original_destination(
        topo: Topology, sidecar: Sidecar) -> None:
    # nothing listens on CLOSED_HOST:80; the policy host httpbin.test is HTTPBIN
    r = topo.curl("-w", "\n%{http_code}", "-H", "Host: httpbin.test", f"http://{CLOSED_HOST}/get")
    body, _, code = r.stdout.rpartition("\n")
    assert (r.returncode, code) == (0, "200"), r.stderr
    assert '"host": "httpbin.test"' in body
    # another Host on the same connection target is refused by the policy
    r = topo.curl("-w", "\n%{http_code}", "-H", "Host: other.test", f"http://{CLOSED_HOST}/get")
    assert r.stdout.rpartition("\n")[2] == "403", r.stderr


def test_forged_sni_reaches_the_policy_host(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    # the client believes tls.test is CLOSED_HOST; the sidecar dials tls.test itself
    r = topo.curl("--cacert", topo.cacert, "--resolve", f"tls.test:443:{CLOSED_HOST}",
                  "-o", "/dev/null", "-w", "%{http_code}", "https://tls.test/get")
    assert (r.returncode, r.stdout) == (0, "200"), r.stderr
    # without the annotation the original destination is dialled: nothing there, a reset
    r = topo.curl("--cacert", topo.cacert, "--resolve", f"bulk.test:8443:{CLOSED_HOST}",
                  "https://bulk.test:8443/get")
    assert r.returncode in (7, 35, 56), (r.returncode, r.stderr)
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_allowed") == 2
    assert delta(after, before, "cx_connect_fail") == 1


def _connect(topo: Topology, port: int) -> socket.socket:
    s = topo.app.socket()
    s.settimeout(5)
    s.connect((HTTPBIN, port))
    return s


def _is_reset(s: socket.socket) -> bool:
    """Was `s` reset by the sidecar (rather than kept, or closed with a FIN)?"""
    try:
        s.sendall(b"x")
        s.recv(1)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        pass
    return False


def test_connection_limit_of_an_upstream_traffic_setting(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    held: List[socket.socket] = []
    try:
        for _ in range(LIMIT):
            held.append(_connect(topo, netkit.SINK_PORT))
        deadline = time.monotonic() + 3
        while sidecar.stats()["cx_allowed"] - before["cx_allowed"] < LIMIT:
            assert time.monotonic() < deadline, sidecar.stats()
            time.sleep(0.02)
        t0 = time.monotonic()
        try:  # accepted by the sidecar, then reset: maybe before connect() even returns
            extra = _connect(topo, netkit.SINK_PORT)
        except ConnectionResetError:
            pass
        else:
            extra.settimeout(2)
            assert _is_reset(extra)
            extra.close()
        assert time.monotonic() - t0 < 1.5
        assert delta(sidecar.stats(), before, "cx_over_limit") == 1
    finally:
        for s in held:
            s.close()
    # with the held connections gone there is room again: a whole upload goes through
    p = topo.client("upload", HTTPBIN, netkit.SINK_PORT, 1 << 16, 5)
    assert p["answer"].split() == [str(1 << 16), p["sent_sha"]], p
    sidecar.wait_closed(before, LIMIT + 2)


def test_connect_timeout_of_an_upstream_traffic_setting(topo: Topology, sidecar: Sidecar) -> None:
    """The setting's 1 s connect timeout applies, not the MeshConfig's 30 s sidecarTimeout."""
    before = sidecar.stats()
    p = topo.client("connect", HTTPBIN, BLACKHOLE_PORT)
    assert p["outcome"] == "reset", p
    assert 0.8 < p["seconds"] < 3.0, p
    after = sidecar.wait_closed(before, 1)
    assert delta(after, before, "cx_connect_timeout") == 1
