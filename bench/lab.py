"""The bench's laboratory: a pod-like topology, the servers in it and the interception rules.

The topology is the tests' (tests/netkit.py, imported by path): an `app` namespace (the pod: the
load generators and the proxy under test, which share it as an app and its sidecar do) joined by a
veth to an `ext` namespace where the servers live on 192.0.2.10. Every proxy is reached the way a
pod reaches its sidecar: the app connects to 192.0.2.10 and the `fastproxy iptables` rules
REDIRECT the connection to the outbound port, where the proxy (running as UID 1500, which the
rules exempt) reads the original destination and connects on. The `direct` case applies the same
rules with the server range excluded, so it pays for the NAT table too.

Servers in ext (all on 192.0.2.10): iperf3 on 5201; `fpload serve` with HTTP on 80 (tiny fixed
response or request-body sink), TLS-prefixed HTTP on 443 (for SNI policies) and a holding server
on 7000 (writes one byte per connection, then keeps it open).
"""
from __future__ import annotations

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

SERVER_IP = "192.0.2.10"
SERVER_CIDR = "192.0.2.0/24"
IPERF_PORT = 5201
HTTP_PORT = 80
TLS_PORT = 443
HOLD_PORT = 7000
OUTBOUND_PORT = 15001
ADMIN_PORT = 15000
PROXY_UID = 1500
POLICY_HOST = "bench.test"
#: Namespace, veth and temp-folder prefix of this suite (unique among the project's helpers).
PREFIX = "fpb"


