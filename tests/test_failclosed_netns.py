"""Fail-closed interception (`fastproxy iptables --fail-closed`), with real datagrams between
namespaces: the app's UDP (QUIC included) and ICMP echo to external hosts are dropped, DNS to the
allowed resolver passes, DNS to any other server does not, the proxy UID's datagrams pass, IPv4
and IPv6 alike; TCP interception through the sidecar is unchanged; apply is idempotent and
--remove opens the way again. Also the MeshConfig annotation form."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator, List

import pytest

import netkit
from netkit import HTTPBIN, HTTPBIN6, OTHER_HOST, PY, USER, PROXY_UID, Sidecar, Topology

pytestmark = pytest.mark.netns

RESOLVER = OTHER_HOST            # the allowed resolver (203.0.113.10)
RESOLVER6 = netkit.CLOSED_HOST6  # 2001:db8:2::20
UDP_PORT = 7777                  # "QUIC-like" UDP to an external host (443 is tried too)


@pytest.fixture(scope="module")
def udp(topo: Topology) -> None:
    p = topo.ext.popen([PY, netkit.server_path("udpecho.py"), "0.0.0.0:53", "[::]:53",
                        f"0.0.0.0:{UDP_PORT}", f"[::]:{UDP_PORT}", "0.0.0.0:443", "[::]:443"],
                       stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"


def probe(topo: Topology, *args: object, user: object = USER) -> str:
    r = topo.app.run([PY, netkit.server_path("dgram_probe.py"), *map(str, args)], user=user,
                     timeout=10)
    return r.stdout.strip()


def fastproxy_iptables(topo: Topology, exe: str, *args: str) -> subprocess.CompletedProcess:
    return topo.app.run([exe, "iptables", *args], timeout=60)


def filter_rules(topo: Topology, tool: str = "iptables") -> List[str]:
    return topo.app.run([tool, "-t", "filter", "-S"]).stdout.splitlines()


@pytest.fixture
def clean(topo: Topology, fastproxy_exe: str) -> Iterator[None]:
    yield
    fastproxy_iptables(topo, fastproxy_exe, "--remove")
    resolv = Path(f"/etc/netns/{topo.app.name}/resolv.conf")
    if resolv.exists():
        resolv.unlink()


def test_open_without_fail_closed(topo: Topology, udp: None) -> None:
    """The baseline the rules change: every datagram gets out (as in every mesh)."""
    assert probe(topo, "udp", HTTPBIN, UDP_PORT) == "reply"
    assert probe(topo, "udp", HTTPBIN6, UDP_PORT) == "reply"
    assert probe(topo, "ping", HTTPBIN, user=0) == "reply"


def test_fail_closed_drops_the_apps_datagrams(topo: Topology, fastproxy_exe: str, udp: None,
                                              clean: None) -> None:
    fastproxy_iptables(topo, fastproxy_exe, "--apply", "--fail-closed", "--proxy-uid",
                       str(PROXY_UID), "--dns-server", RESOLVER, "--dns-server", RESOLVER6)
    for host in (HTTPBIN, HTTPBIN6):
        for port in (UDP_PORT, 443, 53):  # 53 on a server that is not a listed resolver
            got = probe(topo, "udp", host, port)
            assert got.startswith("blocked"), (host, port, got)
            assert probe(topo, "udp", host, port, user=0).startswith("blocked")  # root too
        assert probe(topo, "udp", host, UDP_PORT, user=PROXY_UID) == "reply"  # the proxy's own
        assert probe(topo, "ping", host, user=0).startswith("blocked")
    assert probe(topo, "udp", RESOLVER, 53) == "reply"
    assert probe(topo, "udp", RESOLVER6, 53) == "reply"
    assert probe(topo, "udp", RESOLVER, UDP_PORT).startswith("blocked")  # only port 53
    # loopback stays open
    lo = topo.app.popen([PY, netkit.server_path("udpecho.py"), "127.0.0.1:5300"],
                        stdout=subprocess.PIPE, text=True)
    assert lo.stdout is not None and lo.stdout.readline().strip() == "ready"
    assert probe(topo, "udp", "127.0.0.1", 5300) == "reply"
    lo.kill()
    # idempotent: a second apply leaves the same rules and one jump, first in OUTPUT
    before = filter_rules(topo), filter_rules(topo, "ip6tables")
    fastproxy_iptables(topo, fastproxy_exe, "--apply", "--fail-closed", "--proxy-uid",
                       str(PROXY_UID), "--dns-server", RESOLVER, "--dns-server", RESOLVER6)
    after = filter_rules(topo), filter_rules(topo, "ip6tables")
    assert after == before
    for rules in after:
        assert [r for r in rules if r.startswith("-A OUTPUT")] == \
            ["-A OUTPUT -j FSM_PROXY_FAILCLOSED"]
        assert rules[-1] == "-A FSM_PROXY_FAILCLOSED -j DROP"
    # --remove takes it out again
    fastproxy_iptables(topo, fastproxy_exe, "--remove")
    assert not any("FSM_PROXY" in r for r in filter_rules(topo) + filter_rules(topo, "ip6tables"))
    assert probe(topo, "udp", HTTPBIN, UDP_PORT) == "reply"
    assert probe(topo, "udp", HTTPBIN6, UDP_PORT) == "reply"


def test_icmp_echo_list_and_resolv_conf_default(topo: Topology, fastproxy_exe: str, udp: None,
                                                clean: None) -> None:
    """Without --dns-server the resolvers are resolv.conf's nameservers; --allow-icmp-echo
    lets ping through to the listed range only."""
    Path(f"/etc/netns/{topo.app.name}/resolv.conf").write_text(
        f"search svc.cluster.local\nnameserver {RESOLVER}\nnameserver {RESOLVER6}\n")
    fastproxy_iptables(topo, fastproxy_exe, "--apply", "--fail-closed", "--allow-icmp-echo",
                       "192.0.2.0/24", "--allow-icmp-echo", "2001:db8:2::10/128")
    assert probe(topo, "udp", RESOLVER, 53) == "reply"
    assert probe(topo, "udp", RESOLVER6, 53) == "reply"
    assert probe(topo, "udp", HTTPBIN, 53).startswith("blocked")
    assert probe(topo, "ping", HTTPBIN, user=0) == "reply"
    assert probe(topo, "ping", HTTPBIN6, user=0) == "reply"
    assert probe(topo, "ping", OTHER_HOST, user=0).startswith("blocked")
    assert probe(topo, "ping", RESOLVER6, user=0).startswith("blocked")
    # a plain --apply (fail-closed no longer asked for) takes the chain out
    fastproxy_iptables(topo, fastproxy_exe, "--apply")
    assert probe(topo, "udp", HTTPBIN, UDP_PORT) == "reply"


def test_annotation_form_and_tcp_unchanged(topo: Topology, fastproxy_exe: str, udp: None,
                                           clean: None) -> None:
    """The MeshConfig annotations turn it on for `--apply --config`; TCP still goes through
    the sidecar (which, as the proxy UID, may use UDP itself)."""
    text = netkit.meshconfig({"traffic": {"enableEgress": True}}).replace(
        "  namespace: fsm-system\n",
        "  namespace: fsm-system\n  annotations:\n"
        "    fastproxy.flomesh.io/fail-closed: \"true\"\n"
        f"    fastproxy.flomesh.io/dns-servers: \"{RESOLVER}, {RESOLVER6}\"\n")
    cfg = netkit.write_config(topo.tmp, "failclosed-mesh.yaml", text)
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg), drain_seconds=2)
    with sc.serving():  # applies `fastproxy iptables --apply --config cfg`
        assert any("FSM_PROXY_FAILCLOSED" in r for r in filter_rules(topo))
        assert probe(topo, "udp", HTTPBIN, UDP_PORT).startswith("blocked")
        assert probe(topo, "udp", RESOLVER, 53) == "reply"
        before = sc.stats()
        r = topo.curl("http://httpbin.test/get")
        assert r.returncode == 0, r.stderr
        assert sc.stats()["cx_accepted"] == before["cx_accepted"] + 1


def test_bad_annotation_is_a_config_error(tmp_path: Path, fastproxy_exe: str) -> None:
    text = netkit.meshconfig({}).replace(
        "  namespace: fsm-system\n",
        "  namespace: fsm-system\n  annotations:\n"
        "    fastproxy.flomesh.io/fail-closed: \"maybe\"\n"
        "    fastproxy.flomesh.io/dns-servers: \"10.0.0.1, not-an-ip\"\n")
    (tmp_path / "m.yaml").write_text(text)
    r = subprocess.run([fastproxy_exe, "validate", str(tmp_path / "m.yaml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1
    assert 'metadata.annotations["fastproxy.flomesh.io/fail-closed"]' in r.stdout + r.stderr
    assert "not-an-ip" in r.stdout + r.stderr
