"""An UpstreamTrafficSetting's maxConnections holds across reloads (issue 8 item 3): the counters
live in the process' fp_limits store, keyed by the setting, not in the table a reload replaces.
Hold 5 of 5, reload by SIGHUP, then by touching a config file: a new connection is refused each
time; once the held ones close, new ones are admitted. Real sockets in the app namespace, the
sidecar as UID 1500."""
from __future__ import annotations

import os
import signal
import socket
import time
from typing import Iterator, List

import pytest

import netkit
from netkit import HTTPBIN, Sidecar, Topology, delta
from test_policy_manifests import NS, SA, egress

pytestmark = pytest.mark.netns

LIMIT = 5
MESHCONFIG = netkit.meshconfig({"traffic": {"enableEgress": False},
                                "sidecar": {"sidecarTimeout": 30}})
POLICIES = "---\n".join([
    egress("limited", f"  ipAddresses: [{HTTPBIN}/32]\n"
                      f"  ports: [{{number: {netkit.SINK_PORT}, protocol: tcp}}]\n"
                      "  matches:\n  - apiGroup: policy.flomesh.io/v1alpha1\n"
                      "    kind: UpstreamTrafficSetting\n    name: five\n"),
    (f"apiVersion: policy.flomesh.io/v1alpha1\nkind: UpstreamTrafficSetting\nmetadata:\n"
     f"  name: five\n  namespace: {NS}\nspec:\n  host: five.test\n"
     f"  connectionSettings:\n    tcp:\n      maxConnections: {LIMIT}\n"),
])


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str) -> Iterator[Sidecar]:
    folder = netkit.config_folder(topo, "limits-config", {"meshconfig.yaml": MESHCONFIG,
                                                    "policies.yaml": POLICIES})
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), drain_seconds=2,
                 extra=["--service-account", SA, "--namespace", NS]).serving() as sc:
        sc.folder = folder  # type: ignore[attr-defined]
        yield sc


def _connect(topo: Topology) -> socket.socket:
    s = topo.app.socket()
    s.settimeout(5)
    s.connect((HTTPBIN, netkit.SINK_PORT))
    return s


def _refused(topo: Topology) -> bool:
    """Is a new connection reset by the sidecar (over the limit) rather than relayed?"""
    try:
        s = _connect(topo)
    except ConnectionResetError:
        return True
    s.settimeout(2)
    try:
        s.sendall(b"x")
        s.recv(1)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False  # still open: the sink waits for EOF
    finally:
        s.close()
    return False


def _wait_reload(sidecar: Sidecar, before: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while sidecar.stats().get("reloads", 0) <= before:
        assert time.monotonic() < deadline, ("no reload", sidecar.stats(), sidecar.log_tail())
        time.sleep(0.1)


def test_limit_holds_across_sighup_and_file_touch(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    held: List[socket.socket] = []
    try:
        for _ in range(LIMIT):
            held.append(_connect(topo))
        deadline = time.monotonic() + 3
        while delta(sidecar.stats(), before, "cx_allowed") < LIMIT:
            assert time.monotonic() < deadline, sidecar.stats()
            time.sleep(0.02)
        assert _refused(topo)

        reloads = sidecar.stats().get("reloads", 0)
        sidecar.signal(signal.SIGHUP)
        _wait_reload(sidecar, reloads)
        assert _refused(topo), "a SIGHUP reset the connection limit"

        reloads = sidecar.stats().get("reloads", 0)
        f = sidecar.folder / "policies.yaml"  # type: ignore[attr-defined]
        time.sleep(0.01)
        os.utime(f)  # `touch`: a new mtime, the same content
        _wait_reload(sidecar, reloads)
        assert _refused(topo), "a file change reset the connection limit"
        assert delta(sidecar.stats(), before, "cx_over_limit") == 3
    finally:
        for s in held:
            s.close()
    # with the held connections gone there is room again, under the newest table
    deadline = time.monotonic() + 5
    while sidecar.stats()["cx_active"] > 0:
        assert time.monotonic() < deadline, sidecar.stats()
        time.sleep(0.05)
    again: List[socket.socket] = []
    try:
        for _ in range(LIMIT):
            again.append(_connect(topo))
        time.sleep(0.3)
        for s in again:
            s.settimeout(0.3)
            try:
                s.sendall(b"y")
                assert s.recv(1) == b""  # no reset; the sink answers only at EOF
            except socket.timeout:
                pass
    finally:
        for s in again:
            s.close()
    p = topo.client("upload", HTTPBIN, netkit.SINK_PORT, 1 << 16, 5)
    assert p["answer"].split() == [str(1 << 16), p["sent_sha"]], p
