"""MeshConfig loading and validation (fastproxy.config, phase 1)."""
from __future__ import annotations

import argparse
import io
import json
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from fastproxy.config import MeshConfig, default_config, load
from fastproxy.config.cli import register, validate_paths
from fastproxy.config.loader import DEFAULT_MESHCONFIG_PATH
from fastproxy.errors import ConfigError, ConfigErrors


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def meshconfig_yaml(spec: dict, name: str = "fsm-mesh-config", namespace: str = "fsm-system",
                    api: str = "config.flomesh.io/v1alpha3") -> str:
    return yaml.safe_dump({"apiVersion": api, "kind": "MeshConfig",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def load_errors(paths) -> list[ConfigError]:
    with pytest.raises(ConfigErrors) as ei:
        load(paths)
    assert ei.value.errors, "ConfigErrors without errors"
    return ei.value.errors


# --- defaults ------------------------------------------------------------------------------


def test_default_config_is_fsm_chart_defaults():
    cfg = default_config()
    m = cfg.mesh
    assert (m.name, m.namespace) == ("fsm-mesh-config", "fsm-system")
    assert m.enable_egress is True and m.enable_egress_policy is True
    assert m.log_level == "error" and m.sidecar_timeout == 60
    assert m.outbound_ip_range_exclusion_list == [] and m.outbound_ip_range_inclusion_list == []
    assert m.outbound_port_exclusion_list == [] and m.inbound_port_exclusion_list == []
    assert m.network_interface_exclusion_list == []
    assert cfg.files == []
    assert m.file is None


def test_default_file_agrees_with_model_defaults():
    # The dataclass defaults (used for missing fields) and the embedded file must say the same.
    d = default_config().mesh
    blank = MeshConfig()
    for f in ("enable_egress", "enable_egress_policy", "log_level", "sidecar_timeout", "name",
              "namespace", "outbound_port_exclusion_list"):
        assert getattr(d, f) == getattr(blank, f), f
    raw = yaml.safe_load(DEFAULT_MESHCONFIG_PATH.read_text())
    assert raw["spec"]["traffic"]["enableEgress"] is blank.enable_egress


def test_no_paths_gives_default():
    assert load([]).mesh.to_dict() == default_config().mesh.to_dict()


def test_empty_folder_is_an_error_not_the_default(tmp_path):
    # only a load with no paths at all stands on the embedded default (issue 8 item 2): a folder
    # caught empty (or holding only an empty file) must not turn a deny-all sidecar into FSM's
    # passthrough default
    with pytest.raises(ConfigErrors) as ei:
        load([tmp_path])
    assert "holds no configuration document" in str(ei.value)
    (tmp_path / "mesh.yaml").write_text("# being written\n")
    with pytest.raises(ConfigErrors) as ei:
        load([tmp_path])
    assert [e.file for e in ei.value.errors] == [str(tmp_path / "mesh.yaml")]


# --- good files ----------------------------------------------------------------------------


def test_partial_meshconfig_takes_defaults_for_the_rest(tmp_path):
    f = write(tmp_path / "mesh.yaml", meshconfig_yaml({"traffic": {"enableEgress": False}}))
    cfg = load([f])
    m = cfg.mesh
    assert m.enable_egress is False
    assert m.enable_egress_policy is True and m.sidecar_timeout == 60 and m.log_level == "error"
    assert cfg.files == [str(f)] and m.file == str(f)
    # the effective spec keeps FSM's defaults for the sections not given
    assert m.to_dict()["spec"]["traffic"]["http2PerRequestLoadBalancing"] is True


def test_all_modelled_fields(tmp_path):
    spec = {
        "traffic": {
            "enableEgress": False,
            "outboundIPRangeExclusionList": ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"],
            "outboundIPRangeInclusionList": ["198.51.100.0/24", "2001:db8:0:0::/64"],
            "outboundPortExclusionList": [25, 65535, 1],
            "inboundPortExclusionList": [9090],
            "networkInterfaceExclusionList": ["eth1", "veth+", "net1.100"],
        },
        "sidecar": {"logLevel": "debug", "sidecarTimeout": 0},
        "featureFlags": {"enableEgressPolicy": False},
    }
    m = load([write(tmp_path / "m.yaml", meshconfig_yaml(spec, "mc", "ns1"))]).mesh
    assert (m.name, m.namespace) == ("mc", "ns1")
    assert m.enable_egress is False and m.enable_egress_policy is False
    assert m.outbound_ip_range_exclusion_list == ["10.0.0.0/8", "fd00::/8", "192.0.2.7/32"]
    assert m.outbound_ip_range_inclusion_list == ["198.51.100.0/24", "2001:db8::/64"]  # canonical
    assert m.outbound_port_exclusion_list == [25, 65535, 1]
    assert m.inbound_port_exclusion_list == [9090]
    assert m.network_interface_exclusion_list == ["eth1", "veth+", "net1.100"]
    assert m.log_level == "debug" and m.sidecar_timeout == 0


def test_warning_reads_as_warn(tmp_path):
    m = load([write(tmp_path / "m.yaml", meshconfig_yaml({"sidecar": {"logLevel": "warning"}}))]).mesh
    assert m.log_level == "warn"


def test_duplicates_in_lists_are_merged(tmp_path):
    spec = {"traffic": {"outboundPortExclusionList": [80, 443, 80]}}
    m = load([write(tmp_path / "m.yaml", meshconfig_yaml(spec))]).mesh
    assert m.outbound_port_exclusion_list == [80, 443]


FSM_PRODUCED = """\
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata:
  creationTimestamp: "2024-05-01T10:00:00Z"
  generation: 3
  labels: {app.kubernetes.io/name: flomesh.io}
  name: fsm-mesh-config
  namespace: fsm-system
  resourceVersion: "12345"
  uid: 6f1c7c1e-8f57-4e0c-9f0e-1d2a3b4c5d6e
spec:
  certificate: {certKeyBitSize: 2048, serviceCertValidityDuration: 24h}
  clusterSet: {controlPlaneUID: "", group: default, isManaged: false, name: local, properties: [],
               region: default, uid: 0d4e6b52, zone: default}
  connector: {DO_NOT_EDIT_viaGateway: viaGateway Managed by fsm-connector-gateway., lb: {}, viaGateway: {}}
  egressGateway: {adminPort: 6060, enabled: false, logLevel: error, mode: http2tunnel, port: 1080, replicas: 1}
  featureFlags:
    enableAccessCertPolicy: false
    enableAccessControlPolicy: true
    enableAsyncProxyServiceMapping: false
    enableAutoDefaultRoute: false
    enableEgressPolicy: true
    enableIngressBackendPolicy: true
    enablePluginPolicy: false
    enableRetryPolicy: false
    enableSidecarActiveHealthChecks: false
    enableSidecarPrettyConfig: true
    enableSnapshotCacheMode: false
    enableValidateGRPCRouteHostnames: true
    enableValidateGatewayListenerHostname: true
    enableValidateHTTPRouteHostnames: true
    enableValidateTLSRouteHostnames: true
    useEndpointSlicesForGateway: true
    dropRouteRuleIfNoAvailableBackends: false
  flb: {enabled: false, secretName: fsm-flb-secret, strictMode: false, upstreamMode: Endpoint}
  gatewayAPI: {enabled: false, logLevel: info}
  image: {pullPolicy: IfNotPresent, registry: flomesh, tag: 1.3.0}
  ingress: {enabled: false, namespaced: false, type: LoadBalancer, logLevel: info,
            http: {bind: 80, enabled: true, listen: 8000, nodePort: 30508}}
  misc: {repoServerImage: flomesh/pipy-repo:1.5.3}
  observability:
    fsmLogLevel: info
    remoteLogging: {enable: false, secretName: fsm-remote-logging-secret}
    tracing: {enable: false}
  pluginChains:
    outbound-tcp:
    - {disable: false, plugin: modules/outbound-tcp-routing, priority: 120}
  repoServer: {codebase: "", ipaddr: 127.0.0.1, port: 6060}
  serviceLB: {enabled: false, image: flomesh/mirrored-klipper-lb:v0.4.7}
  sidecar:
    compressConfig: true
    configResyncInterval: 90s
    enablePrivilegedInitContainer: false
    localDNSProxy: {enable: false, searchesWithNamespace: true}
    localProxyMode: Localhost
    logLevel: error
    maxDataPlaneConnections: 0
    resources: {limits: {cpu: "2", memory: 1G}, requests: {cpu: 100m, memory: 128M}}
    sidecarDisabledMTLS: false
    sidecarImage: flomesh/pipy:1.5.3
    sidecarTimeout: 60
  traffic:
    enableEgress: true
    enablePermissiveTrafficPolicyMode: true
    http1PerRequestLoadBalancing: false
    http2PerRequestLoadBalancing: true
    inboundExternalAuthorization: {enable: false, failureModeAllow: false, statPrefix: inboundExtAuthz, timeout: 1s}
    inboundPortExclusionList: []
    interceptionMode: PodLevel
    networkInterfaceExclusionList: []
    outboundIPRangeExclusionList: []
    outboundIPRangeInclusionList: []
    outboundPortExclusionList: []
    serviceAccessMode: mixed
status: {}
"""


def test_fsm_produced_meshconfig_loads(tmp_path):
    cfg = load([write(tmp_path / "live.yaml", FSM_PRODUCED)])
    assert cfg.mesh.enable_egress is True and cfg.mesh.sidecar_timeout == 60
    # opaque sections survive to the dump, and the dump is JSON (timestamps stay strings)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["meshConfig"]["spec"]["sidecar"]["resources"]["limits"]["cpu"] == "2"
    assert d["meshConfig"]["spec"]["clusterSet"]["name"] == "local"


def test_older_api_versions_and_keys(tmp_path):
    # v1alpha2 had sidecar.sidecarClass/sidecarDrivers and an "iptables" interception mode
    spec = {"sidecar": {"sidecarClass": "pipy", "sidecarDrivers": [{"sidecarName": "pipy"}]},
            "traffic": {"interceptionMode": "iptables", "enableEgress": False}}
    for v in ("v1alpha1", "v1alpha2"):
        m = load([write(tmp_path / f"{v}.yaml", meshconfig_yaml(spec, api=f"config.flomesh.io/{v}"))]).mesh
        assert m.enable_egress is False and m.api_version == f"config.flomesh.io/{v}"


def test_json_meshconfig(tmp_path):
    f = tmp_path / "mesh.json"
    f.write_text(json.dumps({"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
                             "metadata": {"name": "x", "namespace": "y"},
                             "spec": {"sidecar": {"sidecarTimeout": 5}}}))
    assert load([f]).mesh.sidecar_timeout == 5


def test_kubectl_list(tmp_path):
    doc = {"apiVersion": "v1", "kind": "List", "items": [
        yaml.safe_load(meshconfig_yaml({"traffic": {"enableEgress": False}})),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "curl", "namespace": "curl"}},
    ]}
    cfg = load([write(tmp_path / "l.yaml", yaml.safe_dump(doc))])
    assert cfg.mesh.enable_egress is False
    assert len(cfg.ignored) == 1 and "ServiceAccount curl/curl" in cfg.ignored[0]


