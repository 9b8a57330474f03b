"""The cases: each proxy under test, how it is started transparently and what it needs.

Every proxy listens on the outbound port in the app namespace as UID 1500 (which the interception
rules exempt, so its own upstream connections go out directly) and is found by the REDIRECT rules,
exactly as a sidecar in a pod. `direct` runs no proxy; its rules exclude the server range.

A case reports why it cannot run (`prerequisite()`, a one-line reason shown in the table) instead
of failing the run; the policy cases additionally prove, before being measured, that their policy
is really enforced (a wrong SNI or Host is refused, the right one passes).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from bench import lab as L

#: Figures measured for the main cases and for the policy-path cases.
MAIN = "main"
POLICY = "policy"


@dataclass
class Running:
    """A started proxy: its process (the root of its process tree) and how to stop it."""
    proc: Optional[subprocess.Popen]
    case: "Case"
    lab: "L.Lab"
    log: Optional[Path] = None
    target_port: int = 0
    restart: Optional[Callable[[int], subprocess.Popen]] = None

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    def retarget(self, port: int) -> None:
        """For forwarders with a fixed destination (socat): point them at `port` of the server."""
        if self.restart is None or port == self.target_port:
            return
        stop_proc(self.proc)
        self.proc = self.restart(port)
        self.target_port = port
        self.lab.wait_listen(L.OUTBOUND_PORT, self.proc)

    def stats(self) -> Optional[dict]:
        """fastproxy's admin /stats (None for other proxies or when unreachable)."""
        if self.case.kind != "fastproxy":
            return None
        r = self.lab.run_app(["curl", "-sS", "--max-time", "3",
                              f"http://127.0.0.1:{L.ADMIN_PORT}/stats"], check=False, timeout=10)
        try:
            return json.loads(r.stdout) if r.returncode == 0 else None
        except ValueError:
            return None

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def stop(self) -> None:
        stop_proc(self.proc)
        self.proc = None


