"""Process-level chores of `fastproxy run`: the file-descriptor limit, the CPUs the pod may use
(how many workers by default), and the start, reload and exit lines an operator reads in the container log (printed at NOTICE, which shows at every log
level but `off`)."""
from __future__ import annotations

import ipaddress
import math
import os
import resource
from typing import Any, Dict, Optional, Sequence, Tuple

from fastproxy import __version__
from fastproxy.logs import log


def raise_nofile() -> Tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit. Returns (soft before, soft after, hard);
    a refusal leaves the limit as it was (logged)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard
        if hard == resource.RLIM_INFINITY:
            try:
                with open("/proc/sys/fs/nr_open") as f:
                    target = int(f.read())
            except (OSError, ValueError):
                target = 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            new = target
        except (OSError, ValueError) as e:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, e)
    log.info("open-file limit: soft %d -> %d (hard %s)", soft, new,
             "unlimited" if hard == resource.RLIM_INFINITY else hard)
    return soft, new, hard


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup"
                     ) -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (a pod's `resources.limits.cpu`), the
    smallest along its path up to the root; None without one. cgroup v2 (`cpu.max`) and v1
    (`cpu.cfs_quota_us` / `cpu.cfs_period_us`)."""
    try:
        with open(self_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: Optional[float] = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        v2 = parts[0] == "0" and parts[1] == ""
        if not v2 and "cpu" not in parts[1].split(","):
            continue
        base = root if v2 else os.path.join(root, parts[1])
        if not v2 and not os.path.isdir(base):
            base = os.path.join(root, "cpu")
        rel = parts[2].strip("/")
        while True:
            d = os.path.join(base, rel) if rel else base
            quota = _read_quota(d, v2)
            if quota is not None and (best is None or quota < best):
                best = quota
            if not rel:
                break
            rel = os.path.dirname(rel)
    return best


def _read_quota(folder: str, v2: bool) -> Optional[float]:
    try:
        if v2:
            with open(os.path.join(folder, "cpu.max")) as f:
                quota, period = (f.read().split() + ["100000"])[:2]
        else:
            with open(os.path.join(folder, "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(folder, "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        if quota in ("max", "-1") or int(period) <= 0 or int(quota) <= 0:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        return None


def default_workers(root: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int:
    """Workers when `--workers` is not given: one per CPU the process may use, the cores of its
    affinity mask capped by its cgroup's CPU quota rounded up (a pod limited to 1.5 CPUs on a
    64-core node gets 2, not 64); at least 1."""
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root, self_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)


def is_loopback(host: str) -> bool:
    """True for a loopback address (or `localhost`)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _identity(service_account: Optional[str], namespace: Optional[str]) -> str:
    if service_account and namespace:
        return f"{namespace}/{service_account}"
    return "none (no Egress applies)"


def _egress_mode(cfg: Any) -> str:
    m = cfg.mesh
    passthrough = "passthrough" if m.enable_egress else "deny-by-default"
    policy = "policies on" if m.enable_egress_policy else "policies off"
    return f"{passthrough}, {policy}"


def start_line(*, cfg: Any, outbound_port: int, workers: int, splice: bool,
               admin: Sequence[str], metrics: Sequence[str], service_account: Optional[str],
               namespace: Optional[str], nofile: Tuple[int, int, int], generation: int,
               user: Optional[str]) -> str:
    """The one line `fastproxy run` prints once it serves."""
    hard = nofile[2]
    return (f"fastproxy {__version__} serving: outbound :{outbound_port} ({workers} workers, "
            f"{'splice' if splice else 'copy'}), admin {', '.join(admin) or 'off'}, "
            f"metrics {', '.join(metrics) or 'off'}, identity {_identity(service_account, namespace)}"
            f", uid {user if user is not None else 'unchanged'}, egress {_egress_mode(cfg)}, "
            f"{len(cfg.applicable_egresses())} of {len(cfg.egresses)} Egress policies apply, "
            f"config {', '.join(cfg.files) or 'embedded default'} (generation {generation}), "
            f"open-file limit {nofile[1]} (was {nofile[0]}, hard "
            f"{'unlimited' if hard == resource.RLIM_INFINITY else hard})")


def reload_line(*, applied: bool, cfg: Any, generation: int, error: Optional[str],
                reason: str) -> str:
    """One line per reload attempt: applied (with the new state) or refused (with why)."""
    if applied:
        return (f"reload ({reason}): applied generation {generation}: egress {_egress_mode(cfg)}, "
                f"{len(cfg.applicable_egresses())} of {len(cfg.egresses)} Egress policies apply")
    lines = (error or "unknown error").strip().splitlines() or ["unknown error"]
    more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
    return (f"reload ({reason}): refused, keeping generation {generation}: {lines[0]}{more}")


def exit_line(*, stats: Dict[str, Any], drained: int, reset: int, seconds: float,
              uptime: float, reloads: int, reload_failures: int) -> str:
    """The last line: how the drain went and what the process did."""
    return (f"fastproxy stopped after {uptime:.1f}s: drain {seconds:.2f}s, {drained} connections "
            f"finished, {reset} reset at the deadline; {stats.get('cx_accepted', 0)} accepted, "
            f"{stats.get('cx_denied', 0)} denied, {reloads} reloads ({reload_failures} refused)")
