"""The relay's syscalls per proxied connection, counted with strace on a running sidecar
(passthrough, one worker, splice and copy modes): the design's promises, not timings.

- every socket is added to the epoll set once and never modified (edge-triggered readiness):
  a new connection costs exactly two EPOLL_CTL_ADD and no EPOLL_CTL_MOD or EPOLL_CTL_DEL;
- the end of a stream that arrives with its last bytes (EPOLLRDHUP before a short read) costs no
  extra read: a server answering and closing at once is relayed with at most four reads per
  connection (request, response, and at most one 0-byte read per side)."""
from __future__ import annotations

import re
import subprocess
import time
from collections import Counter
from typing import Iterator

import pytest

import netkit
from netkit import USER, Sidecar, Topology

pytestmark = pytest.mark.netns

N = 40
CLIENT = r"""
import socket, sys
ip, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    s = socket.create_connection((ip, 80), timeout=5)
    s.sendall(b"GET /status/204 HTTP/1.1\r\nHost: httpbin.test\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        b = s.recv(4096)
        if not b:
            break
        data += b
    assert data.startswith(b"HTTP/1.1 204"), data[:40]
    s.close()
print("ok")
"""


@pytest.fixture(scope="module", params=["splice", "copy"])
def sidecar(request: pytest.FixtureRequest, topo: Topology, fastproxy_exe: str,
            rules: None) -> Iterator[Sidecar]:
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, workers=1, copy=request.param == "copy",
                 drain_seconds=2).serving(rules=False) as sc:
        yield sc


def traced(sidecar: Sidecar, topo: Topology) -> str:
    """strace of the sidecar's threads while N clients each make one Connection: close request."""
    assert sidecar.proc is not None
    out = topo.tmp / "strace.txt"
    st = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=epoll_ctl,recvfrom,read,splice",
                           "-o", str(out), "-p", str(sidecar.proc.pid)],
                          stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # strace attaches to every thread
        r = topo.app.run([netkit.PY, "-c", CLIENT, netkit.HTTPBIN, str(N)], user=USER, timeout=60)
        assert r.stdout.strip() == "ok", r.stderr
        time.sleep(0.5)
    finally:
        st.terminate()
        st.wait(timeout=10)
    return out.read_text()


def worker_lines(text: str) -> list:
    """The lines of the thread that accepted the connections (the worker)."""
    tids = Counter(line.split()[0] for line in text.splitlines() if "accept" in line or
                   re.search(r"epoll_ctl\(\d+, EPOLL_CTL_ADD", line))
    assert tids, text[-2000:]
    worker = tids.most_common(1)[0][0]
    return [line for line in text.splitlines() if line.split()[:1] == [worker]]


def test_each_socket_is_registered_once(topo: Topology, sidecar: Sidecar) -> None:
    lines = worker_lines(traced(sidecar, topo))
    ops = Counter(m.group(1) for line in lines
                  if (m := re.search(r"epoll_ctl\(\d+, (EPOLL_CTL_\w+)", line)))
    assert ops["EPOLL_CTL_ADD"] == 2 * N, ops
    assert ops["EPOLL_CTL_MOD"] == 0 and ops["EPOLL_CTL_DEL"] == 0, ops


def test_no_read_is_spent_on_what_epoll_said(topo: Topology, sidecar: Sidecar) -> None:
    lines = worker_lines(traced(sidecar, topo))
    reads = [line for line in lines if re.search(r"\b(recvfrom|read|splice)\(", line)
             and "resumed" not in line]
    eagain = [line for line in reads if "EAGAIN" in line]
    # the request, the response, and the ends of the two streams: at most four reads each
    assert len(reads) <= 4 * N, (len(reads), reads[:12])
    assert len(eagain) <= N // 4, (len(eagain), eagain[:12])
