"""fastproxy's configuration layer: FSM objects (MeshConfig, Egress, HTTPRouteGroup,
UpstreamTrafficSetting, Service, Pipy sidecar JSON) read from manifests and validated.

    from fastproxy.config import load, default_config
    cfg = load(["config/"])          # raises fastproxy.errors.ConfigErrors
    cfg.mesh.enable_egress
"""
from fastproxy.config.loader import Config, default_config, default_meshconfig, load
from fastproxy.config.meshconfig import MeshConfig

__all__ = ["Config", "MeshConfig", "default_config", "default_meshconfig", "load"]