def load_netkit():
    """tests/netkit.py as a module (it is not a package member)."""
    path = ROOT / "tests" / "netkit.py"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: the bench reuses the tests' topology harness")
    spec = importlib.util.spec_from_file_location("fastproxy_tests_netkit", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def nofile_hard() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile() -> None:
    """preexec_fn: lift the soft RLIMIT_NOFILE to the hard limit (inherited across exec)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Lab:
    """The topology with its servers running and interception rules loaded (see module doc)."""

    def __init__(self, fpload: str, fastproxy_cmd: Sequence[str], log_dir: Path) -> None:
        self.fpload = fpload
        self.fastproxy_cmd = list(fastproxy_cmd)
        self.log_dir = log_dir
        self.netkit = load_netkit()
        self.topo = self.netkit.Topology(prefix=PREFIX, hosts={POLICY_HOST: SERVER_IP},
                                         ipv6=False)
        self.rules_mode = ""          # "" (none), "intercept" or "direct"
        self.rules_tool = ""          # "fastproxy iptables" or "bench fallback"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.topo.open()
        try:
            self._tune()
            self._start_servers()
        except BaseException:
            self.topo.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.topo.close()

    @property
    def app(self):
        return self.topo.app

    @property
    def ext(self):
        return self.topo.ext

    @property
    def tmp(self) -> Path:
        return Path(self.topo.tmp)

    def _tune(self) -> None:
        """Namespace-local sysctls only (the machine's own namespace is never touched): room for
        tens of thousands of short connections (ports, backlogs, short-lived conntrack
        TIME_WAIT entries, so a connection-rate run cannot fill the shared conntrack table; the
    proxy's own ports reserved, so no connection of a previous case holds one)."""
        for ns in (self.app.name, self.ext.name):
            for key, value in (("net.core.somaxconn", "65535"),
                               ("net.ipv4.tcp_max_syn_backlog", "65535"),
                               ("net.ipv4.ip_local_port_range", "'1024 65000'"),
                               ("net.ipv4.tcp_tw_reuse", "1"),
                               # the sidecar's ports (admin, outbound, metrics 15010...) never
                               # serve as a connection's ephemeral port: after 9,000 relayed
                               # connections a closing one could hold one and the next case's
                               # wildcard bind would fail
                               ("net.ipv4.ip_local_reserved_ports", "15000-15099")):
                self.topo.sysctl(ns, key, value)

    def _start_servers(self) -> None:
        log = open(self.log_dir / "servers.log", "ab")
        iperf = self.ext.popen(["iperf3", "-s", "-B", SERVER_IP, "-p", str(IPERF_PORT)],
                               stdout=log, stderr=log)
        srv = self.ext.popen([self.fpload, "serve", "--bind", SERVER_IP, "--http", str(HTTP_PORT),
                              "--tls", str(TLS_PORT), "--hold", str(HOLD_PORT), "--threads",
                              str(max(1, min(4, os.cpu_count() or 1)))],
                             stdout=log, stderr=log, preexec_fn=raise_nofile)
        for proc, port in ((iperf, IPERF_PORT), (srv, HTTP_PORT), (srv, TLS_PORT),
                           (srv, HOLD_PORT)):
            self.ext.wait_port(SERVER_IP, port, timeout=10, proc=proc)

    # -- interception ----------------------------------------------------------------------
    def _fastproxy_has_iptables(self) -> bool:
        r = subprocess.run(self.fastproxy_cmd + ["iptables", "--help"], capture_output=True,
                           timeout=60)
        return r.returncode == 0

    def set_rules(self, mode: str) -> None:
        """Loads the interception rules in app: `intercept` redirects all TCP to the outbound
        port; `direct` is the same with the server range excluded. Idempotent per mode."""
        if mode == self.rules_mode:
            return
        if not self.rules_tool:
            self.rules_tool = ("fastproxy iptables" if self._fastproxy_has_iptables()
                               else "bench fallback")
        if self.rules_tool == "fastproxy iptables":
            base = self.fastproxy_cmd + ["iptables", "--ipv4-only"]
            if self.rules_mode:
                self.app.run(base + ["--remove"])
            args = ["--apply", "--proxy-uid", str(PROXY_UID), "--outbound-port",
                    str(OUTBOUND_PORT)]
            if mode == "direct":
                args += ["--exclude-cidr", SERVER_CIDR]
            self.app.run(base + args)
        else:
            self._fallback_rules(mode)
        # conntrack exists in app from the first nat rule on: keep its TIME_WAIT entries short
        self.topo.sysctl(self.app.name, "net.netfilter.nf_conntrack_tcp_timeout_time_wait", "1")
        self.rules_mode = mode

    def _fallback_rules(self, mode: str) -> None:
        """The outbound half of fsm-init's layout, written here only while `fastproxy iptables`
        is not available (same chains, same order: lo, proxy UID, 127.0.0.1, exclusions)."""
        excl = f"-A FSM_PROXY_OUTBOUND -d {SERVER_CIDR} -j RETURN\n" if mode == "direct" else ""
        text = ("*nat\n:FSM_PROXY_OUTBOUND - [0:0]\n:FSM_PROXY_OUT_REDIRECT - [0:0]\n"
                f"-A FSM_PROXY_OUT_REDIRECT -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}\n"
                "-A FSM_PROXY_OUTBOUND -o lo -j RETURN\n"
                f"-A FSM_PROXY_OUTBOUND -m owner --uid-owner {PROXY_UID} -j RETURN\n"
                "-A FSM_PROXY_OUTBOUND -d 127.0.0.1/32 -j RETURN\n"
                f"{excl}-A FSM_PROXY_OUTBOUND -j FSM_PROXY_OUT_REDIRECT\n")
        if not self.rules_mode:
            text += "-A OUTPUT -p tcp -j FSM_PROXY_OUTBOUND\n"
        text += "COMMIT\n"
        self.app.run(["iptables-restore", "--noflush"], input=text)

    # -- running things in app -------------------------------------------------------------
    def run_app(self, cmd: Sequence[str], timeout: float = 60.0,
                check: bool = True) -> subprocess.CompletedProcess:
        """Runs a load generator in app (as root: root's traffic is intercepted like any app's)
        with the file-descriptor limit raised; with `check`, a non-zero exit raises."""
        r = subprocess.run(self.app.argv(cmd), capture_output=True, text=True, timeout=timeout,
                           preexec_fn=raise_nofile)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}\n"
                               f"stdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}")
        return r

    def popen_app(self, cmd: Sequence[str], user: Optional[int] = None,
                  **kwargs) -> subprocess.Popen:
        kwargs.setdefault("preexec_fn", raise_nofile)
        return self.app.popen(cmd, user=user, **kwargs)

    def wait_listen(self, port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
        """Waits until something in app listens on `port` (read from /proc/net/tcp of app)."""
        deadline = time.monotonic() + timeout
        want = f":{port:04X}"
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
            r = subprocess.run(self.app.argv(["cat", "/proc/net/tcp", "/proc/net/tcp6"]),
                               capture_output=True, text=True, timeout=10)
            for line in r.stdout.splitlines()[1:]:
                f = line.split()
                if len(f) > 3 and f[1].endswith(want) and f[3] == "0A":
                    return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def which(name: str) -> Optional[str]:
    return shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


def env_info() -> Dict[str, object]:
    """What machine this is: CPU model, cores, kernel, memory, tool versions."""
    info: Dict[str, object] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cores"] = len(os.sched_getaffinity(0))
    info["kernel"] = os.uname().release
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gb"] = round(int(mem) / 1024 / 1024, 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        info["os"] = [l.split("=", 1)[1].strip('"') for l in
                      Path("/etc/os-release").read_text().splitlines()
                      if l.startswith("PRETTY_NAME=")][0]
    except (OSError, IndexError):
        pass
    versions: Dict[str, str] = {}
    for tool, args in (("haproxy", ["-v"]), ("iperf3", ["-v"]), ("socat", ["-V"]),
                       ("wrk", ["-v"])):
        path = which(tool)
        if not path:
            continue
        r = subprocess.run([path] + args, capture_output=True, text=True, timeout=10)
        out = (r.stdout + r.stderr).strip().splitlines()
        line = next((l for l in out if "version" in l.lower() or l.startswith(tool)), "")
        versions[tool] = line.strip()[:100]
    info["tools"] = versions
    info["nofile_hard"] = nofile_hard()
    for key in ("pipe-max-size", "pipe-user-pages-soft"):
        try:
            info[key] = int(Path(f"/proc/sys/fs/{key}").read_text())
        except (OSError, ValueError):
            pass
    return info
