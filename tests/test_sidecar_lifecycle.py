"""The sidecar's lifecycle, end to end: traffic stops when the sidecar is gone; SIGTERM drains
open connections up to the deadline and refuses new ones; SIGHUP reloads the configuration
without dropping open connections and keeps the last good one on error."""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

import netkit
from netkit import USER, Sidecar, Topology
from servers import detdata

pytestmark = pytest.mark.netns

def meshconfig(egress: bool) -> str:
    return netkit.meshconfig({"traffic": {"enableEgress": egress}})


def slow_download(topo: Topology, size: int, seed: int, rate: int) -> subprocess.Popen:
    return topo.app.popen([netkit.PY, netkit.server_path("client.py"), "download", "bulk.test",
                           str(netkit.SOURCE_PORT), str(size), str(seed), str(rate)],
                          user=USER, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_active(sc: Sidecar, n: int = 1, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while sc.stats()["cx_active"] < n:
        assert time.monotonic() < deadline, "connection never became active"
        time.sleep(0.02)


def probe_until_refused(topo: Topology, timeout: float = 2.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        p = topo.client("connect", netkit.HTTPBIN, netkit.HTTP_PORT)
        if p["outcome"] == "refused" or time.monotonic() > deadline:
            return p
        time.sleep(0.05)


def test_requests_fail_without_the_sidecar(topo: Topology, fastproxy_exe: str,
                                           rules: None) -> None:
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=2).start()
    try:
        assert topo.curl("http://httpbin.test/get").returncode == 0
        assert sc.stats()["cx_accepted"] == 1
        # mutating admin routes answer only the proxy's own UID (test_admin.py)
        r = topo.app.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          f"http://127.0.0.1:{sc.admin_port}/quitquitquit"], user=netkit.PROXY_UID)
        assert r.stdout == "200"
        assert sc.wait(10) == 0
    finally:
        sc.kill()
    # the rules still redirect to 15001, where nothing listens now
    r = topo.curl("http://httpbin.test/get")
    assert r.returncode == 7, (r.returncode, r.stderr)
    assert r.seconds < 1.5  # type: ignore[attr-defined]


@pytest.mark.parametrize("copy", [False, True], ids=["splice", "copy"])
def test_sigterm_drains_open_transfer(topo: Topology, fastproxy_exe: str, rules: None,
                                      copy: bool) -> None:
    size, rate = 3 << 20, 2 << 20  # about 1.5 s
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, copy=copy, drain_seconds=10).start()
    try:
        dl = slow_download(topo, size, 31, rate)
        wait_active(sc)
        t0 = time.monotonic()
        sc.signal(signal.SIGTERM)
        p = probe_until_refused(topo)
        assert p["outcome"] == "refused", p  # stopped accepting
        assert dl.poll() is None, "the transfer was over before the test could probe"
        out, err = dl.communicate(timeout=20)
        assert dl.returncode == 0, err
        r = json.loads(out)
        assert (r["received"], r["sha"]) == (size, detdata.sha256(31, size))
        assert sc.wait(10) == 0, sc.log_tail()
        assert time.monotonic() - t0 < 10
    finally:
        sc.kill()


def test_drain_deadline_ends_a_transfer_that_is_too_long(topo: Topology, fastproxy_exe: str,
                                                         rules: None) -> None:
    size, rate = 8 << 20, 1 << 20  # about 8 s, far beyond the 1 s deadline
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, drain_seconds=1).start()
    try:
        dl = slow_download(topo, size, 32, rate)
        wait_active(sc)
        t0 = time.monotonic()
        sc.signal(signal.SIGTERM)
        assert sc.wait(8) == 0, sc.log_tail()
        assert 0.8 <= time.monotonic() - t0 < 4.0
        out, _ = dl.communicate(timeout=20)
        r = json.loads(out) if dl.returncode == 0 and out.strip() else {"received": -1}
        assert r["received"] < size  # cut at the deadline, not delivered whole
    finally:
        sc.kill()


def test_sighup_reload_keeps_open_connections(topo: Topology, fastproxy_exe: str,
                                              rules: None) -> None:
    cfg = netkit.write_config(topo.tmp, "reload-meshconfig.yaml", meshconfig(True))
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg), drain_seconds=2).start()
    try:
        assert topo.curl("http://httpbin.test/get").returncode == 0
        size, rate = 2 << 20, 2 << 20  # about 1 s
        dl = slow_download(topo, size, 33, rate)
        wait_active(sc)
        cfg.write_text(meshconfig(False))
        before = sc.stats()
        sc.signal(signal.SIGHUP)
        # the banner server answers at once through passthrough, so each probe is quick
        deadline = time.monotonic() + 3
        while True:  # new connections are now denied (reset at once)
            p = topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)
            if p["outcome"] != "data" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert p["outcome"] == "reset" and p["seconds"] < 1.0, p
        assert sc.stats()["cx_denied"] > before["cx_denied"]
        out, err = dl.communicate(timeout=20)  # the open transfer was not dropped
        assert dl.returncode == 0, err
        assert json.loads(out)["sha"] == detdata.sha256(33, size)
        # a bad change is refused as a whole: the sidecar keeps running on the last good one
        failures = sc.stats().get("reload_failures", 0)
        cfg.write_text(meshconfig(True) + "    enableEgressTypo: [\n")
        sc.signal(signal.SIGHUP)
        deadline = time.monotonic() + 3
        while sc.stats().get("reload_failures", failures + 1) == failures:
            assert time.monotonic() < deadline, "the bad configuration was never looked at"
            time.sleep(0.05)
        assert sc.proc is not None and sc.proc.poll() is None, sc.log_tail()
        assert topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"] == "reset"
    finally:
        assert sc.terminate() == 0, sc.log_tail()
