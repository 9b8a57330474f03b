"""Soak: one sidecar (2 workers, egress passthrough off, Egress policies) under mixed traffic for a
bounded time while its configuration is reloaded every RELOAD_EVERY seconds, alternately by
SIGHUP and by rewriting the policy file (an atomic rename, new content each time).

Traffic (tests/servers/soakload.py, as an ordinary user in the app namespace): checksummed 4 MiB
uploads and downloads through tcp policies, short keep-alive HTTP requests through an http
policy, TLS through an https (SNI) policy, a server-first banner protocol through a
tcp-server-first policy. Then:
- zero client errors and zero corrupted bytes (every byte is checked);
- no leak: the sidecar idle again (debug build: no connection object, fd or unpooled pipe left)
  and its /proc/PID/fd count back to the warm-up baseline (pooled pipes aside);
- memory flat after warm-up: VmRSS growth bounded;
- no thread above 50% CPU over 2 s once the load stopped.

FASTPROXY_SOAK_SECONDS sets the load's duration (default 30; e.g. 600 for a long run)."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import netkit
from netkit import HTTPBIN, PY, USER, Sidecar, Topology, server_path
from test_policy_manifests import MESHCONFIG, NS, SA, egress

pytestmark = pytest.mark.netns

SECONDS = float(os.environ.get("FASTPROXY_SOAK_SECONDS", "30"))
RELOAD_EVERY = 3.0
WARMUP = min(10.0, SECONDS / 3)
#: VmRSS may grow this much after warm-up (reloads allocate Python objects; the C side must not)
RSS_SLACK_KB = 12 * 1024


def policy_file(generation: int) -> str:
    tcp = "".join(egress(f"tcp-{port}", f"  ipAddresses:\n  - {HTTPBIN}/32\n  ports:\n"
                                        f"  - number: {port}\n    protocol: tcp\n") + "---\n"
                  for port in (netkit.SINK_PORT, netkit.SOURCE_PORT))
    return (f"# generation {generation}\n" + tcp
            + egress("http-80", "  hosts:\n  - httpbin.test\n  ports:\n"
                                "  - number: 80\n    protocol: http\n") + "---\n"
            + egress("tls-443", "  hosts:\n  - tls.test\n  ports:\n"
                                "  - number: 443\n    protocol: https\n") + "---\n"
            + egress("smtp-25", f"  ipAddresses:\n  - {HTTPBIN}/32\n  ports:\n"
                                f"  - number: {netkit.BANNER_PORT}\n    protocol: tcp-server-first\n"))


def write_atomic(folder: Path, name: str, text: str) -> None:
    tmp = folder / f".{name}.tmp"
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, folder / name)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_ticks(pid: int) -> Dict[str, int]:
    """utime + stime of every thread, by 'tid name'."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{tid} {name}"] = int(fields[11]) + int(fields[12])
    return out


@pytest.fixture(scope="module")
def soak_topo() -> Iterator[Topology]:
    with Topology(prefix="fps", ipv6=False) as t:
        t.start_servers(iperf=False)
        yield t


def run_load(topo: Topology, seconds: float) -> Dict[str, dict]:
    r = topo.app.run([PY, server_path("soakload.py"), str(seconds), topo.cacert], user=USER,
                     timeout=seconds + 120)
    return json.loads(r.stdout)


def test_soak_mixed_traffic_with_reloads(soak_topo: Topology, fastproxy_exe: str) -> None:
    topo = soak_topo
    cfg = topo.tmp / "soak-config"
    cfg.mkdir(mode=0o755)
    write_atomic(cfg, "meshconfig.yaml", MESHCONFIG)
    write_atomic(cfg, "policies.yaml", policy_file(0))
    sc = Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(cfg), workers=2, drain_seconds=2,
                 extra=["--service-account", SA, "--namespace", NS])
    with sc.serving():
        assert sc.proc is not None
        pid = sc.proc.pid
        # warm-up: every kind once (pools, lazily built tables), then the baseline
        warm = run_load(topo, 1.0)
        assert all(v["ok"] and not v["errors"] for v in warm.values()), warm
        st0 = sc.wait_idle(timeout=5)
        fds0 = fd_count(pid) - 2 * st0["pipes_pooled"]
        reloads0 = st0["reloads"]

        result: Dict[str, dict] = {}
        loader = threading.Thread(target=lambda: result.update(run_load(topo, SECONDS)))
        t0 = time.monotonic()
        loader.start()
        rss: List[tuple] = []
        generation = 0
        next_reload = t0 + RELOAD_EVERY
        while loader.is_alive():
            now = time.monotonic()
            rss.append((now - t0, rss_kb(pid)))
            if now >= next_reload and now - t0 < SECONDS:
                generation += 1
                if generation % 2:
                    sc.signal(signal.SIGHUP)
                else:
                    write_atomic(cfg, "policies.yaml", policy_file(generation))
                next_reload += RELOAD_EVERY
            loader.join(timeout=0.5)
        took = time.monotonic() - t0

        st = sc.wait_idle(timeout=10)
        totals = {k: (v["ok"], v["bytes"]) for k, v in result.items()}
        print(f"\nsoak {took:.0f}s, {generation} reloads: {totals}")
        errors = {k: v["errors"] for k, v in result.items() if v["errors"]}
        assert not errors, errors
        assert set(result) == {"upload", "download", "http", "tls", "banner"}
        assert all(v["ok"] >= 3 for v in result.values()), totals
        # every rewrite changes the policies: each must have been installed (but perhaps the last)
        assert st["reloads"] - reloads0 >= max(1, generation // 2 - 1), (st["reloads"], generation)
        assert st["reload_failures"] == 0, sc.log_tail()

        # no worker spins once the load stopped
        c0 = cpu_ticks(pid)
        time.sleep(2.0)
        c1 = cpu_ticks(pid)
        hz = os.sysconf("SC_CLK_TCK")
        busy = {k: (c1[k] - c0[k]) / hz / 2.0 for k in c1 if k in c0}
        assert all(v < 0.5 for v in busy.values()), busy

        # fds back to the baseline (pooled pipes aside: the pool may have grown)
        deadline = time.monotonic() + 3
        while True:
            st = sc.wait_idle(timeout=5)
            fds = fd_count(pid) - 2 * st["pipes_pooled"]
            if fds <= fds0:
                break
            assert time.monotonic() < deadline, (fds, fds0, st)
            time.sleep(0.2)

        # memory flat after warm-up
        after = [kb for t, kb in rss if t >= WARMUP]
        base = [kb for t, kb in rss if t < WARMUP]
        assert after and base, rss
        print(f"fds {fds} (baseline {fds0}), VmRSS max {max(base)} kB in warm-up, "
              f"{max(after)} kB after, busiest thread {max(busy.values()):.1%}")
        assert max(after) - max(base) <= RSS_SLACK_KB, (max(base), max(after), rss[::10])
