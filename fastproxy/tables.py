"""Compiles a loaded configuration into the decision table the C core looks up."""
from __future__ import annotations

from fastproxy import _core
from fastproxy.config import Config


def build_table(cfg: Config) -> "_core.Table":
    """The C table for `cfg`: passthrough when `traffic.enableEgress`, else deny; connect and
    idle timeouts from `sidecar.sidecarTimeout` (0 disables them)."""
    mesh = cfg.mesh
    timeout_ms = int(mesh.sidecar_timeout) * 1000
    return _core.Table("passthrough" if mesh.enable_egress else "deny",
                       connect_timeout_ms=timeout_ms, idle_timeout_ms=timeout_ms)
