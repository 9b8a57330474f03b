"""`fastproxy run`: the sidecar process.

Order of a start: load and validate the configuration (or the embedded default); compile the
decision table; bind the outbound listeners and the admin listener; drop to the proxy UID; start
the C workers; report ready. Then the main thread only waits for signals and configuration
changes:
- SIGTERM / SIGINT / POST /quitquitquit: stop accepting, let open connections finish up to the
  drain deadline, reset what is left, exit 0;
- SIGHUP or a change of the configuration files (including Kubernetes' `..data` symlink swap):
  load, validate and swap the table in for new connections; a bad change is logged and counted
  and the last good configuration stays.
The sidecar is PID 1 in its container: it never daemonizes.
"""
from __future__ import annotations

import argparse
import os
import pwd
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fastproxy import _core, logs, process
from fastproxy.admin import AdminServer, AdminState, Guard, read_token_file
from fastproxy.config import Config, default_config, load
from fastproxy.config.files import ConfigChanging, read_snapshot, signature
from fastproxy.config.watch import ConfigWatcher, check_successor
from fastproxy.policy import compile_policy
from fastproxy.errors import ConfigError, FastproxyError
from fastproxy.logs import log
from fastproxy.metrics import DEFAULT_CLUSTER_CAP, DEFAULT_PORT as METRICS_PORT, Observer
from fastproxy.portwatch import AddrNotAvailWatch
from fastproxy.tables import CompiledTable, compile_table, resolution_changed, resolve

#: How often the configuration files are looked at (a change is in force within this plus a load).
CONFIG_POLL_SECONDS = 0.2
RESOLVE_SECONDS = 30.0


@dataclass
class RunOptions:
    """Everything `fastproxy run` takes from its command line."""

    config_paths: List[str] = field(default_factory=list)
    workers: int = 0  # 0: one per available core
    outbound_port: int = 15001
    admin_address: str = "127.0.0.1"
    admin_port: int = 15000
    user: Optional[str] = None
    splice: bool = True
    drain_seconds: float = 25.0
    log_level: Optional[str] = None  # overrides spec.sidecar.logLevel
    service_account: Optional[str] = None  # this sidecar's identity (Egress sources)
    namespace: Optional[str] = None
    connect_to_host: bool = False  # http/https allows dial the policy host, not the original IP
    fsm_port_narrowing: bool = False
    peek_timeout: float = 5.0  # seconds a peek (ClientHello, request head) may wait
    metrics_address: str = "0.0.0.0"
    metrics_port: int = METRICS_PORT  # 0: no metrics listener
    metrics_clusters: int = DEFAULT_CLUSTER_CAP  # clusters tracked before "other"
    access_log_ring: int = 4096  # access-log records buffered per worker
    admin_token_file: Optional[str] = None  # bearer token also accepted by mutating admin routes
    admin_socket: Optional[str] = None  # Unix socket (0600, proxy UID) for the admin routes
    admin_allow_uids: List[int] = field(default_factory=list)  # beyond the proxy's own UID


