"""How each figure is measured: the load generators run in the app namespace, the proxy's CPU,
memory and pipes are read from /proc.

- bulk throughput: iperf3, 1 and 8 streams (`end.sum_received`: what the server received);
- CPU per GB: utime+stime (+ reaped children's) of the proxy's process tree around the iperf3
  runs, divided by the bytes they moved;
- new connections per second: wrk, `Connection: close`, tiny response (each request is a new
  connection through the proxy);
- keep-alive requests per second: wrk, same server, keep-alive;
- latency: `fpload rate`, a fixed request rate well below saturation over keep-alive
  connections, latency counted from when each request was due (no coordinated omission);
- memory: PSS (and VmRSS) summed over the proxy's process tree (PSS counts a page shared by
  socat's forks once, not once per process), idle, while `fpload hold` keeps N
  idle connections open through it, and at the peak of a 1,000-connection `fpload rate` run;
  pipes: distinct pipe inodes among the tree's open files while the idle connections are held;
- policy path: `fpload bulk` (POSTs over one connection; for 443 after a real ClientHello) and
  `fpload connrate` (new connections, each a ClientHello for 443, then one `Connection: close`
  request with Host bench.test); the passthrough case runs the same traffic.
"""
from __future__ import annotations

import json
import os
import re
import select
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

from bench import lab as L

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- the proxy's process tree --------------------------------------------------------------

