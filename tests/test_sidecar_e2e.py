"""The sidecar, end to end, with egress passthrough on (the default, no configuration): an app
in its own namespace reaches "external" hosts through `fastproxy run` (as UID 1500), its TCP
redirected by the rules of `fastproxy iptables --apply`. Every relay test runs in splice mode and
in copy mode (`--copy`). Clients run as UID 1000, servers as root in the ext namespace."""
from __future__ import annotations

import json
import subprocess
import time
from typing import Iterator

import pytest

import netkit
from netkit import USER, Sidecar, Topology, delta
from servers import detdata

pytestmark = pytest.mark.netns

MB50 = 50 << 20


@pytest.fixture(scope="module", params=["splice", "copy"])
def sidecar(request: pytest.FixtureRequest, topo: Topology, fastproxy_exe: str,
            rules: None) -> Iterator[Sidecar]:
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, workers=2, copy=request.param == "copy",
                 drain_seconds=2).serving(rules=False) as sc:
        yield sc


def test_http(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.curl("-w", "\n%{http_code}", "http://httpbin.test/get")
    assert r.returncode == 0, r.stderr
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "200" and json.loads(body)["host"] == "httpbin.test"
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_accepted") == 1
    assert delta(after, before, "cx_passthrough") == 1
    assert delta(after, before, "bytes_c2u") >= len("GET /get HTTP/1.1\r\nHost: httpbin.test\r\n\r\n")
    assert delta(after, before, "bytes_u2c") >= len(body)


def test_http_keep_alive_many_requests_one_connection(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    urls = [f"http://httpbin.test/bytes/{1000 * i}?seed={i}" for i in range(1, 11)]
    out = [f"{topo.tmp}/ka-{sidecar.proc.pid}-{i}" for i in range(1, 11)]  # type: ignore[union-attr]
    args = [a for u, o in zip(urls, out) for a in ("-o", o, u)]
    r = topo.curl(*args)
    assert r.returncode == 0, r.stderr
    for i, o in enumerate(out, 1):
        with open(o, "rb") as f:
            assert f.read() == detdata.data(i, 1000 * i)
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_accepted") == 1


def test_https(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.curl("--cacert", topo.cacert, "-w", "\n%{http_code}", "https://httpbin.test/get")
    assert r.returncode == 0, r.stderr
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "200" and json.loads(body)["tls"] is True
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_passthrough") == 1
    assert delta(after, before, "bytes_c2u") > 200  # at least a ClientHello went through us


def test_ipv6_http(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.curl("-w", "\n%{http_code}", "http://httpbin6.test/get")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rsplit("\n", 1)[1] == "200"
    assert delta(sidecar.wait_closed(before), before, "cx_passthrough") == 1


def test_server_speaks_first(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.client("banner", "banner.test", netkit.BANNER_PORT)
    assert r["banner"].startswith("220 banner.test ")
    assert r["seconds"] < 1.0  # nothing waited for client bytes
    assert r["bye"].startswith("221")
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_accepted") == 1
    assert delta(after, before, "bytes_u2c") == len(r["banner"]) + len(r["bye"])


def test_upload_50mb_half_closing_client_gets_answer(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.client("upload", "bulk.test", netkit.SINK_PORT, MB50, 21, timeout=30)
    assert r["sent_sha"] == detdata.sha256(21, MB50)
    assert r["answer"].split() == [str(MB50), r["sent_sha"]]
    after = sidecar.wait_closed(before)
    assert delta(after, before, "bytes_c2u") == MB50
    assert delta(after, before, "bytes_u2c") == len(r["answer"])


def test_download_50mb(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.client("download", "bulk.test", netkit.SOURCE_PORT, MB50, 22, timeout=30)
    assert r["received"] == MB50
    assert r["sha"] == detdata.sha256(22, MB50)
    after = sidecar.wait_closed(before)
    assert delta(after, before, "bytes_u2c") == MB50


def test_parallel_downloads(topo: Topology, sidecar: Sidecar) -> None:
    n, size = 12, 3 << 20
    client = netkit.server_path("client.py")
    script = " ".join(f"{netkit.PY} {client} download bulk.test {netkit.SOURCE_PORT} {size} "
                      f"{100 + i} > {topo.tmp}/par-{i}.json &" for i in range(n)) + " wait"
    before = sidecar.stats()
    try:
        topo.app.run(["sh", "-c", script], user=USER, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("parallel downloads hung\n" + topo.diagnostics())
    for i in range(n):
        with open(f"{topo.tmp}/par-{i}.json") as f:
            r = json.load(f)
        assert (r["received"], r["sha"]) == (size, detdata.sha256(100 + i, size)), i
    after = sidecar.wait_closed(before, n)
    assert delta(after, before, "cx_accepted") == n
    assert delta(after, before, "bytes_u2c") == n * size


def test_half_closing_server_still_receives(topo: Topology, sidecar: Sidecar) -> None:
    seen = len(topo.halfclose_reports())
    r = topo.client("halfclose", "bulk.test", netkit.HALFCLOSE_PORT, 3 << 20, 23)
    assert r["received"] == netkit.HALFCLOSE_SIZE
    assert r["received_sha"] == detdata.sha256(7, netkit.HALFCLOSE_SIZE)
    assert r["sent_sha"] == detdata.sha256(23, 3 << 20)
    deadline = time.monotonic() + 3
    while len(topo.halfclose_reports()) == seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert topo.halfclose_reports()[seen:] == [(3 << 20, r["sent_sha"])]


def test_closed_port_resets_at_once(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    p = topo.client("connect", netkit.CLOSED_HOST, netkit.CLOSED_PORT)
    assert p["outcome"] in ("reset", "refused"), p
    assert p["seconds"] < 1.0
    r = topo.curl(f"http://closed.test:{netkit.CLOSED_PORT}/")
    assert r.returncode in (7, 56), (r.returncode, r.stderr)
    assert r.seconds < 1.5  # type: ignore[attr-defined]
    after = sidecar.wait_closed(before, 2)
    assert delta(after, before, "cx_connect_fail") == 2


def test_iperf3_one_second(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.app.run(["iperf3", "-c", netkit.HTTPBIN, "-p", str(netkit.IPERF_PORT), "-t", "1",
                      "-J"], user=USER, timeout=30)
    res = json.loads(r.stdout)
    received = res["end"]["sum_received"]["bytes"]  # by the server; the client's "sent" also
    assert received > 0                              # counts bytes still in flight at the end
    after = sidecar.wait_closed(before, 2)  # control and data connections
    assert delta(after, before, "cx_accepted") >= 2
    assert delta(after, before, "bytes_c2u") >= received


def test_splice_mode_matches_flag(sidecar: Sidecar) -> None:
    """--copy really switches splice off: copy mode never lends a pipe."""
    st = sidecar.stats()
    if "--copy" in sidecar.args:
        assert st["pipes_created"] == 0
    else:
        assert st["pipes_created"] > 0


def test_upstream_reset_is_passed_on(topo: Topology, sidecar: Sidecar) -> None:
    before = sidecar.stats()
    r = topo.client("reset", "bulk.test", netkit.RESET_PORT)
    assert r["hello"] == "hello\n"
    assert r["outcome"] == "reset" and r["seconds"] < 1.0, r
    after = sidecar.wait_closed(before)
    assert delta(after, before, "cx_reset_by_upstream") == 1


def test_runs_as_proxy_uid(sidecar: Sidecar) -> None:
    assert sidecar.proc is not None
    with open(f"/proc/{sidecar.proc.pid}/status") as f:
        uids = next(line.split()[1:] for line in f if line.startswith("Uid:"))
    assert uids == [str(netkit.PROXY_UID)] * 4  # real, effective, saved, filesystem