def test_folder_sorted_multi_document_and_other_kinds(tmp_path):
    write(tmp_path / "b.yml", """\
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: curl, namespace: curl}
        ---
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: curl, namespace: curl}
        spec: {}
        """)
    write(tmp_path / "a.yaml", meshconfig_yaml({"traffic": {"enableEgress": False}}))
    write(tmp_path / "notes.txt", "not: [yaml")          # ignored: extension
    write(tmp_path / ".hidden.yaml", "not: [yaml")        # ignored: dot name
    write(tmp_path / "sub" / "x.yaml", "not: [yaml")      # ignored: no recursion
    cfg = load([tmp_path])
    assert cfg.files == [str(tmp_path / "a.yaml"), str(tmp_path / "b.yml")]
    assert cfg.mesh.enable_egress is False
    assert [i.split(": ", 1)[1].split(" (")[0] for i in cfg.ignored] == [
        "ServiceAccount curl/curl", "Deployment curl/curl"]


def test_folder_without_meshconfig_gets_default(tmp_path):
    write(tmp_path / "sa.yaml", "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n")
    cfg = load([tmp_path])
    assert cfg.mesh.file is None and cfg.mesh.enable_egress is True
    assert cfg.files == [str(tmp_path / "sa.yaml")]


def test_configmap_mount_layout(tmp_path):
    # What kubelet makes of a ConfigMap volume: ..<timestamp>/ with the files, ..data -> it,
    # and top-level symlinks through ..data.
    stamp = tmp_path / "..2024_05_01_10_00_00.123456789"
    write(stamp / "mesh.yaml", meshconfig_yaml({"traffic": {"enableEgress": False}}))
    os.symlink(stamp.name, tmp_path / "..data")
    os.symlink("..data/mesh.yaml", tmp_path / "mesh.yaml")
    cfg = load([tmp_path])
    assert cfg.files == [str(tmp_path / "mesh.yaml")]
    assert cfg.mesh.enable_egress is False


