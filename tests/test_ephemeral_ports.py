"""Ephemeral ports: the app's own connections and the sidecar's upstream dials draw local ports
from the same range (the pod's net.ipv4.ip_local_port_range), and a close-heavy workload leaves
TIME_WAIT at both ends. In an app namespace whose range is narrowed to RANGE ports (set inside the
test namespace only), a client that connects, reads a server-first banner and closes first is run
twice against identical banner servers: directly (no interception) and through the sidecar.

It measures how many connections each gets before the first failure (printed, and in README's
"Ephemeral ports" section), and checks that the sidecar makes the failure visible: its
`cx_connect_addrnotavail` counter grows and its log names it (fastproxy/portwatch.py)."""
from __future__ import annotations

import errno
import socket
import time
from typing import Optional, Tuple

import pytest

from conftest import cannot_run
from netkit import HTTPBIN, OTHER_HOST, PY, Sidecar, Topology, server_path

pytestmark = pytest.mark.netns

#: An odd number of ports: each connection through the sidecar takes two (the app's socket and
#: the sidecar's dial, both to the same destination, both left in TIME_WAIT), so the app's last
#: connect gets the last port and the sidecar's dial for it finds none.
LOW, RANGE = 40000, 201
BANNER_PORT = 2525
ATTEMPTS = 3 * RANGE


def hammer(topo: Topology, host: str) -> Tuple[int, Optional[str], float]:
    """Connect, read the banner, close (client first), until the first failure or ATTEMPTS.
    Returns (connections that worked, the first failure, seconds)."""
    def loop() -> Tuple[int, Optional[str], float]:
        t0 = time.monotonic()
        for i in range(ATTEMPTS):
            s = socket.socket()
            s.settimeout(3)
            try:
                s.connect((host, BANNER_PORT))
                data = s.recv(100)
                if not data.startswith(b"220 "):
                    return i, f"no banner: {data!r}", time.monotonic() - t0
            except OSError as e:
                name = errno.errorcode.get(e.errno or 0, str(e.errno))
                return i, f"{name}: {e}", time.monotonic() - t0
            finally:
                s.close()
        return ATTEMPTS, None, time.monotonic() - t0
    return topo.app.call(loop)


def from_port(topo: Topology, host: str, port: int) -> str:
    """One connection from local `port` (outside the ephemeral range): "ok" with the banner, or
    the error's name and text."""
    def one() -> str:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(3)
        try:
            s.bind(("0.0.0.0", port))
            s.connect((host, BANNER_PORT))
            data = s.recv(100)
            return "ok" if data.startswith(b"220 ") else f"no banner: {data!r}"
        except OSError as e:
            return f"{errno.errorcode.get(e.errno or 0, str(e.errno))}: {e}"
        finally:
            s.close()
    return topo.app.call(one)


def test_sidecar_dials_run_out_of_ports_before_a_direct_client(topo: Topology,
                                                               fastproxy_exe: str) -> None:
    Topology.sysctl(topo.app.name, "net.ipv4.ip_local_port_range", f"{LOW} {LOW + RANGE - 1}")
    got = topo.app.run(["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout.split()
    assert got == [str(LOW), str(LOW + RANGE - 1)], got
    for host in (HTTPBIN, OTHER_HOST):  # one destination per phase: TIME_WAIT is per 4-tuple
        p = topo.ext.popen([PY, server_path("tcpsrv.py"), f"banner={host}:{BANNER_PORT}"])
        topo.ext.wait_port(host, BANNER_PORT, proc=p)

    direct, direct_err, direct_s = hammer(topo, HTTPBIN)
    assert direct_err is not None and direct_err.startswith("EADDRNOTAVAIL"), (direct, direct_err)
    assert direct >= RANGE * 0.8, (direct, direct_err)

    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, workers=1, drain_seconds=1)
    with sc.serving():
        before = sc.stats()
        proxied, proxied_err, proxied_s = hammer(topo, OTHER_HOST)
        print(f"\nip_local_port_range of {RANGE} ports, connect/banner/close to one server: "
              f"direct client {direct} connections in {direct_s:.2f}s before {direct_err}; "
              f"through the sidecar {proxied} in {proxied_s:.2f}s before {proxied_err}")
        assert proxied_err is not None, "the port range never ran out through the sidecar"
        # the app's connection and the sidecar's dial each hold a port in TIME_WAIT
        assert proxied < direct * 0.75, (proxied, direct)
        if proxied_err.startswith("EADDRNOTAVAIL"):
            # the app's own connect found the range used up first (one port more was taken on
            # the way, now and then, flipping the parity): a client bound to a port outside
            # the range still reaches the sidecar, whose dial then finds none
            outcome = from_port(topo, OTHER_HOST, LOW - 1)
            assert outcome.startswith("ECONNRESET"), (proxied, proxied_err, outcome)
        if "cx_connect_addrnotavail" not in before:
            cannot_run("the engine has no cx_connect_addrnotavail counter (relay's, issue 8)")
        deadline = time.monotonic() + 5
        while True:
            st = sc.stats()
            log = sc.log_tail(20000)
            if st["cx_connect_addrnotavail"] > before["cx_connect_addrnotavail"] and \
                    "no free local port (EADDRNOTAVAIL)" in log:
                break
            assert time.monotonic() < deadline, (
                f"counter {before['cx_connect_addrnotavail']} -> {st['cx_connect_addrnotavail']}; "
                f"log:\n{log[-2000:]}")
            time.sleep(0.1)
        assert "ip_local_port_range" in log
