"""FSM's `MeshConfig` (config.flomesh.io/v1alpha3; v1alpha1 and v1alpha2 accepted): the model and
its validation.

Which keys are known
--------------------
* Top level: `apiVersion`, `kind`, `metadata` (only `name` and `namespace` are read; the rest of
  Kubernetes' metadata is kept as is), `spec`, `status` (ignored).
* `spec`: the keys FSM's MeshConfigSpec has in any served version: `clusterSet`, `sidecar`,
  `repoServer`, `traffic`, `observability`, `certificate`, `featureFlags`, `pluginChains`, `ingress`,
  `gatewayAPI`, `serviceLB`, `flb`, `egressGateway`, `image`, `misc`, `connector`. Any other key is
  an error. Sections fastproxy does not use are kept opaque (they must be mappings).
* `spec.traffic`, `spec.sidecar`, `spec.featureFlags` are modelled: every key FSM defines there is
  known (others are errors), the ones fastproxy uses are validated fully, the others are
  type-checked (bools are bools, strings strings, enums within their values).

Missing fields take FSM's chart defaults (the CRD marks most of them required, but a hand-written
file usually says only what it changes). `log_level` is normalised: `warning` reads as `warn`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from fastproxy.config._check import (
    Doc, boolean, check_keys, cidr_item, dedupe, ifname_item, integer, join, list_of, mapping,
    port_item, string, type_name, MISSING,
)

GROUP = "config.flomesh.io"
API_VERSIONS = ("config.flomesh.io/v1alpha3", "config.flomesh.io/v1alpha2", "config.flomesh.io/v1alpha1")
KIND = "MeshConfig"

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical", "off")

SPEC_KEYS = ("clusterSet", "sidecar", "repoServer", "traffic", "observability", "certificate",
             "featureFlags", "pluginChains", "ingress", "gatewayAPI", "serviceLB", "flb",
             "egressGateway", "image", "misc", "connector")

# spec.traffic: key -> checker kind ("bool", "str", enum tuple, "map", or None = modelled below)
_TRAFFIC_OTHER: Dict[str, Any] = {
    "interceptionMode": "str",   # PodLevel/NodeLevel now; older charts wrote "iptables"
    "enablePermissiveTrafficPolicyMode": "bool",
    "inboundExternalAuthorization": "map",
    "http1PerRequestLoadBalancing": "bool",
    "http2PerRequestLoadBalancing": "bool",
    "serviceAccessMode": "str",
    "serviceAccessNames": "map",
}
_TRAFFIC_MODELLED = ("enableEgress", "outboundIPRangeExclusionList", "outboundIPRangeInclusionList",
                     "outboundPortExclusionList", "inboundPortExclusionList",
                     "networkInterfaceExclusionList", "fastproxyEgressAuditMode")

# fastproxy's own settings (not FSM's; README "Access log and audit mode"):
# spec.traffic.fastproxyEgressAuditMode: bool; spec.observability.fastproxyAccessLog: mapping
ACCESS_LOG_KEY = "fastproxyAccessLog"
ACCESS_LOG_KEYS = ("enabled", "passthrough", "sampleRate")
ACCESS_LOG_PASSTHROUGH = ("all", "none", "sample")
DEFAULT_SAMPLE_RATE = 0.01

_SIDECAR_OTHER: Dict[str, Any] = {
    "enablePrivilegedInitContainer": "bool",
    "compressConfig": "bool",
    "sidecarImage": "str",
    "sidecarClass": "str",
    "initContainerImage": "str",
    "sidecarDrivers": "list",
    "sidecarDisabledMTLS": "bool",
    "maxDataPlaneConnections": "int",
    "configResyncInterval": "str",
    "resources": "map",
    "initResources": "map",
    "healthcheckResources": "map",
    "tlsMinProtocolVersion": "str",
    "tlsMaxProtocolVersion": "str",
    "cipherSuites": "list",
    "ecdhCurves": "list",
    "localProxyMode": ("Localhost", "PodIP"),
    "localDNSProxy": "map",
}
_SIDECAR_MODELLED = ("logLevel", "sidecarTimeout")

FEATURE_FLAGS = ("enableEgressPolicy", "enableSnapshotCacheMode", "enableAsyncProxyServiceMapping",
                 "enableIngressBackendPolicy", "enableAccessControlPolicy", "enableAccessCertPolicy",
                 "enableSidecarPrettyConfig", "enableSidecarActiveHealthChecks", "enableRetryPolicy",
                 "enablePluginPolicy", "enableAutoDefaultRoute", "enableValidateGatewayListenerHostname",
                 "enableValidateHTTPRouteHostnames", "enableValidateGRPCRouteHostnames",
                 "enableValidateTLSRouteHostnames", "useEndpointSlicesForGateway",
                 "dropRouteRuleIfNoAvailableBackends",
                 # older FSM versions / chart values
                 "enableMeshRootCertificate", "enableMulticlusterMode", "enableWASMStats",
                 "enableEnvoyActiveHealthChecks", "enableIngressMultiplePaths")

# FSM's chart defaults for what fastproxy models (fastproxy/data/meshconfig-default.yaml agrees;
# a test checks it).
DEFAULT_NAME = "fsm-mesh-config"
DEFAULT_NAMESPACE = "fsm-system"
DEFAULT_ENABLE_EGRESS = True
DEFAULT_ENABLE_EGRESS_POLICY = True
DEFAULT_LOG_LEVEL = "error"
DEFAULT_SIDECAR_TIMEOUT = 60


@dataclass
class MeshConfig:
    """The mesh-wide settings fastproxy acts on. `spec` keeps the whole effective spec (FSM's
    defaults with the file's values on top) for dumps and round trips."""

    name: str = DEFAULT_NAME
    namespace: str = DEFAULT_NAMESPACE
    api_version: str = API_VERSIONS[0]
    enable_egress: bool = DEFAULT_ENABLE_EGRESS
    enable_egress_policy: bool = DEFAULT_ENABLE_EGRESS_POLICY
    outbound_ip_range_exclusion_list: List[str] = field(default_factory=list)
    outbound_ip_range_inclusion_list: List[str] = field(default_factory=list)
    outbound_port_exclusion_list: List[int] = field(default_factory=list)
    inbound_port_exclusion_list: List[int] = field(default_factory=list)
    network_interface_exclusion_list: List[str] = field(default_factory=list)
    log_level: str = DEFAULT_LOG_LEVEL
    sidecar_timeout: int = DEFAULT_SIDECAR_TIMEOUT
    #: fastproxy's own: audit mode (every deny relayed as a "would deny") and the access log
    egress_audit_mode: bool = False
    access_log_enabled: bool = True
    access_log_passthrough: str = "all"
    access_log_sample_rate: float = DEFAULT_SAMPLE_RATE
    spec: Dict[str, Any] = field(default_factory=dict, repr=False)
    #: fail-closed interception from the fastproxy.flomesh.io/fail-closed annotations (see
    #: fastproxy.iptables.fail_closed_from_annotations), None when not annotated
    fail_closed: Optional[Dict[str, Any]] = None
    #: the file it came from (None: the embedded default) and its document index there
    file: Optional[str] = None
    document: int = 0

    @property
    def ref(self) -> str:
        return f"{KIND} {self.namespace}/{self.name}"

    def to_dict(self) -> Dict[str, Any]:
        """The object as Kubernetes would show it (effective spec, modelled fields normalised)."""
        spec = copy.deepcopy(self.spec)
        traffic = spec.setdefault("traffic", {})
        traffic.update({
            "enableEgress": self.enable_egress,
            "outboundIPRangeExclusionList": list(self.outbound_ip_range_exclusion_list),
            "outboundIPRangeInclusionList": list(self.outbound_ip_range_inclusion_list),
            "outboundPortExclusionList": list(self.outbound_port_exclusion_list),
            "inboundPortExclusionList": list(self.inbound_port_exclusion_list),
            "networkInterfaceExclusionList": list(self.network_interface_exclusion_list),
            "fastproxyEgressAuditMode": self.egress_audit_mode,
        })
        spec.setdefault("observability", {})[ACCESS_LOG_KEY] = {
            "enabled": self.access_log_enabled, "passthrough": self.access_log_passthrough,
            "sampleRate": self.access_log_sample_rate}
        sidecar = spec.setdefault("sidecar", {})
        sidecar.update({"logLevel": self.log_level, "sidecarTimeout": self.sidecar_timeout})
        spec.setdefault("featureFlags", {})["enableEgressPolicy"] = self.enable_egress_policy
        return {
            "apiVersion": self.api_version,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }


def _check_other(doc: Doc, m: Dict[str, Any], path: str, table: Dict[str, Any]) -> None:
    """Type-check the keys fastproxy accepts but does not use."""
    for key, kind in table.items():
        v = m.get(key, MISSING)
        if v is MISSING or v is None:
            continue
        p = join(path, key)
        if kind == "bool":
            boolean(doc, m, key, path, False)
        elif kind == "str":
            string(doc, m, key, path, "")
        elif kind == "int":
            integer(doc, m, key, path, 0)
        elif kind == "map":
            mapping(doc, v, p)
        elif kind == "list":
            if not isinstance(v, list):
                doc.err(p, f"must be a list, not {type_name(v)}")
        elif isinstance(kind, tuple):
            string(doc, m, key, path, "", choices=kind)


def deep_merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """`over` on top of `base`: mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _access_log(doc: Doc, spec: Dict[str, Any]) -> "tuple[bool, str, float]":
    """spec.observability.fastproxyAccessLog: {enabled: bool, passthrough: all|none|sample,
    sampleRate: number in [0, 1]} (errors go to `doc`; defaults on any error)."""
    obs = spec.get("observability")
    if not isinstance(obs, dict) or obs.get(ACCESS_LOG_KEY) is None:
        return True, "all", DEFAULT_SAMPLE_RATE
    path = join("spec.observability", ACCESS_LOG_KEY)
    m = mapping(doc, obs.get(ACCESS_LOG_KEY), path)
    if m is None:
        return True, "all", DEFAULT_SAMPLE_RATE
    check_keys(doc, m, path, ACCESS_LOG_KEYS)
    enabled = boolean(doc, m, "enabled", path, True)
    mode = string(doc, m, "passthrough", path, "all", choices=ACCESS_LOG_PASSTHROUGH)
    rate = m.get("sampleRate", MISSING)
    if rate is MISSING or rate is None:
        rate = DEFAULT_SAMPLE_RATE
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
        doc.err(join(path, "sampleRate"), f"must be a number from 0 to 1, not {rate!r}")
        rate = DEFAULT_SAMPLE_RATE
    return bool(enabled if enabled is not None else True), mode or "all", float(rate)


def parse_meshconfig(doc: Doc, obj: Dict[str, Any], name: str, namespace: str,
                     default_spec: Dict[str, Any]) -> Optional[MeshConfig]:
    """Validate one decoded MeshConfig document (apiVersion/kind/metadata already checked by the
    loader). Returns None when `doc` gained errors."""
    n_err = len(doc.errors)
    spec = mapping(doc, obj.get("spec", MISSING), "spec")
    if spec is None:
        return None
    check_keys(doc, spec, "spec", SPEC_KEYS)
    for key in SPEC_KEYS:
        if key not in ("traffic", "sidecar", "featureFlags"):
            mapping(doc, spec.get(key, MISSING), join("spec", key))

    traffic = mapping(doc, spec.get("traffic", MISSING), "spec.traffic") or {}
    check_keys(doc, traffic, "spec.traffic", tuple(_TRAFFIC_OTHER) + _TRAFFIC_MODELLED)
    _check_other(doc, traffic, "spec.traffic", _TRAFFIC_OTHER)
    tp = "spec.traffic"
    enable_egress = boolean(doc, traffic, "enableEgress", tp, DEFAULT_ENABLE_EGRESS)
    excl = dedupe(list_of(doc, traffic, "outboundIPRangeExclusionList", tp, cidr_item))
    incl = dedupe(list_of(doc, traffic, "outboundIPRangeInclusionList", tp, cidr_item))
    oports = dedupe(list_of(doc, traffic, "outboundPortExclusionList", tp, port_item))
    iports = dedupe(list_of(doc, traffic, "inboundPortExclusionList", tp, port_item))
    ifaces = dedupe(list_of(doc, traffic, "networkInterfaceExclusionList", tp, ifname_item))

    sidecar = mapping(doc, spec.get("sidecar", MISSING), "spec.sidecar") or {}
    check_keys(doc, sidecar, "spec.sidecar", tuple(_SIDECAR_OTHER) + _SIDECAR_MODELLED)
    _check_other(doc, sidecar, "spec.sidecar", _SIDECAR_OTHER)
    log_level = string(doc, sidecar, "logLevel", "spec.sidecar", DEFAULT_LOG_LEVEL, choices=LOG_LEVELS)
    if log_level == "warning":
        log_level = "warn"
    timeout = integer(doc, sidecar, "sidecarTimeout", "spec.sidecar", DEFAULT_SIDECAR_TIMEOUT, lo=0)
    audit = boolean(doc, traffic, "fastproxyEgressAuditMode", tp, False)
    alog = _access_log(doc, spec)

    flags = mapping(doc, spec.get("featureFlags", MISSING), "spec.featureFlags") or {}
    check_keys(doc, flags, "spec.featureFlags", FEATURE_FLAGS)
    for flag in FEATURE_FLAGS:
        if flag != "enableEgressPolicy":
            boolean(doc, flags, flag, "spec.featureFlags", False)
    enable_policy = boolean(doc, flags, "enableEgressPolicy", "spec.featureFlags",
                            DEFAULT_ENABLE_EGRESS_POLICY)

    from fastproxy.iptables import fail_closed_from_annotations
    meta = obj.get("metadata")
    fail_closed, fc_errors = fail_closed_from_annotations(
        meta.get("annotations") if isinstance(meta, dict) else None)
    for fc_path, fc_msg in fc_errors:
        doc.err(fc_path, fc_msg)

    if len(doc.errors) > n_err:
        return None
    assert enable_egress is not None and enable_policy is not None
    assert log_level is not None and timeout is not None
    return MeshConfig(
        name=name, namespace=namespace, api_version=str(obj.get("apiVersion")),
        enable_egress=enable_egress, enable_egress_policy=enable_policy,
        outbound_ip_range_exclusion_list=excl, outbound_ip_range_inclusion_list=incl,
        outbound_port_exclusion_list=oports, inbound_port_exclusion_list=iports,
        network_interface_exclusion_list=ifaces, log_level=log_level, sidecar_timeout=timeout,
        egress_audit_mode=bool(audit), access_log_enabled=alog[0], access_log_passthrough=alog[1],
        access_log_sample_rate=alog[2],
        spec=deep_merge(default_spec, {k: v for k, v in spec.items() if v is not None}),
        fail_closed=fail_closed, file=doc.file, document=0,
    )