def resolve_user(user: str) -> Tuple[int, int]:
    """UID and GID for `--user` (a number or a name); an unknown number gets GID = UID."""
    try:
        pw = pwd.getpwnam(user)
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        pass
    if not user.isdigit():
        raise FastproxyError(f"no such user: {user!r}", field="--user")
    uid = int(user)
    try:
        return uid, pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid, uid


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups (every thread, as glibc's setxid does)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def config_signature(paths: List[str]) -> Tuple[Any, ...]:
    """What identifies the current content of the configuration paths: (name, inode, size, mtime)
    of every file, following symlinks, so a ConfigMap's atomic symlink swap changes it."""
    return signature(paths)


class Sidecar:
    """One running sidecar: the engine, its configuration generations and the admin view."""

    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self._resolved: Dict[Tuple[str, int], List[str]] = {}
        self.limits = _core.Limits()  # connection-limit counters, kept across reloads
        self.compiled: Optional[CompiledTable] = None  # the last compile: rule id -> object
        self.watcher = ConfigWatcher(opts.config_paths)
        for attempt in range(5):  # files being written while read: read them again, shortly
            try:
                self.cfg: Config = self._load()
                break
            except ConfigChanging:
                if attempt == 4:
                    raise
                time.sleep(0.2)
        self.generation = 1
        self.reloads = 0
        self.reload_failures = 0
        self.last_reload_error: Optional[str] = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._hup = False
        self.engine: Optional["_core.Engine"] = None
        self.admin: Optional[AdminServer] = None
        self.observer = Observer()

    def _load(self, settled: bool = False) -> Config:
        """The configuration the files hold now, read as one snapshot (the embedded default only
        when no --config path is given). The snapshot's signature is marked as read even when
        it does not validate, so a bad file is looked at again only when it changes; a read
        that overlapped a write, or (`settled`) of files modified within the last second
        (ConfigChanging), is not marked, and is retried at the next poll."""
        o = self.opts
        if not o.config_paths:
            return default_config()
        snap = read_snapshot(o.config_paths)
        if settled and self.watcher.unsettled(snap.signature):
            raise ConfigChanging("modified less than half a second ago; read again once quiet")
        self.watcher.mark(snap.signature)
        return load(o.config_paths, service_account=o.service_account, namespace=o.namespace,
                    snapshot=snap)

    def _table(self, cfg: Config) -> "_core.Table":
        """Compile `cfg` for this sidecar's identity into a C table, remembering which names
        were resolved to what (a change of those is a reason to rebuild)."""
        o = self.opts
        policy = compile_policy(cfg, o.service_account, o.namespace,
                                connect_to_host=o.connect_to_host,
                                fsm_port_narrowing=o.fsm_port_narrowing)
        ct = compile_table(policy, peek_timeout_ms=max(1, int(o.peek_timeout * 1000)),
                           resolver=resolve, limits=self.limits)
        self.compiled = ct
        self._resolved = ct.resolved
        self.observer.tag(ct.table, ct.sources, cfg.mesh)
        return ct.table

    def _resolution_changed(self) -> bool:
        return resolution_changed(self._resolved)

    def _log_level(self) -> str:
        return self.opts.log_level or self.cfg.mesh.log_level

    # -- admin views ----------------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        s: Dict[str, Any] = dict(self.engine.stats()) if self.engine else {}
        s.update(debug=_core.DEBUG, config_generation=self.generation, reloads=self.reloads,
                 reload_failures=self.reload_failures, last_reload_error=self.last_reload_error,
                 workers=self.engine.workers if self.engine else 0,
                 splice=self.opts.splice)
        return s

    def config_dump(self) -> Dict[str, Any]:
        return {"generation": self.generation, "files": list(self.cfg.files),
                "config": self.cfg.to_dict()}

    # -- lifecycle ------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        self._hup = True
        self._wake.set()

    def reload(self) -> bool:
        """Load, validate and install a new configuration; keep the old one on any error."""
        try:
            cfg = self._load(settled=True)
            check_successor(self.cfg, cfg)
            table = self._table(cfg)
        except ConfigChanging as e:
            log.warning("configuration not reloaded yet: %s", e)
            return False
        except (FastproxyError, OSError) as e:
            self.reload_failures += 1
            self.last_reload_error = str(e)
            log.error("reload rejected, keeping configuration generation %d:\n%s", self.generation, e)
            return False
        except Exception as e:  # a bug in loading or compiling: traffic must not pay for it
            self.reload_failures += 1
            self.last_reload_error = f"internal error: {type(e).__name__}: {e}"
            log.exception("reload failed (internal error), keeping configuration generation %d",
                          self.generation)
            return False
        assert self.engine is not None
        self.engine.set_table(table)
        self.cfg = cfg
        self.generation += 1
        self.reloads += 1
        self.last_reload_error = None
        logs.set_level(self._log_level())
        log.info("configuration generation %d installed (enableEgress=%s)", self.generation,
                 cfg.mesh.enable_egress)
        return True

    def _admin_server(self, state: AdminState, owner: Optional[Tuple[int, int]]) -> AdminServer:
        """The admin listener; mutating routes: the proxy's own UID (after the drop), the UIDs
        of --admin-allow-uid, the token of --admin-token-file, or the --admin-socket."""
        o = self.opts
        token = read_token_file(o.admin_token_file) if o.admin_token_file else None
        allow = None
        if o.admin_allow_uids:
            allow = sorted({owner[0] if owner else os.geteuid(), *o.admin_allow_uids})
        guard = Guard(allow_uids=allow, token=token)
        if not process.is_loopback(o.admin_address):
            log.warning("admin listener on %s, not a loopback address: its read routes are open "
                        "to the network (mutating ones still need the proxy UID or the token)",
                        o.admin_address)
        return AdminServer((o.admin_address, o.admin_port), state, guard=guard,
                           unix_socket=o.admin_socket, unix_owner=owner)

    def run(self) -> int:
        opts = self.opts
        logs.setup(self._log_level())
        self._started = time.monotonic()
        nofile = process.raise_nofile()
        workers = opts.workers or process.default_workers()
        self.engine = _core.Engine(self._table(self.cfg), workers=workers,
                                   port=opts.outbound_port, splice=opts.splice)
        state = AdminState(self.stats, self.config_dump, self.request_stop)
        owner = resolve_user(opts.user) if opts.user is not None else None
        self.admin = self._admin_server(state, owner)
        self.observer.bind(self.engine, (opts.metrics_address, opts.metrics_port),
                           ring=opts.access_log_ring, clusters=opts.metrics_clusters,
                           extra=lambda: {"reloads": self.reloads,
                                          "reload_failures": self.reload_failures})
        if owner is not None:
            drop_privileges(*owner)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.request_stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        self.engine.start()
        self.admin.start()
        self.observer.start()
        state.ready = True
        # the metrics listener, wherever the observability code keeps it (an HttpServer)
        metrics = getattr(getattr(self, "observer", None), "server", None) \
            or getattr(self, "metrics", None)
        logs.notice("%s", process.start_line(
            cfg=self.cfg, outbound_port=opts.outbound_port, workers=workers, splice=opts.splice,
            admin=[li.label for li in self.admin.listeners],
            metrics=[li.label for li in getattr(metrics, "listeners", [])],
            service_account=opts.service_account, namespace=opts.namespace, nofile=nofile,
            generation=self.generation, user=opts.user))
        next_resolve = time.monotonic() + RESOLVE_SECONDS
        ports = AddrNotAvailWatch()
        while not self._stop.is_set():
            self._wake.wait(self.watcher.next_wait(CONFIG_POLL_SECONDS))
            self._wake.clear()
            if self._stop.is_set():
                break
            ports.check(self.engine.stats())
            due = self._resolved and time.monotonic() >= next_resolve
            if due:
                next_resolve = time.monotonic() + RESOLVE_SECONDS
            changed = self.watcher.changed()
            if self._hup or changed or (due and self._resolution_changed()):
                reason = "SIGHUP" if self._hup else "files changed" if changed else "DNS changed"
                self._hup = False
                failures = self.reload_failures
                applied = self.reload()
                if applied or self.reload_failures != failures:  # else: deferred, not refused
                    logs.notice("%s", process.reload_line(
                        applied=applied, cfg=self.cfg, generation=self.generation,
                        error=self.last_reload_error, reason=reason))
        state.ready = False
        self.drain()
        return 0

    def drain(self) -> None:
        """Stop accepting, wait for open connections up to the deadline, then reset the rest."""
        assert self.engine is not None and self.admin is not None
        self.engine.stop_accepting()
        t0 = time.monotonic()
        open_at_stop = self.engine.stats()["cx_active"]
        deadline = t0 + self.opts.drain_seconds
        while self.engine.stats()["cx_active"] and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.engine.stats()["cx_active"]
        if left:
            log.warning("drain deadline reached: resetting %d open connections", left)
        drain_seconds = time.monotonic() - t0
        self.engine.shutdown()
        final = dict(self.engine.stats())
        self.observer.close()
        self.admin.close()
        self.engine.close()
        logs.notice("%s", process.exit_line(
            stats=final, drained=max(0, open_at_stop - left), reset=left, seconds=drain_seconds,
            uptime=time.monotonic() - getattr(self, "_started", t0), reloads=self.reloads,
            reload_failures=self.reload_failures))


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("run", help="run the sidecar (foreground)",
                       description="Run the egress sidecar in the foreground. Without --config it "
                                   "runs on the embedded default MeshConfig (FSM's defaults: "
                                   "egress passthrough on).")
    p.add_argument("--config", action="append", default=[], metavar="PATH",
                   help="YAML/JSON file or folder of manifests (MeshConfig, ...); repeatable. "
                        "Paths holding no document, or an empty file, are an error: only "
                        "without --config does the embedded default apply")
    p.add_argument("--workers", type=int, default=0,
                   help="worker threads (default: one per CPU the process may use: its "
                        "cores, capped by the cgroup's CPU quota, i.e. the pod's CPU limit, "
                        "rounded up)")
    p.add_argument("--outbound-port", type=int, default=15001, help="outbound listener port (15001)")
    p.add_argument("--admin-address", default="127.0.0.1", help="admin listener address (127.0.0.1)")
    p.add_argument("--admin-port", type=int, default=15000, help="admin listener port (15000)")
    p.add_argument("--user", default=None, metavar="UID",
                   help="drop to this user (number or name) after binding; FSM uses 1500")
    p.add_argument("--copy", action="store_true",
                   help="relay by copying through a buffer instead of splice() (for tests)")
    p.add_argument("--drain-seconds", type=float, default=25.0,
                   help="on SIGTERM, how long open connections may finish (25)")
    p.add_argument("--log-level", default=None, choices=sorted(logs.LEVELS),
                   help="override spec.sidecar.logLevel")
    p.add_argument("--service-account", default=os.environ.get("SERVICE_ACCOUNT"),
                   help="this sidecar's service account, for Egress sources "
                        "(default: $SERVICE_ACCOUNT)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"),
                   help="this sidecar's namespace (default: $POD_NAMESPACE)")
    p.add_argument("--connect-to-host", action="store_true",
                   help="connections allowed by any http/https policy dial the policy's host "
                        "name (resolved by the sidecar) instead of the original destination, so a "
                        "forged Host or SNI reaches nothing new (for one policy: annotate the "
                        "Egress fastproxy.flomesh.io/upstream: host)")
    p.add_argument("--fsm-port-narrowing", action="store_true",
                   help="FSM's behaviour: a port carrying an egress policy denies what the policy "
                        "does not allow, even with passthrough on")
    p.add_argument("--peek-timeout", type=float, default=5.0,
                   help="seconds a connection may take to send the ClientHello or request head "
                        "a policy needs (5)")
    p.add_argument("--metrics-port", type=int, default=METRICS_PORT,
                   help=f"Prometheus metrics listener port, path /stats/prometheus "
                        f"({METRICS_PORT}; 0: none)")
    p.add_argument("--metrics-address", default="0.0.0.0",
                   help="metrics listener address (0.0.0.0)")
    p.add_argument("--metrics-clusters", type=int, default=DEFAULT_CLUSTER_CAP,
                   help="upstream clusters given their own sidecar_cluster_name series; traffic "
                        f"to clusters seen after that counts under \"other\" ({DEFAULT_CLUSTER_CAP})")
    p.add_argument("--access-log-ring", type=int, default=4096,
                   help="access-log records buffered per worker between writes (4096); when "
                        "full, records are dropped and counted, traffic never waits")
    p.add_argument("--admin-token-file", default=None, metavar="PATH",
                   help="mutating admin routes (POST /quitquitquit) also accept "
                        "'Authorization: Bearer TOKEN' with the token in this file (mode 0600)")
    p.add_argument("--admin-socket", default=None, metavar="PATH",
                   help="also serve the admin routes on this Unix socket (mode 0600, owned by "
                        "--user); its callers may use mutating routes")
    p.add_argument("--admin-allow-uid", type=int, action="append", default=[], metavar="UID",
                   help="another UID allowed to call mutating admin routes over loopback TCP "
                        "(default: only the proxy's own UID); repeatable")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    opts = RunOptions(config_paths=args.config, workers=args.workers,
                      outbound_port=args.outbound_port, admin_address=args.admin_address,
                      admin_port=args.admin_port, user=args.user, splice=not args.copy,
                      drain_seconds=args.drain_seconds, log_level=args.log_level,
                      service_account=args.service_account, namespace=args.namespace,
                      connect_to_host=args.connect_to_host,
                      fsm_port_narrowing=args.fsm_port_narrowing, peek_timeout=args.peek_timeout,
                      metrics_address=args.metrics_address, metrics_port=args.metrics_port,
                      metrics_clusters=args.metrics_clusters, access_log_ring=args.access_log_ring,
                      admin_token_file=args.admin_token_file, admin_socket=args.admin_socket,
                      admin_allow_uids=args.admin_allow_uid)
    try:
        sidecar = Sidecar(opts)
    except ConfigError as e:
        return _refuse_start(e)
    try:
        return sidecar.run()
    except ConfigError as e:  # the first compile of a configuration that loaded
        return _refuse_start(e)
    except FastproxyError as e:  # e.g. the admin token file or socket
        logs.setup("error")
        log.error("cannot start: %s", e)
        return 1


def _refuse_start(e: ConfigError) -> int:
    """One line on stderr for a configuration that cannot start the sidecar; exit status 1."""
    errors = getattr(e, "errors", None) or [e]
    more = f" (and {len(errors) - 1} more: see fastproxy validate)" if len(errors) > 1 else ""
    logs.setup("error")
    log.error("configuration rejected: %s%s", str(errors[0]).replace("\n", " "), more)
    return 1
