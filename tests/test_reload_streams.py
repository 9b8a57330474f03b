"""Reload without drops, proved under load: 50 long-lived streams, checksummed at both ends in
both directions, stay whole while `enableEgress` is toggled 40 times (through `fastproxy patch`
and through file edits) and an `Egress` is added and removed 20 times; after every change, new
connections see the new state within a second."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict

import pytest

import netkit
from netkit import HTTPBIN, PY, USER, Sidecar, Topology

pytestmark = pytest.mark.netns

STREAMS = 50
STREAM_PORT = 9100
RATE = 16 << 10  # bytes/s per direction per stream
ROUNDS = 20
SA, NS = "app", "app"

EGRESS = f"""\
apiVersion: policy.flomesh.io/v1alpha1
kind: Egress
metadata:
  name: banner-25
  namespace: {NS}
spec:
  sources:
  - kind: ServiceAccount
    name: {SA}
    namespace: {NS}
  ipAddresses:
  - {HTTPBIN}/32
  ports:
  - number: {netkit.BANNER_PORT}
    protocol: tcp-server-first
"""


def banner_ok(topo: Topology) -> bool:
    """A new connection to the banner server (covered by the Egress) gets its greeting."""
    def go() -> bool:
        s = topo.app.socket()
        s.settimeout(1.0)
        try:
            s.connect((HTTPBIN, netkit.BANNER_PORT))
            return bool(s.recv(64))
        except OSError:
            return False
        finally:
            s.close()
    return topo.app.call(go)


def http_ok(topo: Topology) -> bool:
    """A new connection to the HTTP server (no Egress: only passthrough lets it out) works."""
    try:
        return topo.app.http("GET", HTTPBIN, netkit.HTTP_PORT, "/get", timeout=1.0)[0] == 200
    except (OSError, Exception):  # reset, closed, bad status line
        return False


def replace_file(path: Path, text: str) -> None:
    """An editor's save: a new file renamed over the old one."""
    tmp = path.with_name("." + path.name + ".swp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def test_fifty_streams_survive_eighty_reloads(topo: Topology, fastproxy_exe: str) -> None:
    report = topo.tmp / "streams.report"
    report.touch()
    report.chmod(0o666)
    srv = topo.ext.popen([PY, netkit.server_path("streams.py"), "serve",
                          f"{HTTPBIN}:{STREAM_PORT}", str(report)],
                         stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"

    folder = topo.tmp / "reload-cfg"
    folder.mkdir()
    folder.chmod(0o755)
    mesh = folder / "mesh.yaml"
    netkit.write_config(folder, "mesh.yaml", netkit.meshconfig({"traffic": {"enableEgress": True}}))
    egress = folder / "egress.yaml"
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), workers=2,
                 drain_seconds=5, extra=["--service-account", SA, "--namespace", NS])
    stop = topo.tmp / "streams.stop"

    def patch_egress(on: bool) -> None:
        r = subprocess.run([fastproxy_exe, "patch", "meshconfig", "fsm-mesh-config", "-n",
                            "fsm-system", "-p", json.dumps({"spec": {"traffic": {"enableEgress": on}}}),
                            "--type=merge", "--config", str(folder)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr

    def edit_egress(on: bool) -> None:
        text = mesh.read_text()
        old, new = ("true", "false") if not on else ("false", "true")
        assert f"enableEgress: {old}" in text
        replace_file(mesh, text.replace(f"enableEgress: {old}", f"enableEgress: {new}"))

    def add_policy() -> None:
        replace_file(egress, EGRESS)

    def remove_policy() -> None:
        egress.unlink()

    def expect(change: Callable[[], None], want: Dict[str, bool], what: str) -> float:
        change()
        t0 = time.monotonic()
        while True:
            got = {"banner": banner_ok(topo), "http": http_ok(topo)}
            if got == want:
                return time.monotonic() - t0
            assert time.monotonic() - t0 < 1.0, f"{what}: new connections still see {got} " \
                                                f"after 1 s (want {want})\n{sc.log_tail()}"
            time.sleep(0.02)

    with sc.serving():
        client = topo.app.popen([PY, netkit.server_path("streams.py"), "run", HTTPBIN,
                                 str(STREAM_PORT), str(STREAMS), str(RATE), str(stop)],
                                user=USER, stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None and client.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 10
        while sc.stats()["cx_active"] < STREAMS:
            assert time.monotonic() < deadline, "the streams did not all open"
            time.sleep(0.05)
        assert {"banner": banner_ok(topo), "http": http_ok(topo)} == {"banner": True, "http": True}
        t_start = time.monotonic()
        worst = 0.0
        for i in range(ROUNDS):
            toggle = patch_egress if i % 2 == 0 else edit_egress
            worst = max(worst,
                        expect(lambda: toggle(False), {"banner": False, "http": False}, f"{i}: egress off"),
                        expect(add_policy, {"banner": True, "http": False}, f"{i}: Egress added"),
                        expect(remove_policy, {"banner": False, "http": False}, f"{i}: Egress removed"),
                        expect(lambda: toggle(True), {"banner": True, "http": True}, f"{i}: egress on"))
        changes_seconds = time.monotonic() - t_start
        assert sc.stats()["cx_active"] >= STREAMS  # every stream still open
        stop.touch()
        out, _ = client.communicate(timeout=60)
        st = sc.stats()
    streams = json.loads(out.splitlines()[-1])["streams"]
    server = {}
    for line in report.read_text().splitlines():
        assert not line.startswith("error"), line
        sid, sent, sent_sha, recv, recv_sha = line.split()
        server[int(sid)] = (int(sent), sent_sha, int(recv), recv_sha)
    broken = [s for s in streams if s["error"]]
    assert not broken, broken[:3]
    assert len(server) == STREAMS
    for s in streams:
        srv_sent, srv_sent_sha, srv_recv, srv_recv_sha = server[s["id"]]
        assert (s["recv"], s["recv_sha"]) == (srv_sent, srv_sent_sha), s  # server -> app
        assert (srv_recv, srv_recv_sha) == (s["sent"], s["sent_sha"]), s  # app -> server
        assert s["sent"] >= RATE * changes_seconds * 0.5  # it carried data the whole time
    assert st["reloads"] == 4 * ROUNDS and st["reload_failures"] == 0, st
    print(f"{4 * ROUNDS} changes in {changes_seconds:.1f} s, slowest seen after {worst:.2f} s")
