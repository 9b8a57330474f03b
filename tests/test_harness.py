"""The test harness on its own, with no sidecar: the topology, the test servers and the clients
behave as the sidecar's end-to-end tests assume. The same checks later run through the sidecar."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import netkit
from netkit import USER, Topology
from servers import detdata

pytestmark = pytest.mark.netns

MB50 = 50 << 20


def curl(topo: Topology, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return topo.app.run(["curl", "-sS", "--max-time", "20", *args], user=USER,
                        timeout=timeout, check=False)


def test_clients_run_as_ordinary_user(topo: Topology) -> None:
    assert topo.app.run(["id", "-u"], user=USER).stdout.strip() == str(USER)
    assert topo.ext.run(["id", "-u"]).stdout.strip() == "0"


def test_names_resolve_per_namespace(topo: Topology) -> None:
    out = topo.app.run(["getent", "hosts", "httpbin.test"], user=USER).stdout
    assert out.split()[0] == netkit.HTTPBIN
    assert "banner.test" in (Path("/etc/netns") / topo.app.name / "hosts").read_text()


def test_no_default_route_in_app(topo: Topology) -> None:
    routes = topo.app.run(["ip", "route", "show"]).stdout
    assert "default" not in routes
    assert "192.0.2.0/24 via 198.51.100.2" in routes


def test_http_get_echoes_host(topo: Topology) -> None:
    r = curl(topo, "-w", "\n%{http_code}", "http://httpbin.test/get")
    assert r.returncode == 0, r.stderr
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "200"
    assert json.loads(body)["host"] == "httpbin.test"


def test_http_status_and_bytes(topo: Topology) -> None:
    r = curl(topo, "-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.test/status/418")
    assert r.stdout == "418"
    r = topo.app.run(["sh", "-c", "curl -sS http://httpbin.test/bytes/100000?seed=9 | sha256sum"],
                     user=USER)
    assert r.stdout.split()[0] == detdata.sha256(9, 100000)


def test_http_keep_alive_reuses_connection(topo: Topology) -> None:
    r = curl(topo, "-v", "-o", "/dev/null", "-o", "/dev/null",
             "http://httpbin.test/get", "http://httpbin.test/status/204")
    assert r.returncode == 0, r.stderr
    assert "Re-using existing connection" in r.stderr or "Reusing existing connection" in r.stderr


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_http_post_sha256(topo: Topology, chunked: bool) -> None:
    path = topo.tmp / f"post-{int(chunked)}.bin"
    path.write_bytes(detdata.data(11, 300_000))
    os.chmod(path, 0o644)
    extra = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    r = curl(topo, *extra, "--data-binary", f"@{path}", "http://httpbin.test/sha256")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"length": 300_000, "sha256": detdata.sha256(11, 300_000)}


def test_https_with_cacert(topo: Topology) -> None:
    r = curl(topo, "--cacert", topo.cacert, "-w", "\n%{http_code}", "https://httpbin.test/get")
    assert r.returncode == 0, r.stderr
    body, code = r.stdout.rsplit("\n", 1)
    assert code == "200" and json.loads(body)["tls"] is True
    # and the certificate is really checked: without the CA curl refuses (exit 60)
    assert curl(topo, "https://httpbin.test/get").returncode == 60


def test_openssl_s_client_with_sni(topo: Topology) -> None:
    r = topo.app.run(["openssl", "s_client", "-connect", f"{netkit.HTTPBIN}:443",
                      "-servername", "tls.test", "-CAfile", topo.cacert, "-verify_return_error",
                      "-brief"], user=USER, input="", timeout=20, check=False)
    assert r.returncode == 0, r.stderr
    assert "Verification: OK" in r.stderr


def test_ipv6_http(topo: Topology) -> None:
    r = curl(topo, "-w", "\n%{http_code}", "http://httpbin6.test/get")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rsplit("\n", 1)[1] == "200"


def test_banner_arrives_without_sending(topo: Topology) -> None:
    r = topo.client("banner", "banner.test", netkit.BANNER_PORT)
    assert r["banner"].startswith("220 banner.test ")
    assert r["bye"].startswith("221")


def test_upload_50mb_half_closing_client_gets_full_answer(topo: Topology) -> None:
    r = topo.client("upload", "bulk.test", netkit.SINK_PORT, MB50, 3)
    assert r["answer"].split() == [str(MB50), r["sent_sha"]]
    assert r["sent_sha"] == detdata.sha256(3, MB50)


def test_download_50mb(topo: Topology) -> None:
    r = topo.client("download", "bulk.test", netkit.SOURCE_PORT, MB50, 4)
    assert r["received"] == MB50
    assert r["sha"] == detdata.sha256(4, MB50)


def test_download_rate_limited(topo: Topology) -> None:
    r = topo.client("download", "bulk.test", netkit.SOURCE_PORT, 1 << 20, 5, 4 << 20)
    assert r["received"] == 1 << 20 and r["sha"] == detdata.sha256(5, 1 << 20)
    assert r["seconds"] >= 0.2  # 1 MiB at 4 MiB/s takes about 0.25 s


def test_half_closing_server_receives_rest(topo: Topology) -> None:
    before = len(topo.halfclose_reports())
    r = topo.client("halfclose", "bulk.test", netkit.HALFCLOSE_PORT, 3 << 20, 5)
    assert r["received"] == netkit.HALFCLOSE_SIZE
    assert r["received_sha"] == detdata.sha256(7, netkit.HALFCLOSE_SIZE)
    assert topo.halfclose_reports()[before:] == [(3 << 20, r["sent_sha"])]


def test_closed_port_fails_at_once(topo: Topology) -> None:
    t0 = time.monotonic()
    r = curl(topo, f"http://{netkit.CLOSED_HOST}:{netkit.CLOSED_PORT}/")
    assert r.returncode == 7, r.stderr
    assert time.monotonic() - t0 < 2.0
    p = topo.client("connect", netkit.CLOSED_HOST, netkit.CLOSED_PORT)
    assert p["outcome"] == "refused" and p["seconds"] < 0.5


def test_iperf3_one_second(topo: Topology) -> None:
    r = topo.app.run(["iperf3", "-c", netkit.HTTPBIN, "-p", str(netkit.IPERF_PORT), "-t", "1",
                      "-J"], user=USER, timeout=30)
    res = json.loads(r.stdout)
    assert res["end"]["sum_received"]["bytes"] > 0


# -- the harness's own lifecycle -----------------------------------------------------------

def _netns_names() -> set:
    return set(os.listdir(netkit.NETNS_RUN_DIR)) if netkit.NETNS_RUN_DIR.is_dir() else set()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_teardown_runs_on_error(exc: type) -> None:
    with pytest.raises(exc):
        with Topology(prefix="fpt", ipv6=False) as t:
            names = {t.app.name, t.ext.name}
            assert names <= _netns_names()
            t.ext.popen(["sleep", "60"])
            tmp = t.tmp
            raise exc("boom")
    assert not names & _netns_names()
    assert not any((netkit.NETNS_ETC_DIR / n).exists() for n in names)
    assert not tmp.exists()


def test_cleanup_stale_removes_dead_runs_only() -> None:
    dead = "fpt-999999999-abcdef-app"  # pid beyond pid_max: its creator is gone
    alive = f"fpt-{os.getppid()}-abcdef-app"
    for n in (dead, alive):
        subprocess.run(["ip", "netns", "add", n], check=True)
    (netkit.NETNS_ETC_DIR / dead).mkdir(parents=True, exist_ok=True)
    try:
        assert netkit.cleanup_stale("fpt") == [dead]
        assert dead not in _netns_names() and alive in _netns_names()
        assert not (netkit.NETNS_ETC_DIR / dead).exists()
    finally:
        for n in (dead, alive):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_reset_server_resets(topo: Topology) -> None:
    r = topo.client("reset", "bulk.test", netkit.RESET_PORT)
    assert r["hello"] == "hello\n"
    assert r["outcome"] == "reset" and r["seconds"] < 1.0, r
