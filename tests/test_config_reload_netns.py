"""A running sidecar and its configuration files under attack (issue 8 item 2, issue 7 items 3
and 6), in namespaces with real clients and servers:

* a deny-all configuration rewritten in place (truncated, then written slowly in pieces, as
  `cat > file` or an editor does; and left empty for a while) never relays a single connection,
  and the empty file is a failed reload, counted and logged at the default log level;
* every hostile file is a failed reload: the sidecar keeps its last good configuration (still
  denying), stays under 100 MB, and still takes the next good change."""
from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Dict

import pytest

import netkit
from badconfig import BAD, IGNORED_JSON
from netkit import USER, Sidecar, Topology

pytestmark = pytest.mark.netns

RSS_LIMIT_KB = 100 * 1024

DENY_ALL = """\
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata:
  name: fsm-mesh-config
  namespace: fsm-system
spec:
  sidecar:
    logLevel: error
  traffic:
    enableEgress: false
"""

# Connects to an external server that speaks first, again and again, until the stop file
# appears (or 60 s): prints {outcome: count}. Any "data" is a connection the sidecar relayed.
LOOP_CLIENT = r"""
import json, os, socket, sys, time
host, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
counts = {}
end = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < end:
    try:
        c = socket.create_connection((host, port), timeout=2)
        c.settimeout(2)
        try:
            out = "data" if c.recv(1) else "eof"
        finally:
            c.close()
    except ConnectionResetError:
        out = "reset"
    except ConnectionRefusedError:
        out = "refused"
    except OSError as e:
        out = type(e).__name__
    counts[out] = counts.get(out, 0) + 1
    time.sleep(0.01)
print(json.dumps(counts))
"""


def config_folder(topo: Topology) -> Path:
    folder = Path(topo.tmp) / f"cfg-{secrets.token_hex(3)}"
    folder.mkdir()
    folder.chmod(0o755)
    netkit.write_config(folder, "mesh.yaml", DENY_ALL)
    return folder


def wait_stat(sc: Sidecar, key: str, above: int, timeout: float = 10.0) -> Dict:
    deadline = time.monotonic() + timeout
    while True:
        st = sc.stats()
        if st.get(key, 0) > above:
            return st
        assert time.monotonic() < deadline, f"{key} stayed at {st.get(key)}:\n{sc.log_tail()}"
        time.sleep(0.05)


def rss_kb(sc: Sidecar) -> int:
    assert sc.proc is not None
    for line in Path(f"/proc/{sc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def outcome(topo: Topology) -> str:
    return topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"]


def test_in_place_rewrite_of_deny_all_never_relays(topo: Topology, fastproxy_exe: str,
                                                   rules: None) -> None:
    folder = config_folder(topo)
    mesh = folder / "mesh.yaml"
    stop = Path(topo.tmp) / f"stop-{secrets.token_hex(3)}"
    # no --log-level: the default level (error) must show the failed reload
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), drain_seconds=2).start()
    client = None
    try:
        assert outcome(topo) == "reset"
        before = sc.stats()
        client = topo.app.popen([netkit.PY, "-c", LOOP_CLIENT, netkit.HTTPBIN,
                                 str(netkit.BANNER_PORT), str(stop)],
                                user=USER, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = DENY_ALL.replace("logLevel: error", "logLevel: error\n    sidecarTimeout: 30"
                                 ).splitlines(True)

        def write_slowly() -> None:
            # `cat > file`: truncate, then the text arrives in pieces; several prefixes are
            # valid MeshConfigs without `enableEgress: false` (FSM's default: passthrough)
            with open(mesh, "wb", buffering=0) as f:
                for line in lines:
                    time.sleep(0.15)
                    f.write(line.encode())

        write_slowly()
        st = wait_stat(sc, "config_generation", before["config_generation"])
        assert st["reload_failures"] == before["reload_failures"], st  # never read half-written
        # an editor that truncates, then stalls: the empty file is read and refused
        with open(mesh, "wb"):
            pass
        st = wait_stat(sc, "reload_failures", before["reload_failures"])
        assert "holds no configuration document" in (st["last_reload_error"] or ""), st
        time.sleep(1.5)
        write_slowly()
        wait_stat(sc, "config_generation", st["config_generation"])
        time.sleep(0.5)
        stop.touch()
        out, err = client.communicate(timeout=30)
        counts = json.loads(out)
        assert counts.get("data", 0) == 0, f"relayed during the rewrite: {counts}"
        assert counts.get("reset", 0) >= 20, counts  # the client kept trying throughout
        assert outcome(topo) == "reset"
        log = sc.log_tail(1 << 30)  # the whole log: the access log writes a line per connection
        assert "reload rejected" in log and "holds no configuration document" in log, log[-4000:]
        assert sc.stats()["reload_failures"] == before["reload_failures"] + 1
    finally:
        stop.touch()
        if client is not None and client.poll() is None:
            client.kill()
        assert sc.terminate() == 0, sc.log_tail()


def test_hostile_files_keep_the_last_good_configuration(topo: Topology, fastproxy_exe: str,
                                                        rules: None) -> None:
    folder = config_folder(topo)
    netkit.write_config(folder, "extra.json", IGNORED_JSON)
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), drain_seconds=2,
                 extra=["--connect-to-host"]).start()
    try:
        assert outcome(topo) == "reset"
        for bad in BAD:
            st = sc.stats()
            path = bad.write(folder)
            st = wait_stat(sc, "reload_failures", st["reload_failures"])
            err = st["last_reload_error"] or ""
            assert err.startswith(str(path)) and all(w in err for w in bad.expect), (bad.id, err)
            assert "Traceback" not in sc.log_tail(1 << 30)
            assert outcome(topo) == "reset", bad.id  # the last good configuration still decides
            rss = rss_kb(sc)
            print(f"{bad.id}: refused, sidecar RSS {rss} KiB")
            assert rss < RSS_LIMIT_KB, f"{bad.id}: RSS {rss} KiB after the refusal"
            # put the good file back: a reload that works again
            (folder / bad.name).write_bytes(good[bad.name])
            wait_stat(sc, "config_generation", st["config_generation"])
        netkit.write_config(folder, "mesh.yaml", DENY_ALL.replace("false", "true"))
        st = wait_stat(sc, "config_generation", sc.stats()["config_generation"])
        assert outcome(topo) == "data", st  # good changes still apply
        assert sc.proc is not None and sc.proc.poll() is None
    finally:
        assert sc.terminate() == 0, sc.log_tail()