def test_same_file_twice_is_read_once(tmp_path):
    f = write(tmp_path / "mesh.yaml", meshconfig_yaml({}))
    assert load([tmp_path, f]).files == [str(f)]


# --- bad files -----------------------------------------------------------------------------

BAD = [
    # (spec, field path, message fragment)
    ({"traffic": {"outboundPortExclusionList": [80, 0]}},
     "spec.traffic.outboundPortExclusionList[1]", "must be 1..65535"),
    ({"traffic": {"outboundPortExclusionList": [65536]}},
     "spec.traffic.outboundPortExclusionList[0]", "must be 1..65535"),
    ({"traffic": {"outboundPortExclusionList": ["80"]}},
     "spec.traffic.outboundPortExclusionList[0]", "must be an integer, not string"),
    ({"traffic": {"outboundPortExclusionList": [True]}},
     "spec.traffic.outboundPortExclusionList[0]", "must be an integer, not bool"),
    ({"traffic": {"outboundPortExclusionList": 80}},
     "spec.traffic.outboundPortExclusionList", "must be a list, not int"),
    ({"traffic": {"inboundPortExclusionList": [1.5]}},
     "spec.traffic.inboundPortExclusionList[0]", "must be an integer, not float"),
    ({"traffic": {"enableEgress": "true"}}, "spec.traffic.enableEgress", "must be a bool"),
    ({"traffic": {"enableEgress": 1}}, "spec.traffic.enableEgress", "not int"),
    ({"featureFlags": {"enableEgressPolicy": "yes"}}, "spec.featureFlags.enableEgressPolicy", "must be a bool"),
    ({"featureFlags": {"enableRetryPolicy": 0}}, "spec.featureFlags.enableRetryPolicy", "must be a bool"),
    ({"traffic": {"outboundIPRangeExclusionList": ["10.0.0.1/8"]}},
     "spec.traffic.outboundIPRangeExclusionList[0]", "has host bits set"),
    ({"traffic": {"outboundIPRangeExclusionList": ["10.0.0.0"]}},
     "spec.traffic.outboundIPRangeExclusionList[0]", "prefix length"),
    ({"traffic": {"outboundIPRangeInclusionList": ["300.1.0.0/16"]}},
     "spec.traffic.outboundIPRangeInclusionList[0]", "invalid CIDR"),
    ({"traffic": {"outboundIPRangeInclusionList": ["10.0.0.0/33"]}},
     "spec.traffic.outboundIPRangeInclusionList[0]", "invalid CIDR"),
    ({"traffic": {"outboundIPRangeInclusionList": ["fd00::1/8"]}},
     "spec.traffic.outboundIPRangeInclusionList[0]", "has host bits set"),
    ({"traffic": {"outboundIPRangeInclusionList": [10]}},
     "spec.traffic.outboundIPRangeInclusionList[0]", "must be a CIDR string"),
    ({"traffic": {"networkInterfaceExclusionList": ["eth 0"]}},
     "spec.traffic.networkInterfaceExclusionList[0]", "invalid network interface name"),
    ({"traffic": {"networkInterfaceExclusionList": ["a-very-long-interface"]}},
     "spec.traffic.networkInterfaceExclusionList[0]", "invalid network interface name"),
    ({"traffic": {"networkInterfaceExclusionList": ["!eth0"]}},
     "spec.traffic.networkInterfaceExclusionList[0]", "invalid network interface name"),
    ({"traffic": {"networkInterfaceExclusionList": [7]}},
     "spec.traffic.networkInterfaceExclusionList[0]", "must be an interface name string"),
    ({"sidecar": {"logLevel": "verbose"}}, "spec.sidecar.logLevel", "must be one of trace, debug"),
    ({"sidecar": {"logLevel": "ERROR"}}, "spec.sidecar.logLevel", "must be one of"),
    ({"sidecar": {"sidecarTimeout": -1}}, "spec.sidecar.sidecarTimeout", "must be 0.."),
    ({"sidecar": {"sidecarTimeout": "60s"}}, "spec.sidecar.sidecarTimeout", "must be an integer"),
    ({"sidecar": {"sidecarTimeout": False}}, "spec.sidecar.sidecarTimeout", "not bool"),
    ({"sidecar": {"localProxyMode": "Loopback"}}, "spec.sidecar.localProxyMode", "must be one of"),
    ({"sidecar": {"compressConfig": "no"}}, "spec.sidecar.compressConfig", "must be a bool"),
    ({"traffic": {"enableEgres": False}}, "spec.traffic.enableEgres", "unknown field"),
    ({"sidecar": {"timeout": 5}}, "spec.sidecar.timeout", "unknown field"),
    ({"featureFlags": {"enableEverything": True}}, "spec.featureFlags.enableEverything", "unknown field"),
    ({"trafic": {}}, "spec.trafic", "unknown field"),
    ({"traffic": ["enableEgress"]}, "spec.traffic", "must be a mapping, not list"),
    ({"observability": "on"}, "spec.observability", "must be a mapping, not string"),
]


