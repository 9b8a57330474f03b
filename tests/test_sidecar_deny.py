"""The sidecar with egress passthrough off (`enableEgress: false`): connections to external
hosts are reset at once, while the app's loopback traffic and the MeshConfig's excluded ranges
and ports never reach the sidecar and keep working."""
from __future__ import annotations

import json
from typing import Iterator

import pytest

import netkit
from netkit import USER, Sidecar, Topology

pytestmark = pytest.mark.netns

EXCLUDED_CIDR = "203.0.113.0/24"
EXCLUDED_PORT = netkit.BANNER_PORT
LOOPBACK_PORT, POD_IP_PORT = 8025, 8026

MESHCONFIG = netkit.meshconfig({
    "traffic": {"enableEgress": False, "outboundIPRangeExclusionList": [EXCLUDED_CIDR],
                "outboundPortExclusionList": [EXCLUDED_PORT]},
    "sidecar": {"logLevel": "info"}})


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str) -> Iterator[Sidecar]:
    cfg = netkit.write_config(topo.tmp, "meshconfig.yaml", MESHCONFIG)
    # an HTTP server on the excluded range, and app-local servers on lo and on the pod address
    topo.ext.popen([netkit.PY, netkit.server_path("httpd.py"), "--listen",
                    f"{netkit.OTHER_HOST}:80"])
    topo.wait_port(netkit.OTHER_HOST, 80)
    topo.app.popen([netkit.PY, netkit.server_path("tcpsrv.py"),
                    f"banner=127.0.0.1:{LOOPBACK_PORT}", f"banner={netkit.APP_V4}:{POD_IP_PORT}"],
                   user=USER)
    topo.app.wait_port("127.0.0.1", LOOPBACK_PORT)
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg),
                 drain_seconds=2).serving() as sc:
        yield sc


def test_http_is_reset_at_once(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.curl("http://httpbin.test/get")
    # 55: the reset came before curl had even sent its request (a race the sidecar wins now
    # and then: it resets right at accept)
    assert r.returncode in (7, 52, 55, 56), (r.returncode, r.stderr)
    assert r.seconds < 1.5  # type: ignore[attr-defined]
    p = topo.client("connect", netkit.HTTPBIN, netkit.HTTP_PORT)
    assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
    after = sidecar.stats()
    assert after["cx_denied"] - before["cx_denied"] == 2
    assert after["cx_passthrough"] == before["cx_passthrough"]
    assert after["bytes_c2u"] == before["bytes_c2u"]


def test_https_is_reset_at_once(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.curl("--cacert", topo.cacert, "https://httpbin.test/get")
    assert r.returncode in (7, 35, 55, 56), (r.returncode, r.stderr)
    assert r.seconds < 1.5  # type: ignore[attr-defined]
    assert sidecar.stats()["cx_denied"] - before["cx_denied"] == 1


def test_server_first_and_ipv6_are_reset_too(topo: Topology, sidecar: Sidecar) -> None:
    p = topo.client("connect", netkit.HTTPBIN, netkit.SINK_PORT)
    assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
    p = topo.client("connect", netkit.HTTPBIN6, netkit.HTTP_PORT)
    assert p["outcome"] == "reset" and p["seconds"] < 1.0, p


def untouched(sidecar: Sidecar, fn) -> None:
    """Runs fn and checks the sidecar saw no connection meanwhile."""
    before = sidecar.stats()["cx_accepted"]
    fn()
    assert sidecar.stats()["cx_accepted"] == before


def test_excluded_range_still_works(topo: Topology, sidecar: Sidecar) -> None:
    def go() -> None:
        r = topo.curl("-w", "\n%{http_code}", "http://other.test/get")
        assert r.returncode == 0, r.stderr
        body, code = r.stdout.rsplit("\n", 1)
        assert code == "200" and json.loads(body)["host"] == "other.test"
    untouched(sidecar, go)


def test_excluded_port_still_works(topo: Topology, sidecar: Sidecar) -> None:
    def go() -> None:
        r = topo.client("banner", "banner.test", EXCLUDED_PORT)
        assert r["banner"].startswith("220 banner.test")
    untouched(sidecar, go)


@pytest.mark.parametrize("addr,port", [("127.0.0.1", LOOPBACK_PORT),
                                       (netkit.APP_V4, POD_IP_PORT)], ids=["lo", "pod-ip"])
def test_app_loopback_traffic_untouched(topo: Topology, sidecar: Sidecar, addr: str,
                                        port: int) -> None:
    def go() -> None:
        r = topo.client("banner", addr, port)
        assert r["banner"].startswith("220 ")
    untouched(sidecar, go)


def test_denied_connections_are_counted_closed(sidecar: Sidecar) -> None:
    """cx_closed counts connections "however they ended", denied ones included."""
    st = sidecar.wait_idle()
    assert st["cx_denied"] > 0
    assert st["cx_accepted"] == st["cx_closed"] + st["cx_active"]