def _children_map() -> Dict[int, List[int]]:
    kids: Dict[int, List[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(root: int) -> List[int]:
    """root and all its live descendants."""
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """CPU time of the tree: own utime+stime of every live process plus the cutime+cstime of
    children they have reaped (socat's finished per-connection children)."""
    total = 0
    for pid in tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def memory_kb(root: int) -> Dict[str, int]:
    """{'rss_kb', 'pss_kb', 'procs', 'threads'} summed over the tree."""
    rss = pss = n = threads = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads += int(line.split()[1])
            n += 1
        except OSError:
            continue
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                    break
        except OSError:
            pass
    return {"rss_kb": rss, "pss_kb": pss, "procs": n, "threads": threads}


def pipes_held(root: int) -> int:
    """Distinct pipes the tree has open (fds whose target is pipe:[inode])."""
    inodes: Set[str] = set()
    for pid in tree(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("pipe:"):
                inodes.add(target)
    return len(inodes)


class PeakSampler:
    """Samples the tree's memory every `interval` s in a thread; keeps the peak."""

    def __init__(self, root: Optional[int], interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak: Dict[str, int] = {"rss_kb": 0, "pss_kb": 0, "procs": 0, "threads": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.root:
                m = memory_kb(self.root)
                for k, v in m.items():
                    self.peak[k] = max(self.peak[k], v)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# ---- load generators -----------------------------------------------------------------------

def iperf(lab: "L.Lab", streams: int, secs: int) -> Dict[str, float]:
    r = lab.run_app(["iperf3", "-c", L.SERVER_IP, "-p", str(L.IPERF_PORT), "-t", str(secs),
                     "-P", str(streams), "-J"], timeout=secs + 30, check=False)
    try:
        d = json.loads(r.stdout)
    except ValueError:
        raise RuntimeError(f"iperf3: no JSON (exit {r.returncode}): {r.stderr[-500:]}")
    if "error" in d or "sum_received" not in d.get("end", {}):
        raise RuntimeError(f"iperf3: {d.get('error', 'no result')}")
    rx = d["end"]["sum_received"]
    return {"gbps": rx["bits_per_second"] / 1e9, "bytes": float(rx["bytes"]),
            "secs": float(rx["seconds"]),
            "retransmits": float(d["end"].get("sum_sent", {}).get("retransmits", 0))}


_WRK_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_ERR = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_WRK_REQS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")


def wrk(lab: "L.Lab", url: str, secs: int, conns: int, headers: Iterable[str] = (),
        script: Optional[Path] = None, threads: int = 1) -> Dict[str, float]:
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{secs}s", "--timeout", "2s"]
    for h in headers:
        cmd += ["-H", h]
    if script:
        cmd += ["-s", str(script)]
    r = lab.run_app(cmd + [url], timeout=secs + 30, check=False)
    m = _WRK_RPS.search(r.stdout)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"wrk: exit {r.returncode}: {(r.stdout + r.stderr)[-500:]}")
    out = {"rps": float(m.group(1)), "errors": 0.0, "non2xx": 0.0}
    e = _WRK_ERR.search(r.stdout)
    if e:
        out["errors"] = float(sum(int(x) for x in e.groups()))
    n = _WRK_NON2XX.search(r.stdout)
    if n:
        out["non2xx"] = float(n.group(1))
    q = _WRK_REQS.search(r.stdout)
    if q:
        out["requests"] = float(q.group(1))
    return out


def fpload_rate(lab: "L.Lab", fpload: str, rate: float, conns: int, secs: float,
                warmup: float, port: int = L.HTTP_PORT) -> Dict[str, float]:
    r = lab.run_app([fpload, "rate", "--dst", f"{L.SERVER_IP}:{port}", "--rate", str(rate),
                     "--conns", str(conns), "--secs", str(secs), "--warmup", str(warmup)],
                    timeout=secs + warmup + 60, check=False)
    try:
        d = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"fpload rate: exit {r.returncode}: {r.stderr[-500:]}")
    if "error" in d:
        raise RuntimeError(f"fpload rate: {d['error']}")
    return d


def fpload_bulk(lab: "L.Lab", fpload: str, port: int, secs: float,
                prefix: Optional[Path] = None) -> Dict[str, float]:
    cmd = [fpload, "bulk", "--dst", f"{L.SERVER_IP}:{port}", "--secs", str(secs), "--host",
           L.POLICY_HOST]
    if prefix:
        cmd += ["--prefix-file", str(prefix)]
    r = lab.run_app(cmd, timeout=secs + 60, check=False)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"fpload bulk: exit {r.returncode}: {r.stderr[-300:]}")


def hold(lab: "L.Lab", fpload: str, conns: int, root: Optional[int], timeout: float,
         on_hold=None) -> Dict[str, float]:
    """Opens `conns` idle connections through the proxy to the holding server and, while they
    are all open, samples the proxy's memory and pipes (and calls on_hold() for extras)."""
    p = lab.popen_app([fpload, "hold", "--dst", f"{L.SERVER_IP}:{L.HOLD_PORT}", "--conns",
                       str(conns), "--timeout", str(timeout)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: Dict[str, float] = {}
    try:
        ready, _, _ = select.select([p.stdout], [], [], timeout + 10)
        line = p.stdout.readline().decode() if ready else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"fpload hold: no ready line ({line!r}); "
                               f"{p.stderr.read(300).decode(errors='replace') if p.poll() is not None else ''}")
        _, ok, failed = line.split()
        out["ready"] = float(ok)
        out["failed"] = float(failed)
        time.sleep(0.2)  # let the proxy settle (all upstream legs are already up)
        if root:
            out.update({k: float(v) for k, v in memory_kb(root).items()})
            out["pipes"] = float(pipes_held(root))
        if on_hold:
            out.update(on_hold())
        p.stdin.write(b"release\n")
        p.stdin.flush()
        rest, _ = p.communicate(timeout=60)
        d = json.loads(rest.decode().strip().splitlines()[-1])
        out["open_secs"] = float(d["open_secs"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return out


def active(lab: "L.Lab", fpload: str, conns: int, rate: float, secs: float,
           root: Optional[int]) -> Dict[str, float]:
    """`conns` keep-alive connections busy at `rate` requests/s in total; the proxy's peak
    memory while they run."""
    with PeakSampler(root) as s:
        d = fpload_rate(lab, fpload, rate, conns, secs, warmup=0.0)
    out = {k: float(v) for k, v in s.peak.items()}
    out.update(completed=float(d["completed"]), errors=float(d["errors"]) + float(d["lost"]),
               p99_us=float(d["p99_us"]))
    return out


# ---- policy-path helpers -------------------------------------------------------------------

def client_hello(server_name: str) -> bytes:
    """A real TLS ClientHello (one record) for `server_name`, made by Python's ssl module."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data = out.read()
    if len(data) < 5 or data[0] != 0x16 or len(data) != 5 + int.from_bytes(data[3:5], "big"):
        raise RuntimeError("could not make a single-record ClientHello")
    return data


def fpload_connrate(lab: "L.Lab", fpload: str, port: int, secs: float, conns: int,
                    prefix: Optional[Path] = None) -> Dict[str, float]:
    """New connections per second, each with an optional ClientHello and one request."""
    cmd = [fpload, "connrate", "--dst", f"{L.SERVER_IP}:{port}", "--secs", str(secs),
           "--conns", str(conns), "--host", L.POLICY_HOST]
    if prefix:
        cmd += ["--prefix-file", str(prefix)]
    r = lab.run_app(cmd, timeout=secs + 60, check=False)
    try:
        d = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"fpload connrate: exit {r.returncode}: {r.stderr[-300:]}")
    if d["errors"] or d["non200"]:
        raise RuntimeError(f"fpload connrate: {d['errors']} errors, {d['non200']} not 200 "
                           f"of {d['completed']} connections")
    return d


PROBE = r"""
import socket, sys
def ask(port, prefix, host):
    try:
        s = socket.create_connection(("%s", port), timeout=3)
        s.sendall(prefix + b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = s.recv(4096)
            if not b: break
            data += b
        s.close()
        if prefix and data[:1] == b"\x16":  # the server's answer to the ClientHello
            data = data[5 + int.from_bytes(data[3:5], "big"):]
        return data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except OSError as e:
        return type(e).__name__
port = int(sys.argv[1])
good = open(sys.argv[2], "rb").read() if sys.argv[2] != "-" else b""
bad = open(sys.argv[3], "rb").read() if sys.argv[3] != "-" else b""
print(ask(port, bad, "other.test")); print(ask(port, good, "%s"))
""" % (L.SERVER_IP, L.POLICY_HOST)


def probe_policy(lab: "L.Lab", port: int, good: Optional[Path], bad: Optional[Path]) -> str:
    """'' when the proxy refuses a connection for other.test and relays one for bench.test on
    `port`; else what happened."""
    r = lab.run_app(["/usr/bin/python3", "-c", PROBE, str(port), str(good or "-"),
                     str(bad or "-")], timeout=30, check=False)
    lines = r.stdout.strip().splitlines()
    if len(lines) != 2:
        return f"probe failed: {r.stderr.strip()[-200:]}"
    refused, allowed = lines
    if " 200 " in refused + " ":
        return f"policy not enforced: a request for other.test was relayed ({refused})"
    if " 200 " not in allowed + " ":
        return (f"the policy is not in effect: a request for {L.POLICY_HOST} was refused "
                f"({allowed})")
    return ""


@dataclass
class Plan:
    """Durations, sizes and rates of one run (the default and --quick presets)."""
    repeat: int = 3
    iperf_secs: int = 1
    wrk_secs: int = 1
    wrk_conns: int = 32
    lat_rate: float = 2000.0
    lat_conns: int = 8
    lat_secs: float = 1.0
    lat_warmup: float = 0.3
    hold_conns: int = 10000
    active_conns: int = 1000
    active_rate: float = 4000.0
    active_secs: float = 1.0
    bulk_secs: float = 1.0
    connrate_secs: float = 1.0    # policy path: fpload connrate
    micro_max_time: float = 0.1
    settle_secs: float = 0.3      # after a proxy starts, before its idle memory is read
    full: bool = True             # 8-stream throughput and keep-alive requests/s too

    @classmethod
    def quick(cls) -> "Plan":
        """One short repetition of the figures that matter most (a smoke run, < 1 minute)."""
        return cls(repeat=1, lat_secs=0.6, lat_warmup=0.2, hold_conns=500, active_conns=200,
                   active_rate=2000.0, active_secs=0.5, bulk_secs=0.5, connrate_secs=0.5,
                   micro_max_time=0.02, settle_secs=0.3, full=False)


# ---- per-connection cost (its own step: tracing never overlaps a timed figure) -------------

#: The syscalls the per-connection table breaks down; everything else is counted as "others".
#: Each is counted on its own tracepoint; epoll_wait also counts epoll_pwait/epoll_pwait2 and
#: accept4 also plain accept, which some builds use instead.
SYSCALLS = ("accept4", "getsockopt", "setsockopt", "socket", "connect", "epoll_wait",
            "epoll_ctl", "recvfrom", "sendto", "read", "write", "splice", "shutdown", "close")
_ALIASES = {"accept": "accept4", "epoll_pwait": "epoll_wait", "epoll_pwait2": "epoll_wait"}


def _tracepoints() -> List[str]:
    """syscalls:sys_enter_* events for SYSCALLS and their aliases that this kernel has."""
    names = list(SYSCALLS) + list(_ALIASES)
    for base in ("/sys/kernel/tracing/events/syscalls", "/sys/kernel/debug/tracing/events/syscalls"):
        if os.path.isdir(base):
            return [n for n in names if os.path.isdir(f"{base}/sys_enter_{n}")]
    return names


def _perf_counts(text: str) -> Dict[str, float]:
    """perf stat -x, output: {syscall or 'total': count} (aliases folded in)."""
    out: Dict[str, float] = {}
    for line in text.splitlines():
        f = line.split(",")
        if len(f) < 3 or not f[0].strip().replace(".", "").isdigit():
            continue
        event = f[2].strip()
        if event == "raw_syscalls:sys_enter":
            key = "total"
        elif event.startswith("syscalls:sys_enter_"):
            key = event[len("syscalls:sys_enter_"):]
            key = _ALIASES.get(key, key)
        else:
            continue
        out[key] = out.get(key, 0.0) + float(f[0])
    return out


_STRACE_ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def _strace_counts(text: str) -> Dict[str, float]:
    """strace -c summary: {syscall or 'total': calls} (aliases folded in)."""
    out: Dict[str, float] = {}
    for line in text.splitlines():
        m = _STRACE_ROW.match(line)
        if not m or m.group(2) == "total":
            continue
        key = _ALIASES.get(m.group(2), m.group(2))
        out[key] = out.get(key, 0.0) + float(m.group(1))
        out["total"] = out.get("total", 0.0) + float(m.group(1))
    return out


def sockets_open(root: int) -> int:
    """Sockets the tree has open (fds whose target is socket:[inode])."""
    n = 0
    for pid in tree(root):
        try:
            n += sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                     if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"))
        except OSError:
            continue
    return n


def settle(root: int, timeout: float = 10.0) -> Dict[str, float]:
    """Waits until the proxy is quiet: its sockets no longer change in number and it uses
    (almost) no CPU over 0.3 s, e.g. once the connections of an earlier figure are closed."""
    t0 = time.monotonic()
    last = (sockets_open(root), cpu_seconds(root))
    while time.monotonic() - t0 < timeout:
        time.sleep(0.3)
        now = (sockets_open(root), cpu_seconds(root))
        if now[0] == last[0] and now[1] - last[1] < 0.015:
            break
        last = now
    return {"settle_s": time.monotonic() - t0, "sockets": float(last[0])}


def syscalls_per_conn(lab: "L.Lab", root: int, secs: int, conns: int) -> Dict[str, float]:
    """Syscalls per proxied new connection: once the proxy is quiet (settle()), its process
    tree is traced (perf stat on the syscall tracepoints, which counts every thread of an
    attached process; strace -c -f when perf is missing or cannot attach) around a `wrk -c conns -H
    'Connection: close'` run; each count is divided by the requests wrk completed (one
    connection each). Keys: the SYSCALLS, `others`, `total`, `requests`, `tracer` (1: perf,
    2: strace) and what settle() saw."""
    quiet = settle(root)
    pids = ",".join(str(p) for p in tree(root))
    tracers = []
    if L.which("perf"):
        events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in _tracepoints()]
        tracers.append([L.which("perf"), "stat", "-x,", "-e", ",".join(events), "-p", pids])
    if L.which("strace"):
        tracers.append([L.which("strace"), "-c", "-f", "-qq"]
                       + [a for p in pids.split(",") for a in ("-p", p)])
    if not tracers:
        raise RuntimeError("neither perf (linux-perf) nor strace is installed")
    failed: List[str] = []
    for cmd in tracers:  # perf; strace where perf cannot attach (no tracepoints, paranoid)
        tracer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
        time.sleep(0.5)  # attached (an idle proxy makes next to no syscalls meanwhile)
        if tracer.poll() is None:
            break
        failed.append(f"{Path(cmd[0]).name}: exit {tracer.returncode}: "
                      f"{tracer.stderr.read().strip()[-200:]}")
    else:
        raise RuntimeError("; ".join(failed))
    perf = Path(cmd[0]).name == "perf"
    try:
        w = wrk(lab, f"http://{L.SERVER_IP}:{L.HTTP_PORT}/", secs, conns, ["Connection: close"])
    finally:
        if tracer.poll() is None:
            tracer.send_signal(2)  # SIGINT: both print their summary and detach
        out, err = tracer.communicate(timeout=30)
    counts = (_perf_counts if perf else _strace_counts)(err + out)
    reqs = w.get("requests", 0.0)
    if not reqs or "total" not in counts:
        raise RuntimeError(f"no counts (requests {reqs}): {(err + out)[-300:]}")
    res = {n: counts.get(n, 0.0) / reqs for n in SYSCALLS}
    res["total"] = counts["total"] / reqs
    res["others"] = max(0.0, res["total"] - sum(res[n] for n in SYSCALLS))
    res.update(requests=reqs, errors=w["errors"], rps_traced=w["rps"],
               tracer=1.0 if perf else 2.0, **quiet)
    return res