@pytest.mark.parametrize("spec,field,fragment", BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_values(tmp_path, spec, field, fragment):
    f = write(tmp_path / "mesh.yaml", meshconfig_yaml(spec))
    errors = load_errors([f])
    assert len(errors) == 1, [str(e) for e in errors]
    e = errors[0]
    assert e.file == str(f)
    assert e.obj == "MeshConfig fsm-system/fsm-mesh-config"
    assert e.field == field
    assert fragment in e.message, str(e)


def test_error_text_names_file_object_and_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "mesh.yaml", meshconfig_yaml({"traffic": {"outboundPortExclusionList": [80, 0]}}))
    with pytest.raises(ConfigErrors) as ei:
        load(["mesh.yaml"])
    assert str(ei.value) == ("mesh.yaml: MeshConfig fsm-system/fsm-mesh-config: "
                             "spec.traffic.outboundPortExclusionList[1]: must be 1..65535")


def test_all_errors_of_a_load_are_collected(tmp_path):
    write(tmp_path / "a.yaml", meshconfig_yaml(
        {"traffic": {"enableEgress": "no", "outboundPortExclusionList": [0, 70000]}}))
    write(tmp_path / "b.yaml", "apiVersion: v1\nkind: Service\n")  # no metadata
    errors = load_errors([tmp_path])
    fields = sorted((Path(e.file).name, e.field or "") for e in errors)
    assert fields == [("a.yaml", "spec.traffic.enableEgress"),
                      ("a.yaml", "spec.traffic.outboundPortExclusionList[0]"),
                      ("a.yaml", "spec.traffic.outboundPortExclusionList[1]"),
                      ("b.yaml", "metadata")]


