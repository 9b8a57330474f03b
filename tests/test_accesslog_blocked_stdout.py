"""An access log nobody reads: the sidecar's stdout is a pipe the test never drains. Once the
pipe is full the writer thread blocks; the workers go on relaying (every byte checksummed), the
records that do not fit are dropped and counted, and SIGTERM still ends the process in time."""
from __future__ import annotations

import subprocess
import time
from typing import Iterator

import pytest

import netkit
from netkit import HTTPBIN, Sidecar, Topology

pytestmark = pytest.mark.netns


class StuckStdoutSidecar(Sidecar):
    """A Sidecar whose stdout is a pipe nobody reads (stderr still goes to the log file)."""

    def start(self, timeout: float = 15.0) -> "Sidecar":
        log = open(self.log_path, "ab")
        try:
            self.proc = self.ns.popen([self.exe, *self.args], stdout=subprocess.PIPE, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if self.admin("GET", "/ready", timeout=1.0)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, self.log_tail()
            time.sleep(0.05)
        self.debug = bool(self.stats().get("debug"))
        netkit.RUNNING_SIDECARS.append(self)
        return self


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology(prefix="fpb", ipv6=False) as t:
        t.start_servers(iperf=False)
        yield t


def counter(topo: Topology, name: str) -> float:
    status, body = topo.app.http("GET", "127.0.0.1", 15010, "/stats/prometheus")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_blocked_stdout_drops_lines_never_traffic(topo: Topology, fastproxy_exe: str) -> None:
    sc = StuckStdoutSidecar(topo.app, fastproxy_exe, topo.tmp, workers=2, drain_seconds=1,
                            extra=["--access-log-ring", "64"])
    sc.apply_rules()
    sc.start()
    try:
        n = 1500  # ~300 bytes a line: far more than a 64 KiB pipe holds
        r = topo.app.run([netkit.PY, netkit.server_path("burst.py"), str(n), HTTPBIN,
                          str(netkit.SINK_PORT), "3000"],
                         user=netkit.USER, timeout=120)
        assert r.stdout.strip() == str(n)
        deadline = time.monotonic() + 5
        while counter(topo, "fastproxy_access_log_dropped_total") == 0:
            assert time.monotonic() < deadline, "nothing dropped with stdout blocked"
            time.sleep(0.1)
        assert sc.stats()["cx_active"] == 0
    finally:
        t0 = time.monotonic()
        status = sc.terminate(timeout=15)
        assert status == 0, sc.log_tail()
        assert time.monotonic() - t0 < 10
        if sc.proc and sc.proc.stdout:
            sc.proc.stdout.close()
