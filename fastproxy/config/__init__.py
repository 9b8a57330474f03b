"""fastproxy's configuration layer: FSM objects (MeshConfig, Egress, HTTPRouteGroup,
UpstreamTrafficSetting, Service, Pipy sidecar JSON) read from manifests and validated.

    from fastproxy.config import load, default_config
    cfg = load(["config/"])          # raises fastproxy.errors.ConfigErrors
    cfg.mesh.enable_egress
"""
from fastproxy.config.loader import Config, default_config, default_meshconfig, load
from fastproxy.config.meshconfig import MeshConfig
from fastproxy.config.objects import (
    Egress, EgressPort, EgressSource, HTTPMatch, HTTPRouteGroup, Service, ServicePort,
    UpstreamTrafficSetting,
)
from fastproxy.config.pipyjson import PipyConfig

__all__ = ["Config", "Egress", "EgressPort", "EgressSource", "HTTPMatch", "HTTPRouteGroup",
           "MeshConfig", "PipyConfig", "Service", "ServicePort", "UpstreamTrafficSetting",
           "default_config", "default_meshconfig", "load"]