def test_two_meshconfigs_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", meshconfig_yaml({}, name="one"))
    write(tmp_path / "b.yaml", meshconfig_yaml({}, name="two"))
    errors = load_errors([tmp_path])
    assert len(errors) == 1 and "more than one MeshConfig" in errors[0].message
    assert "one" in errors[0].message and "two" in errors[0].message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    f = write(tmp_path / "mesh.yaml", "apiVersion: v1\nkind: MeshConfig\nspec: [1, 2\nmetadata: {}\n")
    (e,) = load_errors([f])
    assert e.file == str(f) and "YAML syntax error at line" in e.message
    line = int(e.message.split("line ")[1].split(",")[0])
    assert 3 <= line <= 5


def test_duplicate_key_is_an_error(tmp_path):
    f = write(tmp_path / "mesh.yaml", """\
        apiVersion: config.flomesh.io/v1alpha3
        kind: MeshConfig
        metadata: {name: m, namespace: n}
        spec:
          traffic:
            enableEgress: true
            enableEgress: false
        """)
    (e,) = load_errors([f])
    assert "duplicate key 'enableEgress'" in e.message and "line 7" in e.message


def test_json_syntax_and_duplicate_errors(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"a": 1,\n "b": }')
    (e,) = load_errors([f])
    assert e.file == str(f) and "JSON syntax error at line 2" in e.message
    g = tmp_path / "dup.json"
    g.write_text('{"a": 1, "a": 2}')
    (e,) = load_errors([g])
    assert "duplicate key 'a'" in e.message