def stop_proc(proc: Optional[subprocess.Popen], grace: float = 5.0) -> None:
    """SIGTERM the process (and, for forking forwarders, its group), SIGKILL after `grace`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(timeout=5)


@dataclass
class Case:
    name: str
    kind: str                      # direct, fastproxy, haproxy, bare, socat, pyrelay
    group: str                     # MAIN or POLICY
    description: str
    workers: int = 1               # fastproxy worker threads, HAProxy nbthread
    splice: bool = True
    policy: str = ""               # POLICY group: "", "https" or "http"
    rules: int = 1                 # host names in the policy (bench.test + generated ones)
    access_log: str = ""           # "", or the access log under test: off, denials, all
    conncost: bool = False         # also measure syscalls and CPU per new connection
    skip: str = ""                 # reason, once known
    notes: List[str] = field(default_factory=list)

    # -- prerequisites -------------------------------------------------------------------
    def prerequisite(self, ctx: "Context") -> str:
        """'' when the case can run here, else why not (one line)."""
        if self.kind == "fastproxy":
            return ctx.fastproxy_problem
        if self.kind == "bare":
            return ctx.barerelay_problem
        if self.kind in ("haproxy", "socat") and not L.which(self.kind):
            return f"{self.kind} is not installed"
        return ""

    # -- starting ------------------------------------------------------------------------
    def start(self, lab: "L.Lab", ctx: "Context") -> Running:
        lab.set_rules("direct" if self.kind == "direct" else "intercept")
        if self.kind == "direct":
            return Running(None, self, lab)
        log = lab.log_dir / f"{self.name}.log"
        logf = open(log, "ab")
        kw = dict(stdout=logf, stderr=logf, start_new_session=True)
        if self.kind == "fastproxy":
            proc = lab.popen_app(ctx.fastproxy_argv(self), env=ctx.fastproxy_env(self), **kw)
            running = Running(proc, self, lab, log)
        elif self.kind == "haproxy":
            cfg = lab.tmp / f"{self.name}.cfg"
            cfg.write_text(haproxy_config(self.splice, self.workers))
            proc = lab.popen_app([L.which("haproxy"), "-db", "-f", str(cfg)], **kw)
            running = Running(proc, self, lab, log)
        elif self.kind == "bare":
            proc = lab.popen_app([ctx.barerelay, "-p", str(L.OUTBOUND_PORT), "-t",
                                  str(self.workers)], user=L.PROXY_UID, **kw)
            running = Running(proc, self, lab, log)
        elif self.kind == "socat":
            def restart(port: int) -> subprocess.Popen:
                return lab.popen_app(socat_argv(port), user=L.PROXY_UID, **kw)
            running = Running(restart(L.IPERF_PORT), self, lab, log, L.IPERF_PORT, restart)
        elif self.kind == "pyrelay":
            proc = lab.popen_app(["/usr/bin/python3", str(L.BENCH / "pyrelay.py"), "--port",
                                  str(L.OUTBOUND_PORT)], user=L.PROXY_UID, **kw)
            running = Running(proc, self, lab, log)
        else:
            raise ValueError(self.kind)
        try:
            lab.wait_listen(L.OUTBOUND_PORT, running.proc)
        except RuntimeError as e:
            running.stop()
            raise RuntimeError(f"{self.name}: {e}; log: {tail(log)}") from None
        return running


def tail(path: Path, n: int = 6) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def haproxy_maxconn() -> int:
    """Connections HAProxy may hold within the hard RLIMIT_NOFILE (2 fds each, pipes aside)."""
    return max(1000, min(30000, (L.nofile_hard() - 2 * HAPROXY_MAXPIPES - 500) // 2))


HAPROXY_MAXPIPES = 256


def haproxy_config(splice: bool, threads: int) -> str:
    """HAProxy as a transparent TCP relay to the original destination (`server 0.0.0.0:0`),
    as UID 1500, `nbthread threads`, 1 MiB pipes (its best splice setting here)."""
    splice_opts = ("  option splice-request\n  option splice-response\n" if splice else
                   "  no option splice-request\n  no option splice-response\n"
                   "  no option splice-auto\n")
    return (
        "global\n"
        f"  maxconn {haproxy_maxconn()}\n"
        f"  maxpipes {HAPROXY_MAXPIPES}\n"
        f"  nbthread {threads}\n"
        "  tune.pipesize 1048576\n"
        f"  uid {L.PROXY_UID}\n  gid {L.PROXY_UID}\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n"
        "  timeout server 60s\n"
        f"frontend outbound\n  bind 0.0.0.0:{L.OUTBOUND_PORT}\n{splice_opts}"
        "  default_backend original_dst\n"
        "backend original_dst\n  server orig 0.0.0.0:0\n")


def socat_argv(port: int) -> List[str]:
    """socat cannot read SO_ORIGINAL_DST: it forwards to a fixed server port, retargeted by the
    runner before each figure (one fork per connection, as socat always does)."""
    return [L.which("socat") or "socat",
            f"TCP-LISTEN:{L.OUTBOUND_PORT},fork,reuseaddr,backlog=4096",
            f"TCP:{L.SERVER_IP}:{port},nodelay"]


@dataclass
class Context:
    """What the cases need from the environment: how to run fastproxy, and the policy configs."""
    fastproxy: List[str]           # argv prefix of the `fastproxy` command
    fastproxy_problem: str         # '' or why fastproxy cannot run
    run_help: str                  # `fastproxy run --help` text (which options it has)
    barerelay: str = ""            # the compiled bench/tools/barerelay.c
    barerelay_problem: str = ""    # '' or why it cannot run
    config_dir: Path = L.BENCH / "configs"
    work_dir: Path = Path("/tmp")  # where generated configs go (the lab's folder)
    service_account: str = "bench-app"
    namespace: str = "bench"

    def fastproxy_argv(self, case: Case) -> List[str]:
        argv = self.fastproxy + ["run", "--workers", str(case.workers), "--outbound-port",
                                 str(L.OUTBOUND_PORT), "--admin-port", str(L.ADMIN_PORT),
                                 "--user", str(L.PROXY_UID)]
        if "--log-level" in self.run_help:
            argv += ["--log-level", "error"]
        if "--drain-seconds" in self.run_help:  # nothing is open when a case ends
            argv += ["--drain-seconds", "1"]
        if not case.splice:
            argv.append("--copy")
        if case.access_log:
            argv += ["--config", str(self.access_log_config(case))]
        if case.policy:
            argv += ["--config", str(self.policy_config(case))]
            if "--service-account" in self.run_help:
                argv += ["--service-account", self.service_account]
            if "--namespace" in self.run_help:
                argv += ["--namespace", self.namespace]
        return argv

    def access_log_config(self, case: Case) -> Path:
        """A MeshConfig with passthrough on and the case's access log: off (no records),
        denials (passthrough lines off: the bench's traffic writes none, each connection pays
        for the check), all (every connection one JSON line on the proxy's stdout, its log)."""
        setting = {"off": "{enabled: false}", "denials": "{passthrough: none}",
                   "all": "{passthrough: all}"}[case.access_log]
        out = self.work_dir / f"meshconfig-accesslog-{case.access_log}.yaml"
        out.write_text("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata:\n"
                       "  name: fsm-mesh-config\n  namespace: fsm-system\nspec:\n"
                       "  traffic:\n    enableEgress: true\n  observability:\n"
                       f"    fastproxyAccessLog: {setting}\n")
        os.chmod(out, 0o644)
        return out

    def policy_config(self, case: Case) -> Path:
        """configs/policy-<proto>.yaml; with `rules` > 1 a copy whose Egress lists that many
        host names (bench.test last, so a linear scan would pay for all of them)."""
        base = self.config_dir / f"policy-{case.policy}.yaml"
        if case.rules <= 1:
            return base
        out = self.work_dir / f"policy-{case.policy}-{case.rules}.yaml"
        if not out.exists():
            text = base.read_text()
            one = "  hosts:\n    - bench.test\n"
            if one not in text:
                raise ValueError(f"{base}: no `hosts: [bench.test]` list to grow")
            names = [f"    - h{i}.rules.{case.policy}.test\n" for i in range(case.rules - 1)]
            out.write_text(text.replace(one, "  hosts:\n" + "".join(names)
                                        + "    - bench.test\n"))
            os.chmod(out, 0o644)
        return out

    def fastproxy_env(self, case: Case) -> Dict[str, str]:
        # FSM's own variables, honoured whether or not the CLI has the options
        return {"SERVICE_ACCOUNT": self.service_account, "POD_NAMESPACE": self.namespace}


def all_cases(cores: int) -> List[Case]:
    n = max(1, cores)
    cases = [
        Case("direct", "direct", MAIN, "no proxy: the server range is excluded from interception"),
        Case(BARE, "bare", MAIN, "bench/tools/barerelay.c: the floor of a splice relay (one "
             "thread, epoll, SO_ORIGINAL_DST, splice through 1 MiB pipes, nothing else)",
             conncost=True),
        Case("fastproxy-splice-1w", "fastproxy", MAIN, "fastproxy, splice, 1 worker",
             conncost=True),
        Case(f"fastproxy-splice-{n}w", "fastproxy", MAIN, f"fastproxy, splice, {n} workers",
             workers=n, conncost=True),
        Case("fastproxy-copy-1w", "fastproxy", MAIN, "fastproxy, copy, 1 worker", splice=False),
        Case(f"fastproxy-copy-{n}w", "fastproxy", MAIN, f"fastproxy, copy, {n} workers",
             workers=n, splice=False),
        Case(HAPROXY, "haproxy", MAIN, "HAProxy TCP mode, transparent (server 0.0.0.0:0), "
             "splice, 1 MiB pipes, nbthread 1", conncost=True),
    ]
    if n > 1:
        cases.append(Case(f"haproxy-splice-{n}t", "haproxy", MAIN,
                          f"the same with nbthread {n} (one thread per core)", workers=n,
                          conncost=True))
    cases += [
        Case("haproxy-copy", "haproxy", MAIN, "HAProxy TCP mode, transparent, no splice, "
             "nbthread 1", splice=False),
        Case("socat", "socat", MAIN, "socat fork-per-connection to a fixed destination "
             "(it cannot read SO_ORIGINAL_DST)"),
        Case("pyrelay", "pyrelay", MAIN, "pure-Python asyncio relay reading SO_ORIGINAL_DST"),
        Case("policy-passthrough", "fastproxy", POLICY, "fastproxy, egress passthrough (no peek)",
             workers=n),
        Case("policy-https-sni", "fastproxy", POLICY,
             "fastproxy, https Egress policy: every connection decided by its SNI", workers=n,
             policy="https"),
        Case("policy-http-host", "fastproxy", POLICY,
             "fastproxy, http Egress policy: every request decided by its Host", workers=n,
             policy="http"),
        Case("policy-https-sni-10k", "fastproxy", POLICY,
             "the https policy with 10,000 host names", workers=n, policy="https",
             rules=10000),
        Case("policy-http-host-10k", "fastproxy", POLICY,
             "the http policy with 10,000 host names", workers=n, policy="http", rules=10000),
        Case("accesslog-off", "fastproxy", MAIN, "fastproxy, splice, one worker per core, "
             "access log off", workers=n, access_log="off"),
        Case("accesslog-denials", "fastproxy", MAIN, "the same, access log of denials only "
             "(passthrough lines off)", workers=n, access_log="denials"),
        Case("accesslog-all", "fastproxy", MAIN, "the same, every connection logged",
             workers=n, access_log="all"),
    ]
    return cases


#: The reference cases ratios are taken against.
DIRECT = "direct"
HAPROXY = "haproxy-splice-1t"     # fastproxy's one worker is compared with HAProxy's one thread
BARE = "bare-relay"
PYRELAY = "pyrelay"
POLICY_BASE = "policy-passthrough"
ACCESS_LOG_BASE = "accesslog-off"
