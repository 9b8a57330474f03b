"""The sidecar's timeouts, end to end (`spec.sidecar.sidecarTimeout`, connect and idle): an
upstream that never answers the SYN and a connection that goes quiet are both ended by the
sidecar in about sidecarTimeout, with the client told at once."""
from __future__ import annotations

import time
from typing import Iterator

import pytest

import netkit
from netkit import Sidecar, Topology

pytestmark = pytest.mark.netns

BLACKHOLE_PORT = 81  # on HTTPBIN; ext drops its SYNs
TIMEOUT_S = 1

MESHCONFIG = netkit.meshconfig({"traffic": {"enableEgress": True},
                                "sidecar": {"sidecarTimeout": TIMEOUT_S}})


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str) -> Iterator[Sidecar]:
    topo.ext.run(["iptables", "-A", "INPUT", "-p", "tcp", "-d", netkit.HTTPBIN, "--dport",
                  str(BLACKHOLE_PORT), "-j", "DROP"])
    cfg = netkit.write_config(topo.tmp, "meshconfig.yaml", MESHCONFIG)
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg),
                 drain_seconds=2).serving() as sc:
        yield sc


def test_connect_timeout_resets_client(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    p = topo.client("connect", netkit.HTTPBIN, BLACKHOLE_PORT)
    assert p["outcome"] == "reset", p
    assert TIMEOUT_S * 0.8 <= p["seconds"] < TIMEOUT_S + 1.5, p
    after = sidecar.stats()
    assert after["cx_connect_timeout"] - before["cx_connect_timeout"] == 1


def test_idle_connection_is_closed(topo: Topology, sidecar: Sidecar) -> None:
    """The banner server greets, then both sides stay quiet: the sidecar ends the connection."""
    before = sidecar.stats()
    t0 = time.monotonic()
    p = topo.client("banner", "banner.test", netkit.BANNER_PORT)  # works while active
    assert p["banner"].startswith("220 ")
    # now an idle one: "connect" reads the greeting byte and then waits up to 5 s for more
    r = topo.app.run([netkit.PY, "-c", IDLE_CLIENT, netkit.HTTPBIN, str(netkit.BANNER_PORT)],
                     user=netkit.USER, timeout=20)
    outcome, seconds = r.stdout.split()
    assert outcome in ("eof", "reset"), r.stdout
    assert TIMEOUT_S * 0.8 <= float(seconds) < TIMEOUT_S + 1.5, r.stdout
    deadline = time.monotonic() + 3
    while sidecar.stats()["cx_idle_timeout"] == before["cx_idle_timeout"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert time.monotonic() - t0 < 10


IDLE_CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.makefile("rb").readline()
t0 = time.monotonic()
try:
    outcome = "data" if c.recv(1) else "eof"
except ConnectionResetError:
    outcome = "reset"
except socket.timeout:
    outcome = "timeout"
print(outcome, time.monotonic() - t0)
"""