@pytest.mark.parametrize("text,field,fragment", [
    ("kind: MeshConfig\nmetadata: {name: a}\n", "apiVersion", "is required"),
    ("apiVersion: config.flomesh.io/v1alpha3\nmetadata: {name: a}\n", "kind", "is required"),
    ("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {namespace: a}\n",
     "metadata.name", "is required"),
    ("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {name: a, namespace: 3}\n",
     "metadata.namespace", "must be a non-empty string"),
    ("apiVersion: config.flomesh.io/v1beta1\nkind: MeshConfig\nmetadata: {name: a}\n",
     "apiVersion", "unsupported version"),
    ("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {name: a}\nextra: 1\n",
     "extra", "unknown field"),
    ("- just\n- a list\n", None, "must be a mapping"),
])
def test_bad_envelopes(tmp_path, text, field, fragment):
    f = write(tmp_path / "x.yaml", text)
    (e,) = load_errors([f])
    assert e.field == field and fragment in e.message, str(e)
    assert e.file == str(f)


def test_missing_path_is_an_error(tmp_path):
    (e,) = load_errors([tmp_path / "nope"])
    assert e.file == str(tmp_path / "nope") and "no such file" in e.message


def test_namespace_defaults_to_default(tmp_path):
    f = write(tmp_path / "m.yaml", "apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\n"
                                   "metadata: {name: m}\nspec: {sidecar: {sidecarTimeout: 7}}\n")
    m = load([f]).mesh
    assert m.namespace == "default" and m.sidecar_timeout == 7


def test_to_dict_round_trips_through_the_loader(tmp_path):
    spec = {"traffic": {"enableEgress": False, "outboundPortExclusionList": [25]},
            "sidecar": {"logLevel": "info"}}
    first = load([write(tmp_path / "a.yaml", meshconfig_yaml(spec))])
    dumped = first.to_dict()
    json.dumps(dumped)
    again = load([write(tmp_path / "b" / "m.yaml", yaml.safe_dump(dumped["meshConfig"]))]).mesh
    assert again.to_dict() == first.mesh.to_dict()


# --- validate CLI ----------------------------------------------------------------------------


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="fastproxy")
    sub = parser.add_subparsers(dest="cmd")
    register(sub)
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    rc = validate_paths(args.paths, out, err)
    assert args.func is not None
    return rc, out.getvalue(), err.getvalue()


def test_validate_ok(tmp_path):
    a = write(tmp_path / "a" / "mesh.yaml", meshconfig_yaml({"traffic": {"enableEgress": False}}))
    b = write(tmp_path / "b" / "other.yaml", "apiVersion: v1\nkind: ServiceAccount\n"
                                           "metadata: {name: x}\n").parent
    rc, out, err = run_cli(["validate", str(a), str(b)])
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{a}: OK") and "enableEgress=false" in lines[0]
    assert lines[1].startswith(f"{b}: OK") and "embedded default" in lines[1]


def test_validate_errors(tmp_path):
    good = write(tmp_path / "good.yaml", meshconfig_yaml({}))
    bad = write(tmp_path / "bad" / "mesh.yaml", meshconfig_yaml(
        {"traffic": {"enableEgress": "x", "outboundPortExclusionList": [0]}}))
    rc, out, err = run_cli(["validate", str(good), str(bad)])
    assert rc == 1
    assert out.startswith(f"{good}: OK")
    lines = err.splitlines()
    assert len(lines) == 2
    assert all(ln.startswith(f"{bad}: MeshConfig fsm-system/fsm-mesh-config: spec.traffic.") for ln in lines)
